//! Long operations: RunMaintenance, ReconcileObjects and RescueDefaultRows return at once and run
//! in the background as operations any instance reports, cancels and continues.

use std::{collections::HashSet, path::Path, time::Duration};

use bytes::Bytes;
use clap::Parser;
use diesel_async::SimpleAsyncConnection;
use strata_client::{
    Client,
    cli::{Cli, run},
    operations::{ItemKind, Operation, OperationKind, OperationResult, OperationState},
    types::UploadOptions,
};
use strata_tests::{PgCluster, TestServer, pattern, server::test_config};
use tonic::Code;

use crate::support::eventually;

async fn strata(server: &TestServer, args: &[&str]) -> (std::process::ExitCode, String) {
    let url = server.url();
    let mut argv = vec!["strata", "--url", &url];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let code = run(Cli::try_parse_from(argv).unwrap(), &mut out).await.unwrap();
    (code, String::from_utf8(out).unwrap())
}

/// `n` objects under `blobs/` that no catalog row references, written behind strata's back.
fn orphans(objects: &Path, n: usize) {
    let dir = objects.join("blobs");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("orphan-{i:06}")), b"x").unwrap();
    }
}

/// Every item of `op`, read a page of `size` at a time; checks the pages fit together.
async fn all_items(client: &Client, op: &str, size: i32) -> Vec<strata_client::operations::OperationItem> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.operation_items(op, &token, size).await.unwrap();
        assert!(page.items.len() <= size as usize);
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let seqs: Vec<i64> = items.iter().map(|i| i.seq).collect();
    assert_eq!(seqs, (1..=items.len() as i64).collect::<Vec<_>>(), "items are numbered without gaps or repeats");
    items
}

async fn wait(client: &Client, op: &Operation) -> Operation {
    client.wait_operation(&op.id, Duration::from_millis(50)).await.unwrap()
}

/// 100,000 objects: the call returns at once, the operation reports its progress, and its
/// findings come a page at a time (each orphan once, in key order); the CLI starts and follows it.
#[tokio::test(flavor = "multi_thread")]
async fn reconcile_of_a_hundred_thousand_objects_is_paged() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let client = server.client().await;
    let opts = UploadOptions { owner: "o".into(), ..Default::default() };
    let kept = client.upload_bytes(&opts, "kept.bin", Bytes::from(pattern(1000, 1))).await.unwrap();
    orphans(&dir.path().join("objects"), N);

    let op = client.start_reconcile(false, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(op.kind, Some(OperationKind::Reconcile));
    let e = client.start_reconcile(false, Duration::ZERO).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "one reconciliation at a time: {e}");
    assert!(e.to_string().contains(&op.id), "the busy answer names the running one: {e}");
    let done = wait(&client, &op).await;
    assert_eq!(done.state, OperationState::Succeeded, "{done:?}");
    assert_eq!(
        done.result,
        OperationResult::Reconcile {
            objects_scanned: N as i64 + 1,
            blobs_scanned: 1,
            orphans: N as i64,
            deleted: 0,
            lost_content: 0,
            lost_files: 0
        }
    );
    assert_eq!(done.item_count, N as i64);
    let items = all_items(&client, &op.id, 1000).await;
    assert!(items.iter().all(|i| i.kind == ItemKind::OrphanObject));
    let keys: Vec<&str> = items.iter().map(|i| i.value.as_str()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("blobs/orphan-{i:06}")).collect();
    assert_eq!(keys, expected, "each orphan once, in key order");
    assert_eq!(client.download_bytes(&kept.id, 0, 0).await.unwrap(), pattern(1000, 1), "a report changes nothing");

    // The CLI: start, then follow with `ops wait`; the listing shows it; bad input is refused.
    let (code, out) = strata(&server, &["files", "reconcile"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_owned();
    let (code, out) = strata(&server, &["ops", "wait", &id]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    assert!(out.contains("succeeded") && out.contains(&format!("{N} orphan(s)")), "{out}");
    let (_, out) = strata(&server, &["ops", "items", &id, "--limit", "2"]).await;
    assert!(out.contains("orphan object blobs/orphan-000000") && out.contains("more: --page-token 2"), "{out}");
    let (_, out) = strata(&server, &["ops", "ls", "--kind", "reconcile"]).await;
    assert!(out.contains(&id) && out.contains(&op.id), "{out}");
    let e = client.operation("no-such-operation").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
    let e = client.operation_items(&id, "-3", 10).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    server.stop().await.unwrap();
}

/// An instance that stops mid-reconciliation gives the operation up; another instance continues it
/// from the last recorded step, and the result counts every object exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn another_instance_continues_a_reconciliation() {
    const N: usize = 30_000;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("ops_takeover").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let config = || test_config(cluster.primary_url(&db), vec![], &objects);
    let a = TestServer::start(config()).await.unwrap();
    let b = TestServer::start(config()).await.unwrap();
    let (ca, cb) = (a.client().await, b.client().await);
    let opts = UploadOptions { owner: "o".into(), ..Default::default() };
    ca.upload_bytes(&opts, "kept.bin", Bytes::from(pattern(1000, 1))).await.unwrap();
    let gone = ca.upload_bytes(&opts, "gone.bin", Bytes::from(pattern(2000, 2))).await.unwrap();
    let gone_key = std::fs::read_dir(objects.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::metadata(p).unwrap().len() == 2000)
        .unwrap();
    std::fs::remove_file(gone_key).unwrap();
    orphans(&objects, N);

    let op = ca.start_reconcile(false, Duration::from_secs(3600)).await.unwrap();
    let first = eventually("the first step recorded", Duration::from_secs(60), || async {
        let o = cb.operation(&op.id).await.unwrap();
        (o.done > 0).then_some(o)
    })
    .await;
    assert_eq!(first.state, OperationState::Running, "{first:?}");
    let a_instance = first.instance.clone();
    a.stop().await.unwrap();

    let done = wait(&cb, &op).await;
    assert_eq!(done.state, OperationState::Succeeded, "{done:?}");
    assert_ne!(done.instance, a_instance, "the other instance ended it");
    assert_eq!(
        done.result,
        OperationResult::Reconcile {
            objects_scanned: N as i64 + 1,
            blobs_scanned: 2,
            orphans: N as i64,
            deleted: 0,
            lost_content: 1,
            lost_files: 1
        }
    );
    let items = all_items(&cb, &op.id, 1000).await;
    let orphans: HashSet<&str> =
        items.iter().filter(|i| i.kind == ItemKind::OrphanObject).map(|i| i.value.as_str()).collect();
    assert_eq!(orphans.len(), N, "each orphan reported once across both instances");
    assert!(items.iter().any(|i| i.kind == ItemKind::LostFile && i.value == gone.id));
    b.stop().await.unwrap();
}

/// Holds the lock VACUUM needs on `slow` until the returned sender is dropped or sent to.
async fn hold_vacuum_lock(cluster: &PgCluster, db: &str) -> tokio::sync::oneshot::Sender<()> {
    let mut h = cluster.connect(db).await.unwrap();
    h.batch_execute("BEGIN; LOCK TABLE slow IN SHARE UPDATE EXCLUSIVE MODE").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.await;
        h.batch_execute("COMMIT").await.unwrap();
    });
    tx
}

