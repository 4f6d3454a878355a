//! A real Prometheus scrapes two strata instances (one PostgreSQL catalog with its replica, one
//! object folder) every second. After a known workload — N calls of a method, an upload of K
//! bytes, an archive run of R rows, a failing job, a backup, failed lookups — PromQL through
//! Prometheus's HTTP API returns those numbers; every shipped rule loads and evaluates, every
//! recording rule and every alert's signal returns data, as does every panel query of the shipped
//! dashboard; `promtool check metrics` accepts each instance's exposition.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use diesel_async::SimpleAsyncConnection;
use strata_client::{
    archive::{ArchivePolicy, RunState},
    scheduler::{JobKind, JobRunState, JobSpec},
    types::UploadOptions,
};
use strata_tests::{PgCluster, TestServer, pg::bindir, prometheus::Prometheus, server::test_config};

use crate::support::finished_run;

const DAY: u64 = 86_400;
/// GetInfo calls made (on instance B only).
const N: usize = 37;
/// Bytes uploaded.
const K: usize = 300_007;
/// Rows due for archival.
const R: i64 = 500;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `expr` without its trailing comparison with a number: an alert's signal.
fn signal(expr: &str) -> &str {
    [" == ", " != ", " >= ", " <= ", " > ", " < "]
        .iter()
        .filter_map(|op| expr.rfind(op))
        .max()
        .map_or(expr, |i| expr[..i].trim())
}

