//! Authentication (a bearer token — an API token from the catalog or a bootstrap token from the
//! configuration —, or the client certificate of mutual TLS; without any configured, the loopback
//! peer) and role checks for every RPC except health and reflection, as a tower layer in front of
//! all services. The role each RPC needs is declared in `proto/` ([`Methods`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use sha2::{Digest, Sha256};
use tonic::Status;
use tower::{Layer, Service};

use super::{
    accept::Peer,
    audit,
    limits::{Limits, Permit},
    methods::Methods,
    status::{code_name, status_of},
    tls::CertNames,
};
use crate::{
    config::{CertRule, Role, TokenSpec},
    model::auth::AuthMethod,
    service::{self, audit::Event, tokens},
    telemetry,
};

/// Who is calling, inserted into request extensions after a successful check.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name, certificate rule name, or `loopback`.
    pub name: String,
    /// Granted role.
    pub role: Role,
    /// How the caller was recognised.
    pub method: AuthMethod,
    /// The file owners a scoped API token is limited to; None: not scoped.
    pub owners: Option<Arc<[String]>>,
}

/// The caller's name for records (who acknowledged, who stopped the scheduler): the token's
/// name, `loopback`, or `unknown` when no check ran.
pub(crate) fn caller_name<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<Caller>().map(|c| c.name.clone()).unwrap_or_else(|| "unknown".into())
}

/// The file owners the caller is limited to (a scoped API token); None: any owner.
pub(crate) fn caller_owners<T>(req: &tonic::Request<T>) -> Option<Arc<[String]>> {
    req.extensions().get::<Caller>().and_then(|c| c.owners.clone())
}

/// Checks tokens against their configured hashes and client certificates against the rules.
pub struct Authorizer {
    tokens: Vec<(String, Role, [u8; 32])>,
    rules: Vec<CertRule>,
    /// Loopback peers are admins without credentials: no tokens and no trusted proxies (behind a
    /// proxy on the same machine every client would be a loopback peer).
    trust_loopback: bool,
    /// Reflection needs no credentials (`reflection = "public"`).
    reflection_public: bool,
    /// The role each RPC declares in `proto/`.
    methods: Methods,
    /// API tokens (TokenService), checked in this context's catalog when given.
    api_tokens: Option<service::Context>,
}

/// Hex SHA-256 of a token, as configured (`strata-server hash-token`).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A refused call: the status to answer, and who was recognised (for the audit trail) when the
/// refusal is about the role, not the credentials.
#[derive(Debug)]
pub(super) struct Denied {
    pub(super) status: Status,
    pub(super) caller: Option<(String, AuthMethod)>,
}

impl From<Status> for Denied {
    fn from(status: Status) -> Self {
        Denied { status, caller: None }
    }
}

