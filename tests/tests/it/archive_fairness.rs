//! Fair sharing of the embedded database during archival: on SQLite, whose one write lock an
//! archive or purge run takes batch after batch, an application inserting into the same file on
//! its own connection keeps getting its inserts through while the run is in progress. Nothing is
//! lost on either side: every archived row is in one segment once, every insert is in the table.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::SimpleAsyncConnection;
use strata_client::{
    Client,
    archive::{ArchivePolicy, PolicyMode, RunKind, RunState, SegmentSelection},
};
use strata_tests::{TestServer, server::test_config};

/// Rows of the table, ids 1..=ROWS; those with an odd id are a year old (due), the others new.
const ROWS: i64 = 40_000;
/// The application's rows: ids from here on, inserted during the run (never due).
const APP_IDS: i64 = 1_000_000;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// The application: inserts a row every 5 ms on its own connection (busy timeout 10 s) until
/// `stop`, counting those done in `done`; returns the ids it inserted.
fn application(db: PathBuf, stop: Arc<AtomicBool>, done: Arc<AtomicUsize>) -> Vec<i64> {
    let mut c = crate::support::sqlite_sync(&db);
    let mut ids = Vec::new();
    let mut id = APP_IDS;
    while !stop.load(Ordering::Relaxed) {
        let insert = diesel::sql_query("INSERT INTO events (id, created_at, body) VALUES (?1, datetime('now'), ?2)")
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(format!("inserted by the application during the run: {id}"));
        diesel::RunQueryDsl::execute(insert, &mut c)
            .unwrap_or_else(|e| panic!("the application's insert {id} failed: {e}"));
        ids.push(id);
        id += 1;
        done.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(5));
    }
    ids
}

/// Runs `policy` (archive or purge) over the table while the application inserts, and returns
/// what ended it; asserts that inserts completed between two looks that both saw the run running.
async fn run_beside_the_application(
    client: &Client,
    db: &std::path::Path,
    policy: &str,
) -> (strata_client::archive::ArchiveRun, Vec<i64>) {
    let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let app = std::thread::spawn({
        let (db, stop, done) = (db.to_path_buf(), stop.clone(), done.clone());
        move || application(db, stop, done)
    });
    let run = client.run_archive(policy).await.unwrap();
    // Inserts done after one look saw the run running and before a later look still saw it running
    // completed while the run was in progress (a run never goes back to running). Counted only
    // between looks that both saw it running.
    let (mut during, mut first_look, mut looks) = (0usize, None::<usize>, 0);
    let last = loop {
        let before = done.load(Ordering::SeqCst);
        let r = client.archive_run(&run.id).await.unwrap();
        if r.state != RunState::Running {
            break r;
        }
        looks += 1;
        // `before` was read before this look: inserts up to it completed before the look.
        if let Some(first) = first_look {
            during = before - first;
        }
        if first_look.is_none() {
            first_look = Some(done.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let ids = tokio::task::spawn_blocking(move || app.join().expect("the application panicked")).await.unwrap();
    assert_eq!(last.state, RunState::Succeeded, "{last:?}");
    assert!(looks >= 2, "the run ended before it was seen running twice ({looks} looks): give it more rows");
    assert!(
        during > 0,
        "no insert of the application completed while the run was running ({} batches, {looks} looks)",
        last.segments_done
    );
    tracing::info!(policy, during, looks, segments = last.segments_done, "inserts completed during the run");
    (last, ids)
}

async fn table_ids(
    c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
) -> BTreeSet<i64> {
    // Here only: its blanket `load` would shadow the atomics' elsewhere.
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT id FROM events").load::<Id>(c).await.unwrap().into_iter().map(|r| r.id).collect()
}

/// A fresh SQLite file holding the application's table, and a server on it (the default
/// settings of a SQLite run).
async fn setup() -> (tempfile::TempDir, PathBuf, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(&format!(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, body TEXT NOT NULL);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
         INSERT INTO events SELECT i, datetime('now', CASE i % 2 WHEN 1 THEN '-400 days' ELSE '-1 days' END),
                                   'event ' || i || ' ' || hex(randomblob(40))
           FROM s;"
    ))
    .await
    .unwrap();
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config).await.unwrap();
    (dir, db, server)
}

fn policy(name: &str, mode: PolicyMode) -> ArchivePolicy {
    ArchivePolicy {
        name: name.into(),
        table_name: "events".into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(30 * 86_400),
        batch_size: 1000,
        mode,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_writes_while_a_sqlite_archive_run_is_in_progress() {
    let (_dir, db, server) = setup().await;
    let client = server.client().await;
    client.create_policy(&policy("events", PolicyMode::Archive)).await.unwrap();
    let due: BTreeSet<i64> = (1..=ROWS).filter(|i| i % 2 == 1).collect();
    assert_eq!(client.plan_archive("events").await.unwrap().rows, due.len() as i64);

    let (run, inserted) = run_beside_the_application(&client, &db, "events").await;
    assert_eq!(run.rows_done, due.len() as i64);

    // Every archived row is in a segment, once.
    let mut archived = Vec::new();
    client
        .read_archive("events", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let v: serde_json::Value = serde_json::from_str(&r).unwrap();
                archived.push(v["id"].as_i64().unwrap());
            }
            Ok(())
        })
        .await
        .unwrap();
    let once: BTreeSet<i64> = archived.iter().copied().collect();
    assert_eq!(once.len(), archived.len(), "a row is in more than one segment");
    assert_eq!(once, due, "the segments hold exactly the due rows");
    let in_segments: i64 = client.list_segments("events").await.unwrap().iter().map(|s| s.row_count).sum();
    assert_eq!(in_segments, run.rows_done);

    // The table: the rows that were not due, and every insert of the application.
    let mut c = crate::support::sqlite(&db).await;
    let expected: BTreeSet<i64> = (1..=ROWS).filter(|i| i % 2 == 0).chain(inserted.iter().copied()).collect();
    assert!(!inserted.is_empty());
    assert_eq!(table_ids(&mut c).await, expected);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_application_writes_while_a_sqlite_purge_run_is_in_progress() {
    let (_dir, db, server) = setup().await;
    let client = server.client().await;
    client.create_policy(&policy("purge-events", PolicyMode::Purge)).await.unwrap();

    let (run, inserted) = run_beside_the_application(&client, &db, "purge-events").await;
    assert_eq!((run.kind, run.rows_done), (RunKind::Purge, ROWS / 2));
    assert!(client.list_segments("purge-events").await.unwrap().is_empty());

    let mut c = crate::support::sqlite(&db).await;
    let expected: BTreeSet<i64> = (1..=ROWS).filter(|i| i % 2 == 0).chain(inserted.iter().copied()).collect();
    assert_eq!(table_ids(&mut c).await, expected);
    server.stop().await.unwrap();
}
