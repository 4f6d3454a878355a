//! A real `strata-server` process (for crash and multi-instance tests): spawned with settings
//! in its environment on a free loopback port, killed with SIGKILL so no shutdown code runs.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use strata_client::Client;

use crate::pg::free_port;

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    url: String,
    /// Its warnings and errors, shown when it does not come up.
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// Starts `binary` (the server crate's `env!("CARGO_BIN_EXE_strata-server")`) with `env`
    /// added to `STRATA_LISTEN` on a free port; logs only warnings, to a file shown if it does not
    /// come up.
    pub fn spawn(binary: &str, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(binary)
            .env("STRATA_LISTEN", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn strata-server");
        ServerProcess { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    /// A client, once the server answers (at most 30 s).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = Client::connect(self.url.clone()).await
                && c.info().await.is_ok()
            {
                return c;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
                panic!("server at {} did not come up within 30 s; its log:\n{log}", self.url);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
