//! A real `strata-server` process (for crash, drain and multi-instance tests): spawned with
//! settings in its environment on free loopback ports, stopped with SIGTERM (its shutdown runs) or
//! SIGKILL (no shutdown code runs).

use std::{
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use strata_client::Client;

use crate::pg::free_port;

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    /// Its warnings and errors, shown when it does not come up or does not stop.
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    /// Starts `binary` (the server crate's `env!("CARGO_BIN_EXE_strata-server")`) with
    /// `STRATA_LISTEN` and `STRATA_ADMIN_LISTEN` on free ports, no shutdown delay, then `env`
    /// (which may override those); logs only warnings, to a file shown if it does not come up.
    pub fn spawn(binary: &str, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(binary)
            .env("STRATA_LISTEN", addr.to_string())
            .env("STRATA_ADMIN_LISTEN", admin_addr.to_string())
            .env("STRATA_SHUTDOWN_DELAY", "0")
            // Before `env`, which may ask for more.
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("spawn strata-server");
        ServerProcess { child, addr, admin_addr, log }
    }

    /// A client, once the server answers (at most 30 s).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = Client::connect(self.url()).await
                && c.info().await.is_ok()
            {
                return c;
            }
            if Instant::now() >= deadline {
                panic!("server at {} did not come up within 30 s; its log:\n{}", self.url(), self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its admin listener's address (`/livez`, `/readyz`), as given to it in
    /// `STRATA_ADMIN_LISTEN` (unless `env` overrode that).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What it logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: the server shuts down as it would under an orchestrator (see [`Self::wait_exit`]).
    pub fn sigterm(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        #[expect(unsafe_code, reason = "kill(2) on our child: its pid stays ours until it is waited for")]
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}: {}", std::io::Error::last_os_error());
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for strata-server")
    }

    /// Waits until it exits (polling every 5 ms: the moment matters to drain tests); panics with
    /// its log after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("server at {} still running {limit:?} later; its log:\n{}", self.url(), self.log());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