/// The first step of a check: decided, or an API token to look up.
enum Check<'a> {
    Decided(Result<Option<Caller>, Denied>),
    ApiToken { secret: &'a str, needed: Role, scoped_ok: bool },
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
            methods: Methods::load().expect("every method in the embedded descriptor set declares its role (tested)"),
            api_tokens: None,
        }
    }

    /// Reflection served to anyone (the default), or to viewers and above only.
    pub fn reflection_public(mut self, public: bool) -> Self {
        self.reflection_public = public;
        self
    }

    /// Also accepts API tokens, checked in `ctx`'s catalog.
    pub fn api_tokens(mut self, ctx: service::Context) -> Self {
        self.api_tokens = Some(ctx);
        self
    }

    /// The role a call to `path` needs and whether a scoped token may make it: no role for health
    /// (load balancers probe it) and public reflection, viewer for guarded reflection, the
    /// declared one for strata's methods, and admin for any other path (deny by default: nothing
    /// else is served).
    fn required_role(&self, path: &str) -> Option<(Role, bool)> {
        const REFLECTION_PREFIXES: &[&str] =
            &["/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];
        if path.starts_with("/grpc.health.v1.Health/") {
            None
        } else if REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)) {
            (!self.reflection_public).then_some((Role::Viewer, false))
        } else {
            Some(self.methods.get(path).map_or((Role::Admin, false), |m| (m.role, m.scoped)))
        }
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
    /// token when one is sent (an API token always; a configuration token when tokens are
    /// configured), else the client certificate's rule, else (no tokens and no certificate) the
    /// loopback peer.
    pub(super) async fn authorize(
        &self,
        path: &str,
        peer: Option<&Peer>,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Caller>, Denied> {
        match self.check(path, peer, authorization) {
            Check::Decided(d) => d,
            Check::ApiToken { secret, needed, scoped_ok } => {
                let Some(ctx) = &self.api_tokens else {
                    return Err(Status::unauthenticated("invalid token").into());
                };
                match tokens::verify(ctx, secret).await.map_err(Status::from)? {
                    Ok(g) => grant(
                        path,
                        needed,
                        scoped_ok,
                        Caller { name: g.name, role: g.role, method: AuthMethod::ApiToken, owners: g.owners },
                    ),
                    Err(refusal) => Err(Status::unauthenticated(refusal.to_string()).into()),
                }
            }
        }
    }

    fn check<'a>(&self, path: &str, peer: Option<&Peer>, authorization: Option<&'a [u8]>) -> Check<'a> {
        let Some((needed, scoped_ok)) = self.required_role(path) else {
            return Check::Decided(Ok(None));
        };
        let allow = |name: &str, role: Role, method: AuthMethod| {
            Check::Decided(grant(path, needed, scoped_ok, Caller { name: name.to_owned(), role, method, owners: None }))
        };
        if let Some(header) = authorization {
            let Some(token) = std::str::from_utf8(header)
                .ok()
                .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
                .map(str::trim)
            else {
                return Check::Decided(Err(
                    Status::unauthenticated("authorization header must be `Bearer <token>`").into()
                ));
            };
            if token.starts_with(tokens::SECRET_PREFIX) {
                return Check::ApiToken { secret: token, needed, scoped_ok };
            }
            if !self.tokens.is_empty() {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let Some((name, role, _)) = self.tokens.iter().find(|(_, _, h)| *h == digest) else {
                    return Check::Decided(Err(Status::unauthenticated("invalid token").into()));
                };
                return allow(name, *role, AuthMethod::ConfigToken);
            }
        }
        if let Some(cert) = peer.and_then(|p| p.cert.as_deref()) {
            return match self.rule_for(cert) {
                Some(rule) => allow(&rule.name, rule.role, AuthMethod::Certificate),
                None => Check::Decided(Err(Status::unauthenticated(format!(
                    "the client certificate (CN {:?}, SAN {:?}) matches no tls_client_roles rule, and no bearer token was sent",
                    cert.cn.as_deref().unwrap_or(""),
                    cert.sans
                ))
                .into())),
            };
        }
        if self.trust_loopback {
            // No credentials configured: trust only this machine (the server refuses to listen
            // elsewhere then, and logged a warning at start).
            return match peer.and_then(|p| p.addr) {
                Some(p) if p.ip().is_loopback() => allow("loopback", Role::Admin, AuthMethod::Loopback),
                _ => Check::Decided(Err(Status::permission_denied(
                    "no auth tokens are configured: only loopback clients are served",
                )
                .into())),
            };
        }
        if self.tokens.is_empty() {
            return Check::Decided(Err(Status::unauthenticated(
                "a client certificate or an API token is needed: no auth tokens are configured",
            )
            .into()));
        }
        Check::Decided(Err(Status::unauthenticated("missing bearer token (authorization: Bearer <token>)").into()))
    }
}

