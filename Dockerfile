# syntax=docker/dockerfile:1
# Multi-stage build of strata-server and the strata CLI.
#   docker build -t strata .
#   docker run -p 50051:50051 -v strata-data:/data strata
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# protox compiles the protos and SQLite is bundled: no protoc or libsqlite3 needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strata-server -p strata-client \
 && install -D target/release/strata-server /out/strata-server \
 && install -D target/release/strata /out/strata

FROM debian:bookworm-slim
# Backups of PostgreSQL run pg_dump / pg_restore, whose major version must be at least the
# server's: the newest client tools from the PostgreSQL project's repository (they read every
# older server). Build with --build-arg PG_MAJOR=N to pin another version.
ARG PG_MAJOR=18
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-${PG_MAJOR} \
 && apt-get purge -y --auto-remove curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin strata \
 && mkdir -p /data && chown strata:strata /data
COPY --from=build /out/strata-server /out/strata /usr/local/bin/
USER strata
WORKDIR /data
# The embedded default keeps its SQLite file and objects here.
VOLUME ["/data"]
ENV STRATA_LISTEN=0.0.0.0:50051 \
    STRATA_PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin \
    STRATA_DATABASE_URL=sqlite:///data/strata.db \
    STRATA_OBJECT_STORE_URL=file:///data/objects
EXPOSE 50051
# Listening on 0.0.0.0 needs credentials, or strata refuses to start: set STRATA_AUTH_TOKENS
# (and/or STRATA_TLS_CERT, STRATA_TLS_KEY, STRATA_TLS_CLIENT_CA for mutual TLS).
ENTRYPOINT ["strata-server"]
CMD ["serve"]
