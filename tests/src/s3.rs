//! A real S3-protocol server in-process: s3s-fs 0.14.1 over loopback HTTP, with SigV4
//! authentication, on its own thread and runtime (so it outlives any one test's runtime).

use std::{net::SocketAddr, path::PathBuf, sync::mpsc, thread};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::sync::oneshot;

/// Access key of the test server.
pub const ACCESS_KEY: &str = "strata-test-access";
/// Secret key of the test server.
pub const SECRET_KEY: &str = "strata-test-secret-key";

/// A running S3 server with one bucket.
pub struct S3Server {
    /// Listen address.
    pub addr: SocketAddr,
    /// The bucket created at start.
    pub bucket: String,
    /// Directory the server stores into.
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on a free loopback port with bucket `bucket`.
    pub fn start(bucket: &str) -> anyhow::Result<Self> {
        Self::start_with_keys(bucket, ACCESS_KEY, SECRET_KEY)
    }

    /// [`S3Server::start`] accepting the credentials `access_key` / `secret_key` instead (write
    /// them percent-encoded into the URL: [`S3Server::url`] is for the default ones only).
    pub fn start_with_keys(bucket: &str, access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let (access_key, secret_key) = (access_key.to_owned(), secret_key.to_owned());
        let dir = tempfile::Builder::new().prefix("strata-s3-").tempdir()?;
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join(bucket))?;
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let fs_root = root.clone();
        let thread = thread::Builder::new().name("s3s-fs".into()).spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let fs = s3s_fs::FileSystem::new(fs_root).expect("s3s-fs root");
                let service = {
                    let mut b = S3ServiceBuilder::new(fs);
                    b.set_auth(SimpleAuth::from_single(access_key, secret_key));
                    b.build()
                };
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let http = ConnBuilder::new(TokioExecutor::new());
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((socket, _)) = accepted else { continue };
                            let _ = socket.set_nodelay(true);
                            let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                            tokio::spawn(async move { let _ = conn.await; });
                        }
                    }
                }
            });
        })?;
        let addr = addr_rx.recv()?;
        Ok(Self { addr, bucket: bucket.to_owned(), root, _dir: dir, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `s3://` URL strata uses for this server.
    pub fn url(&self) -> String {
        self.url_via(self.addr)
    }

    /// The URL of its bucket reached through `addr` (a proxy in front of it).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("s3://{ACCESS_KEY}:{SECRET_KEY}@{}?endpoint=http://{addr}", self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