/// Lets `caller` through to `path` if its role suffices and, for a scoped token, the method takes
/// scoped tokens.
fn grant(path: &str, needed: Role, scoped_ok: bool, caller: Caller) -> Result<Option<Caller>, Denied> {
    let who = Some((caller.name.clone(), caller.method));
    if caller.role < needed {
        let status = Status::permission_denied(format!(
            "{} {:?} has role {}; {path} needs {}",
            match caller.method {
                AuthMethod::Certificate => "client certificate",
                AuthMethod::Loopback | AuthMethod::None => "caller",
                AuthMethod::ApiToken | AuthMethod::ConfigToken => "token",
            },
            caller.name,
            caller.role.as_str(),
            needed.as_str()
        ));
        return Err(Denied { status, caller: who });
    }
    if caller.owners.is_some() && !scoped_ok {
        let status = Status::permission_denied(format!(
            "token {:?} is scoped to file owners: it may call only the file methods and GetInfo, not {path}",
            caller.name
        ));
        return Err(Denied { status, caller: who });
    }
    Ok(Some(caller))
}

/// Tower layer applying [`Authorizer`] to every request, and recording the calls the audit trail
/// keeps (mutating ones, refused ones; see [`audit`]).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authorizer>,
    /// The context whose recorder keeps the audit trail; None: audit off.
    audit: Option<service::Context>,
    limits: Arc<Limits>,
    /// The deadline of unary calls that set none.
    unary_deadline: Option<std::time::Duration>,
}

