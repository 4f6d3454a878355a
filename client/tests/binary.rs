//! The `strata` binary itself, against a real server: what only the process shows (its exit
//! status and standard error).

use strata_tests::TestServer;

/// Runs `strata --url URL ARGS…` with a standard output whose reader is already gone (as in
/// `strata … | head -1` once `head` has its line): exit status and standard error.
async fn with_closed_stdout(server: &TestServer, args: &[&str]) -> (std::process::ExitStatus, String) {
    // The reader is dropped before the process starts, so its first write fails: no race with a
    // reader that would still be there.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--url")
        .arg(server.url())
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        // Not `output()`: tokio's replaces the standard output given here with a pipe of its own.
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_quietly_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    for args in [&["alerts", "rules", "ls"][..], &["files", "ls"], &["--json", "info"]] {
        let (status, stderr) = with_closed_stdout(&server, args).await;
        assert_eq!((status.code(), stderr.as_str()), (Some(0), ""), "strata {args:?}");
    }
    // A real error still fails loudly.
    let (status, stderr) = with_closed_stdout(&server, &["files", "stat", "no-such-file"]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    server.stop().await.unwrap();
}
