use std::time::Duration;

use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    pb::{self, admin_service_client::AdminServiceClient, storage_service_client::StorageServiceClient},
    types::{ConnectionProbe, Growth, GrowthQuery, ServerInfo, Snapshot, SnapshotPage, StorageMetrics},
};

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL could not be parsed.
    #[error("invalid server url {url:?}: {source}")]
    InvalidUrl { url: String, source: tonic::transport::Error },
    /// The connection could not be established.
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: tonic::transport::Error },
    /// TLS settings that cannot be used (a file that cannot be read, options for an `http://` URL).
    #[error("TLS: {0}")]
    Tls(String),
    /// A token that cannot be sent as a header (e.g. contains a newline).
    #[error("the token contains characters that cannot be sent in a header")]
    InvalidToken,
    /// The server answered with an error status. (Not a `source`: the message already says all
    /// the status does, and printing both would repeat it.)
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A long operation ended without succeeding (failed or cancelled).
    #[error("operation {id} {state}: {message}")]
    Operation {
        /// The operation's id.
        id: String,
        /// `failed` or `cancelled`.
        state: String,
        /// Why.
        message: String,
    },
    /// The server sent a response the SDK does not understand.
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

impl Error {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// Serving status reported by the gRPC health service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    /// The status is unknown.
    Unknown,
    /// The service is serving.
    Serving,
    /// The service is not serving (e.g. the primary database is unreachable).
    NotServing,
    /// The service name is unknown to the server.
    ServiceUnknown,
}

/// Adds `authorization: Bearer …` to every request when a token is set.
#[derive(Clone, Default)]
pub(crate) struct Auth {
    header: Option<MetadataValue<Ascii>>,
    /// Sent as every call's deadline (`grpc-timeout`).
    timeout: Option<Duration>,
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        Ok(req)
    }
}

pub(crate) type Svc = InterceptedService<Channel, Auth>;

/// A connection to a strata server. Cheap to clone; clones share the HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) channel: Channel,
    pub(crate) auth: Auth,
}

/// How long to wait for the TCP/HTTP2 connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings of a connection to an `https://` URL. Without a CA the server's certificate must
/// chain to a public root (the webpki roots).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM certificate(s) of the CA that signs the server's certificate.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate (chain) and its key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when it is not the URL's host.
    pub domain: Option<String>,
}

impl TlsOptions {
    /// From PEM files: the CA, and the client certificate with its key (both or neither).
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<Self, Error> {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::Tls(format!("{}: {e}", p.display())));
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => return Err(Error::Tls("a client certificate and its key go together: give both or neither".into())),
        };
        Ok(Self { ca_pem: ca.map(read).transpose()?, identity, domain: None })
    }

    fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some() || self.domain.is_some()
    }
}

