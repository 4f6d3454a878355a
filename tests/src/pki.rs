//! A throw-away certificate authority for TLS tests and benchmarks, made with the `openssl` command
//! (P-256 keys, 30 days): server certificates for `localhost` / `127.0.0.1`, client certificates
//! with any subject and SANs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

/// A CA's certificate and key in a directory of its own.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// A certificate and its key (PEM files).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().context("running openssl")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

impl Pki {
    /// A new CA named `name` in `dir` (created).
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (ca, ca_key) = (dir.join(format!("{name}-ca.crt")), dir.join(format!("{name}-ca.key")));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                path(&ca_key),
                "-out",
                path(&ca),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        Ok(Self { dir: dir.to_owned(), ca, ca_key })
    }

    /// A server certificate for `localhost` and `127.0.0.1`, files named after `name`.
    pub fn server(&self, name: &str) -> anyhow::Result<Issued> {
        self.issue(name, "localhost", &["DNS:localhost", "IP:127.0.0.1"], "serverAuth")
    }

    /// A server certificate carrying only the names `sans` (`DNS:…`, `IP:…`).
    pub fn server_for(&self, name: &str, sans: &[&str]) -> anyhow::Result<Issued> {
        self.issue(name, "strata test server", sans, "serverAuth")
    }

    /// A client certificate with subject CN `cn` and `sans` (`DNS:…`, `URI:…`, `email:…`).
    pub fn client(&self, name: &str, cn: &str, sans: &[&str]) -> anyhow::Result<Issued> {
        self.issue(name, cn, sans, "clientAuth")
    }

    fn issue(&self, name: &str, cn: &str, sans: &[&str], usage: &str) -> anyhow::Result<Issued> {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        let mut extensions =
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n");
        if !sans.is_empty() {
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, extensions)?;
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                path(&key),
                "-out",
                path(&csr),
            ],
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                path(&csr),
                "-CA",
                path(&self.ca),
                "-CAkey",
                path(&self.ca_key),
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                path(&ext),
                "-out",
                path(&cert),
            ],
        )?;
        Ok(Issued { cert, key })
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
