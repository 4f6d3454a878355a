//! Authentication (a bearer token, or the client certificate of mutual TLS; without either
//! configured, the loopback peer) and role checks for every RPC except health and reflection, as a
//! tower layer in front of all services.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use tonic::Status;
use tower::{Layer, Service};

use super::{accept::Peer, tls::CertNames};
use crate::config::{CertRule, Role, TokenSpec};

/// Who is calling, inserted into request extensions after a successful check.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name, certificate rule name, or `loopback`.
    pub name: String,
    /// Granted role.
    pub role: Role,
}

/// The caller's name for records (who acknowledged, who stopped the scheduler): the token's
/// name, `loopback`, or `unknown` when no check ran.
pub(crate) fn caller_name<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_else(|| "unknown".into())
}

/// The role each RPC needs (reflection: none when `reflection_public`, else viewer). Paths not
/// listed under `/strata.` need `operator` (deny by default).
fn required_role(path: &str, reflection_public: bool) -> Option<Role> {
    const REFLECTION_PREFIXES: &[&str] =
        &["/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];
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
    if path.starts_with("/grpc.health.v1.Health/") {
        None
    } else if REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)) {
        (!reflection_public).then_some(Role::Viewer)
    } else if VIEWER.contains(&path) {
        Some(Role::Viewer)
    } else {
        Some(Role::Operator)
    }
}

/// Checks tokens against their configured hashes and client certificates against the rules.
#[derive(Debug)]
pub struct Authorizer {
    tokens: Vec<(String, Role, [u8; 32])>,
    rules: Vec<CertRule>,
    /// Loopback peers are operators without credentials: no tokens and no trusted proxies (behind a
    /// proxy on the same machine every client would be a loopback peer).
    trust_loopback: bool,
    /// Reflection needs no credentials (`reflection = "public"`).
    reflection_public: bool,
}

