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
