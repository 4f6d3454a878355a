//! Long operations: RunMaintenance, ReconcileObjects and RescueDefaultRows return at once and run
//! in the background as operations any instance reports, cancels and continues.

use std::{collections::HashSet, path::Path, process::ExitCode, time::Duration};

use bytes::Bytes;
use clap::Parser;
use diesel_async::SimpleAsyncConnection;
use strata_client::{
    Client,
    cli::{Cli, run},
    operations::{ItemKind, Operation, OperationKind, OperationResult, OperationState},
    types::UploadOptions,
};
use strata_tests::{PgCluster, S3Server, TestServer, pattern, proxy::StallProxy, server::test_config};
use tonic::Code;

use crate::support::eventually;

/// The `strata` CLI, run in-process against `server` (as it/cli.rs does): its exit code and output.
pub(crate) async fn strata(server: &TestServer, args: &[&str]) -> (ExitCode, String) {
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
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_owned();
    let (code, out) = strata(&server, &["ops", "wait", &id]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
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
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("public.slow") && out.contains("succeeded"), "{out}");
    let ops = client.list_operations(Some(OperationKind::Maintenance), 10).await.unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].id, op.id, "newest first");
    let items = client.all_operation_items(&ops[0].id).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].table.as_ref().unwrap().table_name, "slow");
    server.stop().await.unwrap();
}

