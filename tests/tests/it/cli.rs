//! The `strata` CLI, driven in-process against a real server.

use clap::Parser;
use strata_client::cli::{Cli, run};
use strata_tests::TestServer;

async fn strata(server: &TestServer, args: &[&str]) -> (std::process::ExitCode, String) {
    let mut argv = vec!["strata", "--url"];
    let url = server.url();
    argv.push(&url);
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let code = run(cli, &mut out).await.unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_print_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();

    let (_, out) = strata(&server, &["--json", "info"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["routing_state"], "normal");

    let (_, out) = strata(&server, &["snapshot"]).await;
    assert!(out.starts_with("snapshot 1 at"), "{out}");
    let (_, out) = strata(&server, &["--json", "metrics"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["database_size_bytes"].as_i64().unwrap() > 0);
    let (_, out) = strata(&server, &["metrics"]).await;
    assert!(out.contains("strata.db") && out.contains("pool"), "{out}");
    let (_, out) = strata(&server, &["growth", "--window", "day", "--target-bytes", "1000000000"]).await;
    assert!(out.contains("database"), "{out}");
    let (code, out) = strata(&server, &["test-connection"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("primary"), "{out}");
    let src = dir.path().join("hello.txt");
    std::fs::write(&src, b"hello, strata").unwrap();
    let (_, out) = strata(&server, &["--json", "upload", src.to_str().unwrap(), "--owner", "me", "--sha256"]).await;
    let up: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = up["id"].as_str().unwrap().to_owned();
    assert_eq!(up["name"], "hello.txt");
    assert_eq!(up["size_bytes"], 13);
    let dst = dir.path().join("back.txt");
    let (_, out) = strata(&server, &["download", &id, "-o", dst.to_str().unwrap()]).await;
    assert!(out.contains(&id), "{out}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"hello, strata");
    let (_, out) = strata(&server, &["files", "ls", "--owner", "me"]).await;
    assert!(out.contains("hello.txt") && out.contains(&id), "{out}");
    let (_, out) = strata(&server, &["files", "stat", &id]).await;
    assert!(out.contains("sha256"), "{out}");
    let (_, out) = strata(&server, &["files", "rm", &id]).await;
    assert!(out.contains("content removed"), "{out}");

    let (code, out) = strata(&server, &["health"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(out.trim(), "Serving");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_archive_create_plan_run_read_restore() {
    use diesel_async::SimpleAsyncConnection;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let db = dir.path().join("strata.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, state TEXT, body TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40)
         INSERT INTO notes SELECT i, datetime('now', '-' || (i * 5) || ' days'), CASE WHEN i % 2 = 0 THEN 'done' ELSE 'open' END, 'note ' || i FROM s;",
    )
    .await
    .unwrap();
    // Rows 20..=40 are ≥ 100 days old; the even ones are done: 11 due.
    let (code, out) = strata(
        &server,
        &[
            "archive",
            "create",
            "old-notes",
            "--table",
            "notes",
            "--time-column",
            "created_at",
            "--after",
            "99days",
            "--filter",
            "state = done",
            "--batch-size",
            "4",
        ],
    )
    .await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("policy old-notes created"), "{out}");
    let (_, out) = strata(&server, &["archive", "policies"]).await;
    assert!(out.contains("old-notes") && out.contains("main.notes"), "{out}");
    let (_, out) = strata(&server, &["archive", "plan", "old-notes"]).await;
    assert!(out.starts_with("11 row(s) due") && out.contains("3 batch(es)"), "{out}");
    let (code, out) = strata(&server, &["--json", "archive", "run", "old-notes", "--wait"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["state"].as_str(), r["rows_done"].as_i64()), (Some("succeeded"), Some(11)));
    let (_, out) = strata(&server, &["archive", "status", "--policy", "old-notes"]).await;
    assert!(out.contains("Succeeded") && out.contains("11 row(s)"), "{out}");
    let (_, out) = strata(&server, &["archive", "segments", "old-notes"]).await;
    assert_eq!(out.matches("archived").count(), 3, "{out}");
    let (_, out) = strata(&server, &["archive", "read", "old-notes"]).await;
    let mut ids: Vec<i64> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap()).collect();
    // Segments come oldest rows first; these rows are older the larger their id.
    assert_eq!(ids[0], 36);
    ids.sort();
    assert_eq!(ids, (20..=40).filter(|i| i % 2 == 0).collect::<Vec<_>>());
    let (code, out) = strata(&server, &["archive", "restore", "old-notes", "--wait"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert!(out.contains("11 row(s)") && out.contains("Restore"), "{out}");
    // Bad input: a clear error, nothing created.
    let cli = Cli::try_parse_from([
        "strata",
        "--url",
        &server.url(),
        "archive",
        "create",
        "x",
        "--table",
        "nope",
        "--time-column",
        "t",
        "--after",
        "1d",
    ])
    .unwrap();
    let err = run(cli, &mut Vec::new()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_jobs_scheduler_alerts_and_health_report() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let ok = std::process::ExitCode::SUCCESS;

    let (_, out) = strata(&server, &["jobs", "ls"]).await;
    assert!(out.contains("metrics-sample") && out.contains("*/5 * * * *"), "{out}");
    let (code, out) = strata(
        &server,
        &[
            "jobs",
            "create",
            "nightly",
            "--kind",
            "maintenance",
            "--schedule",
            "0 4 * * *",
            "--time-zone",
            "Asia/Tokyo",
            "--option",
            "full=false",
        ],
    )
    .await;
    assert_eq!(code, ok, "{out}");
    assert!(out.contains("job nightly created; next run") && out.contains("19:00:00"), "{out}");
    let url = server.url();
    let bad = Cli::try_parse_from([
        "strata",
        "--url",
        &url,
        "jobs",
        "create",
        "bad",
        "--kind",
        "backup",
        "--schedule",
        "every day",
    ])
    .unwrap();
    let err = run(bad, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("InvalidArgument") && err.contains("not a cron expression"), "{err}");
    let (code, out) = strata(&server, &["jobs", "run", "nightly", "--wait"]).await;
    assert_eq!(code, ok, "{out}");
    assert!(out.contains("succeeded") && out.contains("table(s) vacuumed"), "{out}");
    let (_, out) = strata(&server, &["--json", "jobs", "runs", "nightly"]).await;
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs[0]["state"], "succeeded");
    assert_eq!(runs[0]["manual"], true);
    let (_, out) = strata(&server, &["jobs", "pause", "nightly"]).await;
    assert!(out.contains("paused"), "{out}");
    let (_, out) = strata(&server, &["jobs", "resume", "nightly"]).await;
    assert!(out.contains("resumed"), "{out}");
    let (_, out) = strata(&server, &["jobs", "update", "nightly", "--schedule", "30 4 * * *"]).await;
    assert!(out.contains("19:30:00"), "{out}");
    let (_, out) = strata(&server, &["jobs", "rm", "nightly"]).await;
    assert!(out.contains("deleted"), "{out}");
    let (_, out) = strata(&server, &["scheduler", "stop"]).await;
    assert!(out.contains("scheduler stopped"), "{out}");
    let (_, out) = strata(&server, &["--json", "scheduler", "start"]).await;
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["running"], true);

    {
        use diesel_async::SimpleAsyncConnection;
        let mut c = crate::support::sqlite(&dir.path().join("strata.db")).await;
        c.batch_execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)").await.unwrap();
    }
    let (_, out) = strata(&server, &["alerts", "rules", "ls"]).await;
    assert!(out.contains("database-size (built in)"), "{out}");
    let (code, out) = strata(
        &server,
        &["alerts", "rules", "create", "any-table", "--metric", "table-size", "--warning", "0", "--label", "team=ops"],
    )
    .await;
    assert_eq!(code, ok, "{out}");
    let (_, out) = strata(&server, &["alerts", "rules", "update", "any-table", "--critical", "1000000000"]).await;
    assert!(out.contains("updated"), "{out}");
    // Only this rule: the built-in ones depend on the machine (disk usage).
    for r in ["database-size", "probe-latency", "disk-used", "pool-utilization", "replica-lag", "failed-job"] {
        strata(&server, &["alerts", "rules", "update", r, "--enabled", "false"]).await;
    }
    let (code, out) = strata(&server, &["jobs", "run", "alert-evaluation", "--wait"]).await;
    assert_eq!(code, ok, "{out}");
    let (_, out) = strata(&server, &["--json", "alerts", "ls"]).await;
    let alerts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = alerts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(alerts[0]["labels"]["team"], "ops");
    let (_, out) = strata(&server, &["alerts", "ack", &id, "--note", "mine"]).await;
    assert!(out.contains("acknowledged by loopback"), "{out}");
    let (_, out) = strata(&server, &["alerts", "show", &id]).await;
    assert!(out.contains("acknowledged") && out.contains("mine"), "{out}");
    let (_, out) = strata(&server, &["alerts", "resolve", &id]).await;
    assert!(out.contains("resolved by loopback"), "{out}");
    let (_, out) = strata(&server, &["alerts", "rules", "rm", "any-table"]).await;
    assert!(out.contains("deleted"), "{out}");
    let (_, out) = strata(&server, &["--json", "health-report"]).await;
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(h["score"].as_u64().unwrap() <= 100);
    assert!(h["factors"].as_array().unwrap().iter().any(|f| f["name"] == "critical_alerts"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_alert_rule_thresholds_in_their_unit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    strata(&server, &["alerts", "rules", "create", "big-notes", "--metric", "daily-growth", "--warning", "1536"]).await;
    let (_, out) = strata(&server, &["alerts", "rules", "ls"]).await;
    let row = |name: &str| out.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("no {name} in {out}"));
    // Sizes human-readable (built in: 500 MiB and 1 GiB) …
    assert!(row("database-size").contains("500.0 MiB") && row("database-size").contains("1.0 GiB"), "{out}");
    assert!(row("big-notes").contains("1.5 KiB"), "{out}");
    assert!(!out.contains("524288000"), "{out}");
    // … other units as the number they are (percent).
    assert!(row("disk-used").contains(" 80 ") && row("disk-used").contains(" 95 "), "{out}");
    server.stop().await.unwrap();
}
