//! Every PostgreSQL connection strata opens (pooled sessions, probes, migrations, restore's COPY
//! sessions) is opened here, with TLS as the URL asks, in libpq's terms:
//!
//! - `sslmode=disable` (or none): plaintext; `prefer` / `allow`: TLS when the server offers it;
//! - `sslmode=require`: TLS, the server's certificate not checked (as libpq, unless `sslrootcert` is
//!   given: then as `verify-ca`);
//! - `sslmode=verify-ca`: the certificate must chain to `sslrootcert`;
//! - `sslmode=verify-full`: and carry the host's name;
//! - `sslrootcert=PATH` (PEM; `system`: the public webpki roots), `sslcert` + `sslkey` (PEM): a
//!   client certificate.
//!
//! tokio-postgres knows only disable/prefer/require and no certificate files, so these parameters
//! are taken out of the URL here and become a rustls configuration (aws-lc-rs); `pg_dump` gets the
//! URL as written (libpq reads them itself).

use std::{path::PathBuf, sync::Arc};

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

/// How a URL asks to use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A PostgreSQL URL split into what tokio-postgres reads and the TLS it asks for.
#[derive(Debug, Clone)]
pub(crate) struct PgTarget {
    /// The URL without the TLS parameters, `sslmode` as tokio-postgres spells it.
    url: String,
    mode: Mode,
    root: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// What a URL's TLS parameters cannot mean.
fn bad(message: String) -> ConnectionError {
    ConnectionError::InvalidConnectionUrl(message)
}

impl PgTarget {
    /// Splits `url` (the TLS parameters may come in any order among the others).
    pub(crate) fn parse(url: &str) -> Result<Self, ConnectionError> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut target = PgTarget { url: String::new(), mode: Mode::Disable, root: None, cert: None, key: None };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned();
            match k {
                "sslmode" => {
                    target.mode = match v {
                        "disable" => Mode::Disable,
                        "allow" | "prefer" => Mode::Prefer,
                        "require" => Mode::Require,
                        "verify-ca" => Mode::VerifyCa,
                        "verify-full" => Mode::VerifyFull,
                        other => return Err(bad(format!("unknown sslmode {other:?}"))),
                    }
                }
                "sslrootcert" => target.root = Some(value()),
                "sslcert" => target.cert = Some(value().into()),
                "sslkey" => target.key = Some(value().into()),
                _ => kept.push(pair),
            }
        }
        if target.cert.is_some() != target.key.is_some() {
            return Err(bad("sslcert and sslkey go together".into()));
        }
        // libpq: `require` with a root certificate verifies the chain.
        if target.mode == Mode::Require && target.root.is_some() {
            target.mode = Mode::VerifyCa;
        }
        let ssl = match target.mode {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            _ => "require",
        };
        kept.push(if ssl == "disable" {
            "sslmode=disable"
        } else if ssl == "prefer" {
            "sslmode=prefer"
        } else {
            "sslmode=require"
        });
        target.url = format!("{base}?{}", kept.join("&"));
        Ok(target)
    }

    /// The rustls configuration the URL asks for (None: plaintext).
    fn tls(&self) -> Result<Option<ClientConfig>, ConnectionError> {
        if self.mode == Mode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?;
        let roots = || -> Result<Arc<RootCertStore>, ConnectionError> {
            let mut roots = RootCertStore::empty();
            match self.root.as_deref() {
                Some("system") => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                    for c in certs {
                        roots.add(c).map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                    }
                }
                None => {
                    return Err(bad(
                        "sslmode verify-ca and verify-full need sslrootcert (a PEM file, or `system`)".into()
                    ));
                }
            }
            Ok(Arc::new(roots))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            Mode::VerifyFull => rustls::client::WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| bad(e.to_string()))?,
            Mode::VerifyCa => Arc::new(AnyName(
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            )),
            _ => Arc::new(Unverified(provider)),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        Ok(Some(match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(format!("sslcert {}: {e}", cert.display())))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("sslkey {}: {e}", key.display())))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| bad(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        }))
    }

    /// A tokio-postgres client (its connection runs in a task of its own until the client is
    /// dropped).
    pub(crate) async fn client(&self) -> Result<tokio_postgres::Client, ConnectionError> {
        match self.tls()? {
            None => {
                let (client, connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.map_err(error)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
            Some(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
                let (client, connection) = tokio_postgres::connect(&self.url, tls).await.map_err(error)?;
                tokio::spawn(drive(connection));
                Ok(client)
            }
        }
    }

    /// A Diesel connection.
    pub(crate) async fn connect(&self) -> Result<AsyncPgConnection, ConnectionError> {
        AsyncPgConnection::try_from(self.client().await?).await
    }
}

/// Runs a session's connection until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "PostgreSQL session ended");
    }
}

/// The error with its causes: tokio-postgres says "error performing TLS handshake" and keeps why
/// (an unknown issuer, a name mismatch) in its source.
fn error(e: tokio_postgres::Error) -> ConnectionError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    ConnectionError::BadConnection(message)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked (rustls checks the
/// chain first, so a name mismatch is the only error this forgives).
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError as C, Error as E};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` / `prefer`: encrypted, the certificate not checked (libpq's meaning); the handshake's
/// signatures still are.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_in_libpq_terms() {
        let t =
            PgTarget::parse("postgres://u:p%2B@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem")
                .unwrap();
        assert_eq!(t.url, "postgres://u:p%2B@h:5432/db?application_name=x&sslmode=require");
        assert_eq!((t.mode, t.root.as_deref()), (Mode::VerifyFull, Some("/ca.pem")));
        let t = PgTarget::parse("postgres://h/db").unwrap();
        assert_eq!((t.url.as_str(), t.mode), ("postgres://h/db?sslmode=disable", Mode::Disable));
        assert_eq!(PgTarget::parse("postgres://h/db?sslmode=require&sslrootcert=/r").unwrap().mode, Mode::VerifyCa);
        assert_eq!(PgTarget::parse("postgres://h/db?sslmode=allow").unwrap().mode, Mode::Prefer);
        assert!(PgTarget::parse("postgres://h/db?sslmode=sometimes").is_err());
        assert!(PgTarget::parse("postgres://h/db?sslmode=require&sslcert=/c").is_err());
        assert!(PgTarget::parse("postgres://h/db?sslmode=verify-full").unwrap().tls().is_err(), "no root");
    }
}
