//! TLS on the gRPC port (rustls): the server's certificate and key, and with a client CA, mutual
//! TLS. The files are read again when they change (checked every [`WATCH_EVERY`]) or on SIGHUP; new
//! connections get the new certificate, open ones keep theirs. A reload that fails (a half-written
//! file, a key that does not match) keeps the previous configuration and says why.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the certificate files' modification times are compared with the loaded ones.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The files of the TLS configuration.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()].into_iter().flatten().map(PathBuf::as_path)
    }

    /// The files' modification times (None for one that cannot be read now).
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }
}

/// The gRPC port's TLS: the configuration new connections get, swapped on reload.
pub struct Tls {
    files: Files,
    current: RwLock<(Arc<ServerConfig>, Vec<Option<SystemTime>>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// The configured TLS, or None when `tls_cert` is not set (plaintext). Err says which file is
    /// wrong and how.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, String> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
        let files = Files { cert: cert.clone(), key: key.clone(), client_ca: config.tls_client_ca.clone() };
        let stamps = files.stamps();
        let loaded = build(&files)?;
        Ok(Some(Arc::new(Self { files, current: RwLock::new((Arc::new(loaded), stamps)) })))
    }

    /// Whether clients must present a certificate signed by the client CA.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current configuration.
    pub(super) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().expect("not poisoned").0.clone())
    }

    /// Reads the files again and, when they make a valid configuration, serves it to new
    /// connections.
    pub fn reload(&self) -> Result<(), String> {
        let stamps = self.files.stamps();
        let loaded = build(&self.files)?;
        *self.current.write().expect("not poisoned") = (Arc::new(loaded), stamps);
        Ok(())
    }

    /// Reloads when a file changed or on SIGHUP, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: TLS files are reloaded when they change only");
                None
            }
        };
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let changed = self.files.stamps() != self.current.read().expect("not poisoned").1;
                    if !changed { continue }
                    "a certificate file changed"
                }
                Some(()) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            };
            match self.reload() {
                Ok(()) => tracing::info!(reason = why, cert = %self.files.cert.display(), "TLS certificate reloaded"),
                Err(e) => {
                    // Not again every tick for the same files: the next change (or SIGHUP) retries.
                    self.current.write().expect("not poisoned").1 = self.files.stamps();
                    tracing::error!(reason = why, error = %e, "TLS reload failed; new connections keep the previous certificate");
                }
            }
        }
    }
}

/// The server configuration from the files: h2 only (gRPC), TLS 1.2 and 1.3, aws-lc-rs.
fn build(files: &Files) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("tls_cert {}: no certificate in the file", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("tls_key {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            for c in cas {
                roots.add(c).map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("tls_client_ca {}: no certificate in the file", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_cert {} / tls_key {}: {e}", files.cert.display(), files.key.display()))?;
    // gRPC is HTTP/2 only; clients (grpc-go, grpcurl) require the server to confirm it.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The names a verified client certificate carries, which `tls_client_roles` rules match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The subject's common name.
    pub cn: Option<String>,
    /// Subject alternative names: DNS names, URIs, e-mail addresses and IP addresses, as text.
    pub sans: Vec<String>,
}

impl CertNames {
    /// The names of a DER certificate (None when it cannot be parsed: rustls verified it, so
    /// only an extension it does not need could fail here).
    pub fn of(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        sans.push((*s).to_owned())
                    }
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => sans.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4")).to_string()),
                        16 => sans.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16")).to_string()),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Some(Self { cn, sans })
    }
}