/// Hex SHA-256 of a token, as configured (`strata-server hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Authorizer {
    /// From the configured token specs (already validated as 64 hex digits), certificate rules
    /// and whether trusted proxies are configured.
    pub fn new(specs: &[TokenSpec], rules: &[CertRule], behind_proxies: bool) -> Self {
        let tokens: Vec<_> = specs
            .iter()
            .filter_map(|s| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&s.sha256, &mut h).ok()?;
                Some((s.name.clone(), s.role, h))
            })
            .collect();
        Self {
            trust_loopback: tokens.is_empty() && !behind_proxies,
            tokens,
            rules: rules.to_vec(),
            reflection_public: true,
        }
    }

    /// Reflection served to anyone (the default), or to viewers and above only.
    pub fn reflection_public(mut self, public: bool) -> Self {
        self.reflection_public = public;
        self
    }

    /// The rule a certificate's names match first.
    fn rule_for(&self, cert: &CertNames) -> Option<&CertRule> {
        self.rules.iter().find(|r| match (&r.cn, &r.san) {
            (Some(cn), _) => cert.cn.as_ref() == Some(cn),
            (None, Some(san)) => cert.sans.contains(san),
            (None, None) => false,
        })
    }

    /// Decides whether a call to `path` from `peer` with `authorization` may proceed: a bearer
    /// token when one is sent and tokens are configured, else the client certificate's rule, else
    /// (no tokens and no certificate) the loopback peer.
    fn check(&self, path: &str, peer: Option<&Peer>, authorization: Option<&[u8]>) -> Result<Option<Caller>, Status> {
        let Some(needed) = required_role(path, self.reflection_public) else {
            return Ok(None);
        };
        let allow = |name: &str, role: Role, what: &str| {
            if role < needed {
                return Err(Status::permission_denied(format!(
                    "{what} {name:?} has role {role:?}; {path} needs {needed:?}"
                )));
            }
            Ok(Some(Caller { name: name.to_owned(), role }))
        };
        if let (Some(header), false) = (authorization, self.tokens.is_empty()) {
            let token = std::str::from_utf8(header)
                .ok()
                .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
                .ok_or_else(|| Status::unauthenticated("authorization header must be `Bearer <token>`"))?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            let Some((name, role, _)) = self.tokens.iter().find(|(_, _, h)| *h == digest) else {
                return Err(Status::unauthenticated("invalid token"));
            };
            return allow(name, *role, "token");
        }
        if let Some(cert) = peer.and_then(|p| p.cert.as_deref()) {
            return match self.rule_for(cert) {
                Some(rule) => allow(&rule.name, rule.role, "client certificate"),
                None => Err(Status::unauthenticated(format!(
                    "the client certificate (CN {:?}, SAN {:?}) matches no tls_client_roles rule, and no bearer token was sent",
                    cert.cn.as_deref().unwrap_or(""),
                    cert.sans
                ))),
            };
        }
        if self.trust_loopback {
            // No credentials configured: trust only this machine (the server refuses to listen
            // elsewhere then, and logged a warning at start).
            return match peer.and_then(|p| p.addr) {
                Some(p) if p.ip().is_loopback() => allow("loopback", Role::Operator, "caller"),
                _ => Err(Status::permission_denied("no auth tokens are configured: only loopback clients are served")),
            };
        }
        if self.tokens.is_empty() {
            return Err(Status::unauthenticated("a client certificate is needed: no auth tokens are configured"));
        }
        Err(Status::unauthenticated("missing bearer token (authorization: Bearer <token>)"))
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
        let peer = req.extensions().get::<Peer>().cloned();
        let authz = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        match self.auth.check(req.uri().path(), peer.as_ref(), authz) {
            Ok(caller) => {
                if let Some(c) = caller {
                    tracing::debug!(caller = %c.name, role = ?c.role, path = req.uri().path(), peer = ?peer.as_ref().and_then(|p| p.addr), "authorized");
                    req.extensions_mut().insert(c);
                }
                // The clone is ready-checked lazily by tonic's router; swap so `self` keeps a fresh one.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                let (peer, via) = peer.map_or((None, None), |p| (p.addr, p.via));
                tracing::info!(path = req.uri().path(), peer = ?peer, via = ?via, code = ?status.code(), "request rejected");
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

    fn peer(addr: &str, cert: Option<CertNames>) -> Peer {
        Peer { addr: Some(addr.parse().unwrap()), via: None, cert: cert.map(Arc::new) }
    }

    #[test]
    fn matrix_of_roles() {
        let a = Authorizer::new(
            &[spec("v", Role::Viewer, "view-secret"), spec("o", Role::Operator, "op-secret")],
            &[],
            false,
        );
        let remote = peer("10.0.0.1:5000", None);
        let read = "/strata.v1.StorageService/GetStorageMetrics";
        let write = "/strata.v1.StorageService/RecordSnapshot";
        let code = |path, h: Option<&str>| {
            a.check(path, Some(&remote), h.map(str::as_bytes)).map(|_| ()).map_err(|s| s.code())
        };
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
        let reflect = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert_eq!(code(reflect, None), Ok(()));
        let guarded = Authorizer::new(&[spec("v", Role::Viewer, "view-secret")], &[], false).reflection_public(false);
        let code = |h: Option<&str>| {
            guarded.check(reflect, Some(&remote), h.map(str::as_bytes)).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(code(None), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(Some("Bearer view-secret")), Ok(()));
        // With tokens configured, a loopback peer needs one too.
        let local = peer("127.0.0.1:1", None);
        assert_eq!(a.check(read, Some(&local), None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn loopback_only_without_tokens() {
        let a = Authorizer::new(&[], &[], false);
        let path = "/strata.v1.AdminService/GetInfo";
        // Behind a trusted proxy, a loopback peer may be anyone.
        let proxied = Authorizer::new(&[], &[], true);
        assert_eq!(
            proxied.check(path, Some(&peer("127.0.0.1:1", None)), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check(path, Some(&peer("127.0.0.1:1", None)), None).is_ok());
        assert!(a.check(path, Some(&peer("[::1]:1", None)), None).is_ok());
        let err = a.check(path, Some(&peer("192.0.2.7:1", None)), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(a.check(path, None, None).unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn client_certificates_get_the_role_of_the_first_matching_rule() {
        let rule = |s: &str| s.parse::<CertRule>().unwrap();
        let a = Authorizer::new(
            &[spec("o", Role::Operator, "op-secret")],
            &[
                rule("ops:operator:cn=ops.internal"),
                rule("billing:viewer:san=spiffe://corp/billing"),
                rule("any-ops:viewer:cn=ops.internal"),
            ],
            false,
        );
        let cert = |cn: &str, sans: &[&str]| {
            Some(CertNames { cn: Some(cn.into()), sans: sans.iter().map(|s| s.to_string()).collect() })
        };
        let read = "/strata.v1.StorageService/GetStorageMetrics";
        let write = "/strata.v1.StorageService/RecordSnapshot";
        let who = |p: &Peer, path: &str, h: Option<&str>| {
            a.check(path, Some(p), h.map(str::as_bytes)).map(|c| c.map(|c| (c.name, c.role))).map_err(|s| s.code())
        };
        let ops = peer("192.0.2.1:1", cert("ops.internal", &[]));
        assert_eq!(who(&ops, write, None), Ok(Some(("ops".into(), Role::Operator))));
        let billing = peer("192.0.2.2:1", cert("x", &["billing.corp", "spiffe://corp/billing"]));
        assert_eq!(who(&billing, read, None), Ok(Some(("billing".into(), Role::Viewer))));
        assert_eq!(who(&billing, write, None), Err(tonic::Code::PermissionDenied));
        // A token sent along decides instead.
        assert_eq!(who(&billing, write, Some("Bearer op-secret")), Ok(Some(("o".into(), Role::Operator))));
        // A verified certificate no rule names gets nothing, even from loopback.
        let stranger = peer("127.0.0.1:1", cert("someone", &["spiffe://corp/billing/x"]));
        assert_eq!(who(&stranger, read, None), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn certificate_rules_parse() {
        let r: CertRule = "billing:viewer:san=spiffe://corp/billing".parse().unwrap();
        assert_eq!(
            (r.name.as_str(), r.role, r.san.as_deref()),
            ("billing", Role::Viewer, Some("spiffe://corp/billing"))
        );
        for bad in ["x:viewer", "x:viewer:cn=", "x:admin:cn=a", ":viewer:cn=a", "x:viewer:o=a"] {
            assert!(bad.parse::<CertRule>().is_err(), "{bad}");
        }
    }
}