impl Client {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`, or `https://…` for a server with TLS
    /// whose certificate chains to a public root).
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::connect_with(url, &TlsOptions::default()).await
    }

    /// Connects to `url` with `tls` (which needs an `https://` URL when it sets anything).
    pub async fn connect_with(url: impl Into<String>, tls: &TlsOptions) -> Result<Self, Error> {
        let url = url.into();
        let https = url.starts_with("https://");
        if !https && tls.is_set() {
            return Err(Error::Tls(format!("{url}: a CA or client certificate needs an https:// URL")));
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|source| Error::InvalidUrl { url: url.clone(), source })?
            .connect_timeout(CONNECT_TIMEOUT)
            // Larger HTTP/2 windows than the defaults: streams carry file chunks and archive rows.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(16 << 20)
            // Downloads arrive in frames of at most this size: 1 MiB instead of HTTP/2's 16 KiB
            // default cuts per-frame overhead on large streams.
            .max_frame_size(1u32 << 20)
            .tcp_nodelay(true);
        if https {
            let mut config = ClientTlsConfig::new();
            config = match &tls.ca_pem {
                Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                None => config.with_webpki_roots(),
            };
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &tls.domain {
                config = config.domain_name(d.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|source| Error::InvalidUrl { url: url.clone(), source })?;
        }
        let channel = endpoint.connect().await.map_err(|source| Error::Connect { url, source })?;
        Ok(Self { channel, auth: Auth::default() })
    }

    /// Gives every call a deadline of `timeout` (`grpc-timeout`): the server stops a call past it
    /// (DEADLINE_EXCEEDED). Without one, the server applies its `unary_deadline` to unary calls.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.auth.timeout = Some(timeout);
        self
    }

    /// Sends `token` as a bearer token with every call.
    pub fn with_token(mut self, token: impl AsRef<str>) -> Result<Self, Error> {
        let value = format!("Bearer {}", token.as_ref()).parse().map_err(|_| Error::InvalidToken)?;
        self.auth.header = Some(value);
        Ok(self)
    }

    fn admin(&self) -> AdminServiceClient<Svc> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    fn storage(&self) -> StorageServiceClient<Svc> {
        StorageServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Server version, backend, routing state, node health, uptime and config summary.
    pub async fn info(&self) -> Result<ServerInfo, Error> {
        let r = self.admin().get_info(pb::GetInfoRequest {}).await?.into_inner();
        ServerInfo::try_from(r)
    }

    /// Round trip to the primary and every replica.
    pub async fn test_connection(&self) -> Result<Vec<ConnectionProbe>, Error> {
        let r = self.admin().test_connection(pb::TestConnectionRequest {}).await?.into_inner();
        r.probes.into_iter().map(ConnectionProbe::try_from).collect()
    }

    /// Current storage metrics, optionally only for tables whose name starts with `table_prefix`.
    pub async fn storage_metrics(&self, table_prefix: Option<&str>) -> Result<StorageMetrics, Error> {
        let req = pb::GetStorageMetricsRequest { table_name_prefix: table_prefix.unwrap_or_default().to_owned() };
        let r = self.storage().get_storage_metrics(req).await?.into_inner();
        StorageMetrics::try_from(r)
    }

    /// Takes and stores a size snapshot now (operator).
    pub async fn record_snapshot(&self) -> Result<Snapshot, Error> {
        let r = self.storage().record_snapshot(pb::RecordSnapshotRequest {}).await?.into_inner();
        let s = r.snapshot.ok_or_else(|| Error::Malformed("snapshot missing".into()))?;
        Snapshot::try_from(s)
    }

    /// One page of stored snapshots, newest first.
    pub async fn list_snapshots(&self, page_size: i32, page_token: &str) -> Result<SnapshotPage, Error> {
        let req = pb::ListSnapshotsRequest { page_size, page_token: page_token.to_owned() };
        let r = self.storage().list_snapshots(req).await?.into_inner();
        Ok(SnapshotPage {
            snapshots: r.snapshots.into_iter().map(Snapshot::try_from).collect::<Result<_, _>>()?,
            next_page_token: r.next_page_token,
        })
    }

    /// Growth rates and forecast.
    pub async fn growth(&self, query: GrowthQuery) -> Result<Growth, Error> {
        let r = self.storage().get_growth(pb::GetGrowthRequest::from(query)).await?.into_inner();
        Growth::try_from(r)
    }

    /// gRPC health of `service` (empty string: the whole server). Not subject to auth.
    pub async fn health(&self, service: &str) -> Result<HealthStatus, Error> {
        let mut health = HealthClient::new(self.channel.clone());
        let r = health.check(HealthCheckRequest { service: service.to_owned() }).await;
        match r {
            Ok(r) => Ok(match r.into_inner().status() {
                ServingStatus::Serving => HealthStatus::Serving,
                ServingStatus::NotServing => HealthStatus::NotServing,
                ServingStatus::ServiceUnknown => HealthStatus::ServiceUnknown,
                ServingStatus::Unknown => HealthStatus::Unknown,
            }),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(HealthStatus::ServiceUnknown),
            Err(s) => Err(s.into()),
        }
    }
}