impl AuthLayer {
    /// A layer using `auth`, recording the audit trail through `audit` when given, applying
    /// `limits` per caller and `unary_deadline` to unary calls without a deadline of their own.
    pub(super) fn new(
        auth: Authorizer,
        audit: Option<service::Context>,
        limits: Limits,
        unary_deadline: Option<std::time::Duration>,
    ) -> Self {
        Self { auth: Arc::new(auth), audit, limits: Arc::new(limits), unary_deadline }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, layer: self.clone() }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A response body holding its caller's place among its calls in progress until it ends.
struct Holding {
    inner: tonic::body::Body,
    _permit: Permit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S> Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let peer = req.extensions().get::<Peer>().cloned();
        let authz = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes().to_vec());
        let AuthLayer { auth, audit, limits, unary_deadline } = self.layer.clone();
        // The clone is ready-checked lazily by tonic's router; swap so `self` keeps a fresh one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let rule = auth.methods.get(&path).cloned();
            let (client_addr, proxy_addr) = (
                peer.as_ref().and_then(|p| p.addr).map(|a| a.to_string()),
                peer.as_ref().and_then(|p| p.via).map(|a| a.to_string()),
            );
            let event = |caller: String, auth_method: AuthMethod| Event {
                caller,
                auth_method,
                client_addr: client_addr.clone(),
                proxy_addr: proxy_addr.clone(),
                // A path nobody declared is the caller's text: cut, it may be anything.
                method: path.chars().take(200).collect(),
                resource: String::new(),
                code: "",
            };
            match auth.authorize(&path, peer.as_ref(), authz.as_deref()).await {
                Ok(caller) => {
                    // Limits apply to identified callers; health checks and public reflection
                    // (no caller) are never limited.
                    let permit = match caller.as_ref().map(|c| limits.admit(&c.name)).transpose() {
                        Ok(p) => p,
                        Err(status) => {
                            tracing::debug!(path = %path, caller = %caller.map(|c| c.name).unwrap_or_default(), "over a limit");
                            return Ok(status.into_http());
                        }
                    };
                    let pending = match (&audit, &caller, &rule) {
                        (Some(ctx), Some(c), Some(rule)) if rule.mutates => {
                            let slot = Arc::new(audit::Slot::default());
                            let body = std::mem::take(req.body_mut());
                            *req.body_mut() =
                                tonic::body::Body::new(audit::FirstMessage::new(body, rule.clone(), slot.clone()));
                            Some(audit::Pending { ctx: ctx.clone(), event: event(c.name.clone(), c.method), slot })
                        }
                        _ => None,
                    };
                    if let Some(c) = caller {
                        tracing::Span::current().record("caller", c.name.as_str());
                        tracing::debug!(caller = %c.name, role = c.role.as_str(), path = %path, peer = ?peer.as_ref().and_then(|p| p.addr), "authorized");
                        req.extensions_mut().insert(c);
                    }
                    let deadline = match (&rule, unary_deadline) {
                        // A client's own deadline (grpc-timeout) is tonic's to enforce.
                        (Some(r), Some(d)) if r.unary() && !req.headers().contains_key("grpc-timeout") => Some(d),
                        _ => None,
                    };
                    let response = match deadline {
                        None => inner.call(req).await?,
                        // The call runs as a task of its own, so that the deadline fires on time even
                        // when its task is held up (a SQLite busy wait can hold its worker thread);
                        // a caller that goes away still stops it (the task is aborted with this
                        // future, as the handler was dropped before).
                        Some(d) => {
                            let call = telemetry::propagate(inner.call(req));
                            let mut call = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(call));
                            match tokio::time::timeout(d, &mut call).await {
                                Ok(Ok(r)) => r?,
                                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                                Ok(Err(_)) => Status::cancelled("the call was cancelled").into_http(),
                                Err(_) => {
                                    call.abort();
                                    Status::deadline_exceeded(format!(
                                        "the call took longer than unary_deadline ({d:?}) and was stopped"
                                    ))
                                    .into_http()
                                }
                            }
                        }
                    };
                    let response = match pending {
                        None => response,
                        // An error answered at once carries its status in the headers (no body).
                        Some(pending) => match status_of(response.headers()) {
                            Some(tonic::Code::Ok) => {
                                pending.durable().await;
                                response
                            }
                            Some(code) => {
                                pending.record(code);
                                response
                            }
                            None => response.map(|b| tonic::body::Body::new(audit::Audited::new(b, pending))),
                        },
                    };
                    // The caller's place among its calls in progress is held until the response
                    // ends (a stream's last message).
                    Ok(match permit {
                        Some(p) if status_of(response.headers()).is_none() => {
                            response.map(|b| tonic::body::Body::new(Holding { inner: b, _permit: p }))
                        }
                        _ => response,
                    })
                }
                Err(denied) => {
                    if let Some((name, _)) = &denied.caller {
                        tracing::Span::current().record("caller", name.as_str());
                    }
                    let (addr, via) = peer.as_ref().map_or((None, None), |p| (p.addr, p.via));
                    // Refusals are rate-limited by client address too: a flood of bad tokens is
                    // answered RESOURCE_EXHAUSTED and not recorded one by one.
                    let key = format!("client {}", addr.map(|a| a.ip().to_string()).unwrap_or_default());
                    if let Err(status) = limits.check_rate(&key) {
                        return Ok(status.into_http());
                    }
                    tracing::info!(path = %path, peer = ?addr, via = ?via, code = ?denied.status.code(), "request rejected");
                    // The request is read (briefly, a little) before the answer: answered with
                    // its body unread, the stream is reset, which a proxy in between may pass on
                    // as a stream error instead of the status.
                    let resource = audit::denied_resource(std::mem::take(req.body_mut()), rule).await;
                    if let Some(ctx) = &audit {
                        let (name, method) = denied.caller.unwrap_or_else(|| ("-".to_owned(), AuthMethod::None));
                        let mut e = event(name, method);
                        e.code = code_name(denied.status.code());
                        e.resource = resource;
                        ctx.audit.record(ctx, e);
                    }
                    Ok(denied.status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Authorizer {
        /// The check of a call without an API token.
        fn check_now(&self, path: &str, peer: Option<&Peer>, h: Option<&[u8]>) -> Result<Option<Caller>, Status> {
            match self.check(path, peer, h) {
                Check::Decided(d) => d.map_err(|d| d.status),
                Check::ApiToken { .. } => panic!("an API token needs the catalog"),
            }
        }
    }

    #[test]
    fn admin_methods_scoped_tokens_and_unknown_paths() {
        let a = Authorizer::new(
            &[spec("o", Role::Operator, "op-secret"), spec("root", Role::Admin, "admin-secret")],
            &[],
            false,
        );
        let remote = peer("10.0.0.1:5000", None);
        let code =
            |path, h: &str| a.check_now(path, Some(&remote), Some(h.as_bytes())).map(|_| ()).map_err(|s| s.code());
        let stop = "/strata.v1.SchedulerService/StopScheduler";
        assert_eq!(code(stop, "Bearer op-secret"), Err(tonic::Code::PermissionDenied));
        assert_eq!(code(stop, "Bearer admin-secret"), Ok(()));
        assert_eq!(code("/strata.v1.TokenService/CreateToken", "Bearer op-secret"), Err(tonic::Code::PermissionDenied));
        assert_eq!(code("/strata.v1.FileService/Upload", "Bearer admin-secret"), Ok(()));
        // Paths nobody declared are for admins only (and then unimplemented).
        assert_eq!(code("/strata.v1.FutureService/Anything", "Bearer op-secret"), Err(tonic::Code::PermissionDenied));
        // An API token goes to the catalog; without one at hand it is unknown.
        assert!(matches!(
            a.check(stop, Some(&remote), Some(b"Bearer strata_0193a1b2c3d4e5f60718293a4b5c6d7e_x")),
            Check::ApiToken { needed: Role::Admin, scoped_ok: false, .. }
        ));
        // A scoped caller may call the scoped methods only.
        let scoped = Caller {
            name: "app".into(),
            role: Role::Operator,
            method: AuthMethod::ApiToken,
            owners: Some(vec!["tenant-1".to_owned()].into()),
        };
        assert!(grant("/strata.v1.FileService/Upload", Role::Operator, true, scoped.clone()).is_ok());
        let err = grant("/strata.v1.ArchiveService/RunArchive", Role::Operator, false, scoped).unwrap_err();
        assert_eq!(err.status.code(), tonic::Code::PermissionDenied);
        assert!(err.status.message().contains("scoped"), "{}", err.status.message());
        assert_eq!(err.caller, Some(("app".to_owned(), AuthMethod::ApiToken)));
    }

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
            a.check_now(path, Some(&remote), h.map(str::as_bytes)).map(|_| ()).map_err(|s| s.code())
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
            guarded.check_now(reflect, Some(&remote), h.map(str::as_bytes)).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(code(None), Err(tonic::Code::Unauthenticated));
        assert_eq!(code(Some("Bearer view-secret")), Ok(()));
        // With tokens configured, a loopback peer needs one too.
        let local = peer("127.0.0.1:1", None);
        assert_eq!(a.check_now(read, Some(&local), None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn loopback_only_without_tokens() {
        let a = Authorizer::new(&[], &[], false);
        let path = "/strata.v1.AdminService/GetInfo";
        // Behind a trusted proxy, a loopback peer may be anyone.
        let proxied = Authorizer::new(&[], &[], true);
        assert_eq!(
            proxied.check_now(path, Some(&peer("127.0.0.1:1", None)), None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(a.check_now(path, Some(&peer("127.0.0.1:1", None)), None).is_ok());
        assert!(a.check_now(path, Some(&peer("[::1]:1", None)), None).is_ok());
        let err = a.check_now(path, Some(&peer("192.0.2.7:1", None)), None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(a.check_now(path, None, None).unwrap_err().code(), tonic::Code::PermissionDenied);
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
            a.check_now(path, Some(p), h.map(str::as_bytes)).map(|c| c.map(|c| (c.name, c.role))).map_err(|s| s.code())
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
        for bad in ["x:viewer", "x:viewer:cn=", "x:root:cn=a", ":viewer:cn=a", "x:viewer:o=a"] {
            assert!(bad.parse::<CertRule>().is_err(), "{bad}");
        }
    }
}
