//! Integration tests: a real strata server on 127.0.0.1:0, talked to through the SDK, on SQLite and
//! on a real PostgreSQL primary + streaming replica started by the harness (one shared cluster per
//! run; tests that stop nodes start their own).

mod alerts;
mod archive;
mod archive_fairness;
mod archive_partitioned;
mod archive_restore;
mod auth;
mod backup;
mod blob_migration;
mod catalog;
mod cli;
mod drain;
mod files;
mod growth;
mod grpcurl;
mod limits;
mod maintenance;
mod metrics_postgres;
mod metrics_sqlite;
mod objects;
mod operations;
mod partitions;
mod pg_tls;
mod pool;
mod prometheus;
mod routing;
mod scheduler;
mod support;
mod tls;
mod tokens;