#[test]
fn alert_signals_are_their_expression_without_the_threshold() {
    assert_eq!(signal("max(x) > 0.05"), "max(x)");
    assert_eq!(signal("time() - max(b) > 2 * 86400"), "time() - max(b)");
    assert_eq!(signal("up{job=\"strata\"} == 0"), "up{job=\"strata\"}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_two_instances_and_the_shipped_rules_and_dashboard_evaluate() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("prom").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, created_at timestamptz NOT NULL, body text);
         INSERT INTO events (created_at, body) SELECT now() - interval '100 days' - i * interval '1 minute', 'old ' || i FROM generate_series(1, {R}) i;
         INSERT INTO events (created_at, body) SELECT now() - i * interval '1 minute', 'new ' || i FROM generate_series(1, 50) i;
         CREATE TABLE doomed (id bigint PRIMARY KEY, created_at timestamptz NOT NULL);"
    ))
    .await
    .unwrap();
    let config = |scheduler: bool| {
        let mut cfg = test_config(cluster.primary_url(&db), vec![cluster.replica_url(&db)], &objects);
        cfg.run_scheduler = scheduler;
        cfg.pg_bin_dir = Some(bindir());
        cfg
    };
    let a = TestServer::start(config(true)).await.unwrap();
    let b = TestServer::start(config(false)).await.unwrap();
    let (ca, cb) = (a.client().await, b.client().await);
    let prom = Prometheus::start(
        &[a.admin_addr.unwrap(), b.admin_addr.unwrap()],
        &[&repo("deploy/prometheus/strata-rules.yml")],
    )
    .await
    .unwrap();

    // The workload.
    for _ in 0..N {
        cb.info().await.unwrap();
    }
    for _ in 0..3 {
        assert!(ca.stat_file("01900000-0000-7000-8000-000000000000").await.is_err());
    }
    assert!(ca.download_bytes("01900000-0000-7000-8000-000000000000", 0, 0).await.is_err());
    let data = Bytes::from(strata_tests::pattern(K, 7));
    let opts = UploadOptions { owner: "prom".into(), ..Default::default() };
    let f = ca.upload_bytes(&opts, "p.bin", data.clone()).await.unwrap();
    assert_eq!(cb.download_bytes(&f.id, 0, 0).await.unwrap(), data);
    let policy = |name: &str, table: &str| ArchivePolicy {
        name: name.into(),
        table_name: table.into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(30 * DAY),
        batch_size: 97,
        ..Default::default()
    };
    ca.create_policy(&policy("events", "events")).await.unwrap();
    let run = ca.run_archive("events").await.unwrap();
    let run = ca.wait_archive_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!((run.state, run.rows_done), (RunState::Succeeded, R), "{run:?}");
    // A job whose table is gone by the time it runs: it fails.
    ca.create_policy(&policy("doomed", "doomed")).await.unwrap();
    ca.create_job(&JobSpec::new("doomed", JobKind::Archive, "@yearly").target("doomed")).await.unwrap();
    c.batch_execute("DROP TABLE doomed").await.unwrap();
    let r = ca.run_job_now("doomed").await.unwrap();
    assert_eq!(finished_run(&ca, &r.id).await.state, JobRunState::Failed);
    let backup = ca.run_backup().await.unwrap();
    let backup = ca.wait_backup(&backup.id, Duration::from_millis(100)).await.unwrap();
    assert!(backup.size_bytes > 0, "{backup:?}");
    // Two snapshots with growth between them: sizes per table and a forecast.
    ca.record_snapshot().await.unwrap();
    c.batch_execute(
        "INSERT INTO events (created_at, body) SELECT now(), repeat('x', 200) FROM generate_series(1, 20000)",
    )
    .await
    .unwrap();
    ca.record_snapshot().await.unwrap();

    // The numbers, through PromQL.
    let limit = Duration::from_secs(30);
    let both_up = prom.wait_for("count(up{job=\"strata\"} == 1)", 2.0, limit).await;
    assert_eq!(both_up, Some(2.0), "{}", prom.log());
    let get_info = "sum(grpc_server_handled_total{grpc_method=\"GetInfo\", grpc_code=\"OK\"})";
    assert_eq!(prom.wait_for(get_info, N as f64, limit).await, Some(N as f64));
    let on_b =
        format!("sum(grpc_server_started_total{{grpc_method=\"GetInfo\", instance=\"{}\"}})", b.admin_addr.unwrap());
    assert_eq!(prom.value(&on_b).await.unwrap(), Some(N as f64));
    let not_found = "sum(grpc_server_handled_total{grpc_method=\"StatFile\", grpc_code=\"NOT_FOUND\"})";
    assert_eq!(prom.wait_for(not_found, 3.0, limit).await, Some(3.0));
    let uploaded = "sum(strata_files_bytes_total{direction=\"upload\"})";
    assert_eq!(prom.wait_for(uploaded, K as f64, limit).await, Some(K as f64));
    assert_eq!(prom.value("sum(strata_files_total{direction=\"upload\"})").await.unwrap(), Some(1.0));
    let downloaded = "sum(strata_files_bytes_total{direction=\"download\"})";
    assert_eq!(prom.wait_for(downloaded, K as f64, limit).await, Some(K as f64));
    let failed = "sum(strata_files_failures_total{direction=\"download\", reason=\"NOT_FOUND\"})";
    assert_eq!(prom.wait_for(failed, 1.0, limit).await, Some(1.0));
    let messages = prom.value("sum(grpc_server_msg_received_total{grpc_method=\"Upload\"})").await.unwrap();
    assert!(messages.is_some_and(|m| m >= 2.0), "{messages:?}");
    assert_eq!(prom.wait_for("sum(strata_archive_rows_total)", R as f64, limit).await, Some(R as f64));
    let figures = ["segments", "raw_bytes", "compressed_bytes"];
    let want = [run.segments_done, run.raw_bytes, run.compressed_bytes];
    for (figure, want) in figures.iter().zip(want) {
        let got = prom.value(&format!("sum(strata_archive_{figure}_total)")).await.unwrap();
        assert_eq!(got, Some(want as f64), "{figure}: the run says {want}");
    }
    let job_failed = "sum(strata_scheduler_runs_total{job_name=\"doomed\", state=\"failed\"})";
    assert_eq!(prom.wait_for(job_failed, 1.0, limit).await, Some(1.0));
    let backup_bytes = "max(strata_backup_last_success_bytes)";
    assert_eq!(prom.wait_for(backup_bytes, backup.size_bytes as f64, limit).await, Some(backup.size_bytes as f64));
    // Catalog figures are the same on both instances.
    let events_bytes = "count(strata_storage_table_bytes{table=\"public.events\"} > 0)";
    assert_eq!(prom.wait_for(events_bytes, 2.0, limit).await, Some(2.0));
    let pools = "count(strata_db_pool_max_connections == 8)";
    assert_eq!(prom.wait_for(pools, 4.0, limit).await, Some(4.0), "a primary and a replica pool per instance");
    let serving = "count(strata_service_serving{service=\"strata.v1.FileService\"} == 1)";
    assert_eq!(prom.wait_for(serving, 2.0, limit).await, Some(2.0));
    let days = prom.wait_for("count(strata_storage_until_full_seconds > 0)", 2.0, limit).await;
    assert_eq!(days, Some(2.0), "growing toward the disk's size");
    let score = prom.value("min(strata_health_score)").await.unwrap();
    assert!(score.is_some_and(|s| (0.0..=100.0).contains(&s)), "{score:?}");

    // Every rule loads and evaluates; recording rules and alerts' signals return data.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let rules = loop {
        let groups = prom.api("rules", &[]).await.unwrap();
        let rules: Vec<serde_json::Value> =
            groups["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect();
        let pending: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} ({}: {})", r["name"], r["health"], r["lastError"]))
            .collect();
        if pending.is_empty() {
            break rules;
        }
        assert!(tokio::time::Instant::now() < deadline, "rules not evaluated cleanly: {pending:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(rules.len() >= 20, "{} rules", rules.len());
    // Rates need two scrapes inside their window, and a recorded series one evaluation after
    // that: data may take a few seconds to appear.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut empty = Vec::new();
        for r in &rules {
            let name = r["name"].as_str().unwrap();
            let query = r["query"].as_str().unwrap();
            prom.query(query).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let data = if r["type"] == "recording" { name } else { signal(query) };
            if prom.query(data).await.unwrap().is_empty() {
                empty.push(format!("{name}: {data}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "rules without data:\n{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Every panel query of the dashboard evaluates and returns data.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/strata-dashboard.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push((panel["title"].as_str().unwrap().to_owned(), t["expr"].as_str().unwrap().to_owned()));
        }
    }
    assert!(exprs.len() >= 25, "{} panel queries", exprs.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &exprs {
            let q = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
            let result = prom.query(&q).await.unwrap_or_else(|e| panic!("panel {title:?}: {e}"));
            if result.is_empty() {
                empty.push(format!("{title}: {q}"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "panels without data:\n{}", empty.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The exposition passes promtool's checks, in both formats' negotiation.
    let http = reqwest::Client::new();
    for s in [&a, &b] {
        let text = http.get(format!("{}/metrics", s.admin_url())).send().await.unwrap();
        assert!(text.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        let text = text.text().await.unwrap();
        let (ok, said) = promtool_check_metrics(&text);
        assert!(ok && said.trim().is_empty(), "promtool check metrics: {said}");
        let om = http
            .get(format!("{}/metrics", s.admin_url()))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await
            .unwrap();
        assert!(om.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    }
    drop(prom);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The shipped rules pass `promtool check rules`, and their unit tests
/// (deploy/prometheus/strata-rules.test.yml: each alert fires past its threshold once its `for`
/// has elapsed, not below it; the recording rules' values) pass `promtool test rules`.
#[test]
fn shipped_rules_pass_promtool_and_their_alerts_fire_at_their_thresholds() {
    for args in [["check", "rules", "strata-rules.yml"], ["test", "rules", "strata-rules.test.yml"]] {
        let out = std::process::Command::new(strata_tests::prometheus::promtool())
            .args(args)
            .current_dir(repo("deploy/prometheus"))
            .output()
            .expect("run promtool");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {}: {said}", args.join(" "));
        assert!(said.contains("SUCCESS"), "promtool {}: {said}", args.join(" "));
    }
}

/// `promtool check metrics` on `exposition`: whether it passed, and what it said.
fn promtool_check_metrics(exposition: &str) -> (bool, String) {
    use std::{io::Write as _, process::Stdio};
    let mut child = std::process::Command::new(strata_tests::prometheus::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}
