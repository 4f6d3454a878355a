//! A real Prometheus (Debian's `prometheus`) on a free loopback port, scraping strata instances'
//! `/metrics` every second under the job name `strata` (the one the shipped rules expect) and
//! evaluating rule files every second; queried through its HTTP API. Stopped when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::pg::free_port;

/// The `prometheus` binary: `STRATA_PROMETHEUS`, Debian's, or the one on `PATH`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_PROMETHEUS") {
        return p.into();
    }
    let debian = PathBuf::from("/usr/bin/prometheus");
    if debian.exists() { debian } else { PathBuf::from("prometheus") }
}

/// `promtool`, beside [`binary`].
pub fn promtool() -> PathBuf {
    let beside = binary().with_file_name("promtool");
    if beside.exists() { beside } else { PathBuf::from("promtool") }
}

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (admin listeners) every second, with `rule_files`
    /// evaluated every second; returns once it is ready.
    pub async fn start(targets: &[SocketAddr], rule_files: &[&Path]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rule_files.iter().map(|r| format!("  - '{}'", r.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\n\
             scrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: [{}]\n",
            if rules.is_empty() { "  []".to_owned() } else { rules.join("\n") },
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {}: {e} (tests/setup.sh installs it)", binary().display()))?;
        let p = Self { child, addr, http: reqwest::Client::new(), _dir: dir };
        for _ in 0..300 {
            if let Ok(r) = p.http.get(format!("http://{}/-/ready", p.addr)).send().await
                && r.status().is_success()
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("prometheus did not become ready in 30 s; its log:\n{}", p.log())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with `query` parameters; the `data` of a successful answer, or its
    /// error.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let r = self.http.get(format!("http://{}/api/v1/{path}", self.addr)).query(query).send().await?;
        let v: Value = r.json().await?;
        if v["status"] != "success" {
            anyhow::bail!("{path} {query:?}: {} {}", v["errorType"], v["error"]);
        }
        Ok(v["data"].clone())
    }

    /// An instant PromQL query: its result vector (or scalar, as one element).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("query", &[("query", promql)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            _ => vec![data["result"].clone()],
        })
    }

    /// The single value of `promql`: None when it returns no sample.
    pub async fn value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(promql).await?;
        let sample = match result.first() {
            None => return Ok(None),
            Some(s) if s.get("value").is_some() => s["value"].clone(),
            // A scalar's result is the pair itself.
            Some(s) => s.clone(),
        };
        Ok(sample[1].as_str().and_then(|v| v.parse().ok()))
    }

    /// Waits until `promql` returns `want` (at most `limit`), returning what it returned last.
    pub async fn wait_for(&self, promql: &str, want: f64, limit: Duration) -> Option<f64> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let got = self.value(promql).await.ok().flatten();
            if got == Some(want) || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
