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
    let (code, out) = strata(&server, &["health"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    assert_eq!(out.trim(), "Serving");
    server.stop().await.unwrap();
}