/// RunMaintenance returns while its VACUUM waits; a second one is refused while it runs; a cancel
/// stops the waiting VACUUM at once (not when the lock comes free); `--wait` follows a new one to
/// its end and prints its table.
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_runs_as_an_operation_and_cancels_its_vacuum() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("ops_maint").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute("CREATE TABLE slow (id bigint PRIMARY KEY, pad text); INSERT INTO slow SELECT i, 'x' FROM generate_series(1, 1000) i;")
        .await
        .unwrap();
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    let lock = hold_vacuum_lock(cluster, &db).await;
    let op = client.start_maintenance(&["public.slow".into()], false, false, false).await.unwrap();
    assert_eq!(op.state, OperationState::Running, "the call returned while the VACUUM waits for its lock");
    eventually("the VACUUM waiting", Duration::from_secs(30), || async {
        (client.operation(&op.id).await.unwrap().phase == "vacuum public.slow").then_some(())
    })
    .await;
    let e = client.start_maintenance(&[], false, false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    let e = client.start_maintenance(&["public.nope".into()], false, false, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");

    let asked = client.cancel_operation(&op.id).await.unwrap();
    assert!(asked.cancel_requested);
    let ended = wait(&client, &op).await;
    assert_eq!(ended.state, OperationState::Cancelled, "{ended:?}");
    assert_eq!(ended.error.as_deref(), Some("cancelled on request"));
    assert_eq!(ended.result, OperationResult::Maintenance { tables_done: 0, reclaimed_bytes: 0 });
    // The lock is still held: the VACUUM was cancelled, not finished.
    drop(lock);

    let (code, out) = strata(&server, &["maintenance", "--table", "public.slow", "--wait"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    assert!(out.contains("public.slow") && out.contains("succeeded"), "{out}");
    let ops = client.list_operations(Some(OperationKind::Maintenance), 10).await.unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].id, op.id, "newest first");
    let items = client.all_operation_items(&ops[0].id).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].table.as_ref().unwrap().table_name, "slow");
    server.stop().await.unwrap();
}
