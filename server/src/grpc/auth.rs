//! Bearer-token authentication and role checks for every RPC except health and reflection,
//! as a tower layer in front of all services.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use tonic::{Status, transport::server::TcpConnectInfo};
use tower::{Layer, Service};

use crate::config::{Role, TokenSpec};

/// Who is calling, inserted into request extensions after a successful check.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name (or `loopback`).
    pub name: String,
    /// Granted role.
    pub role: Role,
}

/// The caller's name for records (who acknowledged, who stopped the scheduler): the token's
/// name, `loopback`, or `unknown` when no check ran.
pub(crate) fn caller_name<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_else(|| "unknown".into())
}

/// The role each RPC needs. Paths not listed under `/strata.` need `operator` (deny by default).
fn required_role(path: &str) -> Option<Role> {
    const PUBLIC_PREFIXES: &[&str] = &[
        "/grpc.health.v1.Health/",
        "/grpc.reflection.v1.ServerReflection/",
        "/grpc.reflection.v1alpha.ServerReflection/",
    ];
    const VIEWER: &[&str] = &[
        "/strata.v1.AdminService/GetInfo",
        "/strata.v1.AdminService/TestConnection",
        "/strata.v1.StorageService/GetStorageMetrics",
        "/strata.v1.StorageService/ListSnapshots",
        "/strata.v1.StorageService/GetGrowth",
        "/strata.v1.FileService/Download",
        "/strata.v1.FileService/StatFile",
        "/strata.v1.FileService/ListFiles",
        "/strata.v1.FileService/GetBlobMigration",
        "/strata.v1.ArchiveService/GetPolicy",
        "/strata.v1.ArchiveService/ListPolicies",
        "/strata.v1.ArchiveService/PlanArchive",
        "/strata.v1.ArchiveService/GetRun",
        "/strata.v1.ArchiveService/ListRuns",
        "/strata.v1.ArchiveService/ListSegments",
        "/strata.v1.BackupService/GetBackup",
        "/strata.v1.BackupService/ListBackups",
        "/strata.v1.PartitionService/GetPartitionHealth",
        "/strata.v1.MaintenanceService/GetRecommendations",
        "/strata.v1.OperationService/GetOperation",
        "/strata.v1.OperationService/ListOperations",
        "/strata.v1.OperationService/ListOperationItems",
        "/strata.v1.SchedulerService/GetSchedulerStatus",
        "/strata.v1.SchedulerService/ListJobs",
        "/strata.v1.SchedulerService/GetJob",
        "/strata.v1.SchedulerService/ListJobRuns",
        "/strata.v1.SchedulerService/GetJobRun",
        "/strata.v1.AlertService/GetRule",
        "/strata.v1.AlertService/ListRules",
        "/strata.v1.AlertService/ListAlerts",
        "/strata.v1.AlertService/GetAlert",
        "/strata.v1.AlertService/WatchAlerts",
        "/strata.v1.AlertService/GetHealthReport",
    ];
    if PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
        None
    } else if VIEWER.contains(&path) {
        Some(Role::Viewer)
    } else {
        Some(Role::Operator)
    }
}

/// Checks tokens against their configured hashes.
#[derive(Debug)]
pub struct Authorizer {
    tokens: Vec<(String, Role, [u8; 32])>,
}

/// Hex SHA-256 of a token, as configured (`strata-server hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Authorizer {
    /// From the configured token specs (already validated as 64 hex digits).
    pub fn new(specs: &[TokenSpec]) -> Self {
        let tokens = specs
            .iter()
            .filter_map(|s| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&s.sha256, &mut h).ok()?;
                Some((s.name.clone(), s.role, h))
            })
            .collect();
        Self { tokens }
    }

    /// Decides whether a call to `path` from `peer` with `authorization` may proceed.
    fn check(
        &self,
        path: &str,
        peer: Option<SocketAddr>,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Caller>, Status> {
        let Some(needed) = required_role(path) else {
            return Ok(None);
        };
        if self.tokens.is_empty() {
            // No tokens configured: trust only this machine (the server logged a warning at start).
            return match peer {
                Some(p) if p.ip().is_loopback() => Ok(Some(Caller { name: "loopback".into(), role: Role::Operator })),
                _ => Err(Status::permission_denied("no auth tokens are configured: only loopback clients are served")),
            };
        }
        let Some(header) = authorization else {
            return Err(Status::unauthenticated("missing bearer token (authorization: Bearer <token>)"));
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("authorization header must be `Bearer <token>`"))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let Some((name, role, _)) = self.tokens.iter().find(|(_, _, h)| *h == digest) else {
            return Err(Status::unauthenticated("invalid token"));
        };
        if *role < needed {
            return Err(Status::permission_denied(format!(
                "token {name:?} has role {role:?}; {path} needs {needed:?}"
            )));
        }
        Ok(Some(Caller { name: name.clone(), role: *role }))
    }
}

/// Tower layer applying [`Authorizer`] to every request.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authorizer>,
}

impl AuthLayer {
    /// A layer using `auth`.
    pub fn new(auth: Authorizer) -> Self {
        Self { auth: Arc::new(auth) }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.auth.clone() }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authorizer>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<TcpConnectInfo>().and_then(|i| i.remote_addr());
        let authz = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match self.auth.check(req.uri().path(), peer, authz) {
            Ok(caller) => {
                if let Some(c) = caller {
                    tracing::debug!(caller = %c.name, role = ?c.role, path = req.uri().path(), "authorized");
                    req.extensions_mut().insert(c);
                }
                // The clone is ready-checked lazily by tonic's router; swap so `self` keeps a fresh one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::info!(path = req.uri().path(), peer = ?peer, code = ?status.code(), "request rejected");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, role: Role, token: &str) -> TokenSpec {
        TokenSpec { name: name.into(), role, sha256: hash_token(token) }
    }

    #[test]
    fn matrix_of_roles() {
        let a = Authorizer::new(&[spec("v", Role::Viewer, "view-secret"), spec("o", Role::Operator, "op-secret")]);
        let remote: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let read = "/strata.v1.StorageService/GetStorageMetrics";
        let write = "/strata.v1.StorageService/RecordSnapshot";
        let code =
            |path, h: Option<&str>| a.check(path, Some(remote), h.map(str::as_bytes)).map(|_| ()).map_err(|s| s.code());
        assert_eq!(code(read, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(read, Some("Bearer nope")), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(read, Some("Basic abc")), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(read, Some("Bearer view-secret")), Ok(()));
        assert_eq!(code(write, Some("Bearer view-secret")), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(write, Some("Bearer op-secret")), Ok(()));
        assert_eq!(
            code("/strata.v1.FutureService/Anything", Some("Bearer view-secret")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code("/grpc.health.v1.Health/Check", None), Ok(()));
    }

    #[test]
    fn loopback_only_without_tokens() {
        let a = Authorizer::new(&[]);
        let path = "/strata.v1.AdminService/GetInfo";
        assert!(a.check(path, Some("127.0.0.1:1".parse().unwrap()), None).is_ok());
        assert!(a.check(path, Some("[::1]:1".parse().unwrap()), None).is_ok());
        let err = a.check(path, Some("192.0.2.7:1".parse().unwrap()), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(a.check(path, None, None).unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