/// Polls operation `id` until `seen` holds or it ended, and returns it then: every few
/// milliseconds rather than [`eventually`]'s tenth of a second, as the caller acts on what it sees
/// before the operation's next steps.
pub(crate) async fn watch(client: &Client, id: &str, seen: impl Fn(&Operation) -> bool) -> Operation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let o = client.operation(id).await.unwrap();
        if seen(&o) || o.state != OperationState::Running {
            return o;
        }
        assert!(tokio::time::Instant::now() < deadline, "not seen in 60 s: {o:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A reconciliation of `n` orphans (written as files under `objects`, behind strata's back) and
/// one kept file on `server` shows its progress while it runs; `strata ops cancel` stops it
/// part-way with what it found until then recorded (the first orphans in key order, each once,
/// matching its counters); the scope is then free, and `strata files reconcile --wait` runs a new
/// one from the start to its end. With `stall` (the proxy in front of the S3 server the objects are
/// on), the store stops answering from the first step until the cancel is recorded.
async fn reconcile_cancelled_part_way(server: &TestServer, objects: &Path, n: usize, stall: Option<&StallProxy>) {
    const LEFT: usize = 25;
    let client = server.client().await;
    let opts = UploadOptions { owner: "o".into(), ..Default::default() };
    client.upload_bytes(&opts, "kept.bin", Bytes::from(pattern(1000, 1))).await.unwrap();
    orphans(objects, n);

    let op = client.start_reconcile(false, Duration::from_secs(3600)).await.unwrap();
    // Findings are recorded a thousand at a time, each batch its own step: the cancel comes after
    // the first step, long before the last.
    let running = watch(&client, &op.id, |o| o.done > 0).await;
    if let Some(p) = stall {
        p.stall();
    }
    assert_eq!(running.state, OperationState::Running, "{running:?}");
    assert_ne!(running.phase, "starting", "{running:?}");
    let OperationResult::Reconcile { orphans: found_first, .. } = running.result else { panic!("{running:?}") };
    assert!(found_first > 0, "{running:?}");
    assert_eq!(found_first, running.item_count, "counters and findings are recorded together: {running:?}");
    let (code, out) = strata(server, &["ops", "status", &op.id]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains(&format!("operation {} (reconcile) running", op.id)), "{out}");

    let (code, out) = strata(server, &["ops", "cancel", &op.id]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    // Running until its next step notices; or that step came between the request and the answer.
    assert!(
        out.contains(&format!("cancel of {} requested", op.id))
            || out.contains(&format!("operation {} cancelled", op.id)),
        "{out}"
    );
    if let Some(p) = stall {
        p.resume();
    }
    let (code, out) = strata(server, &["ops", "wait", &op.id]).await;
    assert_eq!(code, ExitCode::FAILURE, "not a success: {out}");
    assert!(
        out.contains(&format!("operation {} (reconcile) cancelled", op.id))
            && out.contains("error:    cancelled on request"),
        "{out}"
    );
    let ended = client.operation(&op.id).await.unwrap();
    assert_eq!(ended.state, OperationState::Cancelled, "{ended:?}");
    assert_eq!(ended.error.as_deref(), Some("cancelled on request"));
    assert!(ended.cancel_requested && ended.finished_at.is_some(), "{ended:?}");
    let OperationResult::Reconcile {
        objects_scanned,
        blobs_scanned,
        orphans: found,
        deleted,
        lost_content,
        lost_files,
    } = ended.result
    else {
        panic!("{ended:?}")
    };
    assert!(found >= found_first && found < n as i64, "stopped part-way: {ended:?}");
    assert!(blobs_scanned <= 1, "{ended:?}");
    assert_eq!(
        objects_scanned,
        found + blobs_scanned,
        "each object scanned is an orphan or the kept file's: {ended:?}"
    );
    assert_eq!((deleted, lost_content, lost_files), (0, 0, 0), "{ended:?}");
    assert_eq!(ended.item_count, found, "{ended:?}");
    let items = all_items(&client, &op.id, 1000).await;
    assert!(items.iter().all(|i| i.kind == ItemKind::OrphanObject));
    let keys: Vec<&str> = items.iter().map(|i| i.value.as_str()).collect();
    let expected: Vec<String> = (0..found as usize).map(|i| format!("blobs/orphan-{i:06}")).collect();
    assert_eq!(keys, expected, "the findings up to where it stopped, each once, in key order");

    // A new one may start: from the beginning, not where the cancelled one stopped (most orphans
    // go first, to keep it short).
    for i in LEFT..n {
        std::fs::remove_file(objects.join("blobs").join(format!("orphan-{i:06}"))).unwrap();
    }
    let (code, out) = strata(server, &["files", "reconcile", "--wait"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    assert!(out.contains("succeeded") && out.contains(&format!("scanned {} objects", LEFT + 1)), "{out}");
    assert!(out.contains(&format!("{LEFT} orphan(s), 0 deleted")), "{out}");
    let printed: Vec<&str> = out.lines().filter_map(|l| l.split_once(" orphan object ").map(|(_, k)| k)).collect();
    let expected: Vec<String> = (0..LEFT).map(|i| format!("blobs/orphan-{i:06}")).collect();
    assert_eq!(printed, expected, "{out}");
    let ops = client.list_operations(Some(OperationKind::Reconcile), 10).await.unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!((ops[1].id.as_str(), ops[1].state), (op.id.as_str(), OperationState::Cancelled), "newest first");
    assert_eq!(ops[0].state, OperationState::Succeeded, "{:?}", ops[0]);
    assert_eq!(
        ops[0].result,
        OperationResult::Reconcile {
            objects_scanned: LEFT as i64 + 1,
            blobs_scanned: 1,
            orphans: LEFT as i64,
            deleted: 0,
            lost_content: 0,
            lost_files: 0
        }
    );
    let (_, out) = strata(server, &["ops", "ls", "--kind", "reconcile"]).await;
    let row = out.lines().find(|l| l.contains(&op.id)).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("cancelled"), "{out}");
}

/// On SQLite, with the objects on S3: the cancel is asked for while the operation waits on the
/// store (see the ignored test below for why not while it records its steps).
#[tokio::test(flavor = "multi_thread")]
async fn reconcile_on_sqlite_cancels_part_way_then_runs_with_wait() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start("strata-reconcile").unwrap();
    let proxy = StallProxy::start(s3.addr).await.unwrap();
    let mut config =
        test_config(format!("sqlite://{}", dir.path().join("strata.db").display()), vec![], &dir.path().join("o"));
    config.object_store_url = s3.url_via(proxy.addr);
    let server = TestServer::start(config).await.unwrap();
    reconcile_cancelled_part_way(&server, &s3.root.join(&s3.bucket), 10_000, Some(&proxy)).await;
    server.stop().await.unwrap();
}

/// On SQLite, with the objects on the local file system, cancelled while the operation records
/// its steps back to back (one writer at a time: the cancel reaches the operation in the process,
/// not through a write that would wait behind its steps).
#[tokio::test(flavor = "multi_thread")]
async fn reconcile_on_sqlite_cancels_part_way_while_it_records_steps() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    reconcile_cancelled_part_way(&server, &dir.path().join("objects"), 30_000, None).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_on_postgres_cancels_part_way_then_runs_with_wait() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("ops_reconcile_cancel").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let server = TestServer::postgres(cluster, &db, &objects).await.unwrap();
    reconcile_cancelled_part_way(&server, &objects, 30_000, None).await;
    server.stop().await.unwrap();
}

/// Bytes of the SQLite database `c` is open on (its pages, those still in the WAL included).
async fn sqlite_bytes(
    c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let sql = "SELECT page_count * page_size AS n FROM pragma_page_count(), pragma_page_size()";
    diesel_async::RunQueryDsl::get_result::<N>(diesel::sql_query(sql), c).await.unwrap().n
}

/// Maintenance on SQLite is one VACUUM (and ANALYZE) of the whole file, recorded as its one table:
/// it returns at once and shows its step while the VACUUM runs. The VACUUM is one statement, not
/// interrupted: a cancel asked for during it is recorded once SQLite's write lock comes free
/// (usually while ANALYZE reads), and the operation ends cancelled at its next step with the file
/// vacuumed; or, should that step take the lock first, it ends succeeded and the cancel finds it
/// ended. Either way the record matches the file, and `--wait` then runs a new one to its end.
#[tokio::test(flavor = "multi_thread")]
async fn maintenance_on_sqlite_runs_as_an_operation() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let file = dir.path().join("strata.db");
    let path = file.display().to_string();
    let mut c = crate::support::sqlite(&file).await;
    // 60 MB kept (a VACUUM that takes a while to copy them), 10 MB deleted (space to give back).
    c.batch_execute(
        "CREATE TABLE junk (id INTEGER PRIMARY KEY, pad BLOB);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 70000)
         INSERT INTO junk SELECT i, randomblob(1000) FROM s;
         DELETE FROM junk WHERE id > 60000;",
    )
    .await
    .unwrap();
    let before = sqlite_bytes(&mut c).await;
    let client = server.client().await;

    let op = client.start_maintenance(&[], false, false, false).await.unwrap();
    assert_eq!((op.kind, op.state), (Some(OperationKind::Maintenance), OperationState::Running), "{op:?}");
    assert_eq!(op.target, path);
    let vacuuming = watch(&client, &op.id, |o| o.phase == "vacuum of the database file").await;
    assert_eq!(vacuuming.state, OperationState::Running, "{vacuuming:?}");
    assert_eq!((vacuuming.done, vacuuming.total), (0, 1), "{vacuuming:?}");
    let asked = client.cancel_operation(&op.id).await.unwrap();
    let ended = wait(&client, &op).await;
    match ended.state {
        OperationState::Cancelled => {
            assert!(asked.cancel_requested && ended.cancel_requested, "{asked:?}");
            assert_eq!(ended.error.as_deref(), Some("cancelled on request"));
        }
        OperationState::Succeeded => {
            assert_eq!((asked.state, asked.cancel_requested), (OperationState::Succeeded, false), "{asked:?}");
            assert_eq!(ended.error, None);
        }
        _ => panic!("{ended:?}"),
    }
    let OperationResult::Maintenance { tables_done, reclaimed_bytes } = ended.result else { panic!("{ended:?}") };
    assert_eq!((tables_done, ended.done, ended.total), (1, 1, 1), "the VACUUM ran to its end: {ended:?}");
    assert!(reclaimed_bytes > 9_000_000, "{ended:?}");
    let after = sqlite_bytes(&mut c).await;
    assert!(before - after > 9_000_000, "the file gave the space back: {before} → {after}");
    let items = client.all_operation_items(&op.id).await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    let t = items[0].table.as_ref().unwrap();
    assert_eq!((t.table_name.as_str(), t.reclaimed_bytes), (path.as_str(), reclaimed_bytes), "{t:?}");

    // `--wait --json`: the ended operation, then its items.
    let (code, out) = strata(&server, &["--json", "maintenance", "--wait"]).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let docs: Vec<serde_json::Value> =
        serde_json::Deserializer::from_str(&out).into_iter().collect::<Result<_, _>>().unwrap();
    let [done, items] = &docs[..] else { panic!("{out}") };
    assert_eq!(done["state"], "succeeded", "{out}");
    assert_eq!(done["result"]["maintenance"]["tables_done"], 1, "{out}");
    assert_eq!(items[0]["table"]["table_name"], path.as_str(), "{out}");
    let ops = client.list_operations(Some(OperationKind::Maintenance), 10).await.unwrap();
    let ids: Vec<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, [done["id"].as_str().unwrap(), op.id.as_str()], "newest first");
    server.stop().await.unwrap();
}
