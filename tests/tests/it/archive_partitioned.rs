//! Row-mode archival of partitioned PostgreSQL tables: range by time, range by key (one partition
//! partitioned again by hash) and hash. Every partition is filled from its first page, so rows of
//! different partitions share locations (`ctid`) — a delete by location alone would take rows of
//! other partitions. Batches go along the key across many partitions at once; archive → read →
//! restore gives back exactly the original rows.

use std::{collections::BTreeMap, time::Duration};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client,
    archive::{ArchivePolicy, PolicyMode, RunKind, RunState, SegmentSelection},
};
use strata_tests::{PgCluster, TestServer, server::test_config};

#[derive(QueryableByName)]
struct Doc {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    doc: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn docs(c: &mut AsyncPgConnection, filter: &str) -> BTreeMap<i64, String> {
    diesel::sql_query(format!("SELECT id, row_to_json(t)::text AS doc FROM messages t WHERE {filter}"))
        .load::<Doc>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.doc))
        .collect()
}

async fn count(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(c).await.unwrap().n
}

async fn wait(client: &Client, id: &str) -> strata_client::archive::ArchiveRun {
    let run = tokio::time::timeout(Duration::from_secs(120), client.wait_archive_run(id, Duration::from_millis(50)))
        .await
        .expect("run finished in time")
        .unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    run
}

const DUE: &str = "created_at < now() - interval '180 days'";

/// Archives the due rows of `messages` (created by `ddl`), reads them back, restores them, and
/// checks each step against the rows as they were.
async fn archive_and_restore(name: &str, ddl: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(ddl).await.unwrap();
    c.batch_execute("ANALYZE messages").await.unwrap();
    // Locations collide across partitions: the premise of the test.
    let shared = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM (SELECT ctid FROM messages GROUP BY ctid HAVING count(*) > 1) s",
    )
    .await;
    assert!(shared > 100, "{name}: only {shared} locations are shared between partitions");
    let original = docs(&mut c, "true").await;
    let due = docs(&mut c, DUE).await;
    assert!(due.len() > 500 && due.len() < original.len(), "{name}: {} due of {}", due.len(), original.len());

    let server = TestServer::start(test_config(cluster.primary_url(&db), vec![], dir.path())).await.unwrap();
    let client = server.client().await;
    client
        .create_policy(&ArchivePolicy {
            name: "p".into(),
            table_name: "messages".into(),
            time_column: "created_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(180 * 86_400),
            batch_size: 97,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(client.plan_archive("p").await.unwrap().rows as usize, due.len(), "{name}");
    let run = client.run_archive("p").await.unwrap();
    let run = wait(&client, &run.id).await;
    assert_eq!(run.rows_done as usize, due.len(), "{name}: {run:?}");
    assert_eq!(count(&mut c, &format!("SELECT count(*)::int8 AS n FROM messages WHERE {DUE}")).await, 0, "{name}");
    let kept = docs(&mut c, "true").await;
    assert_eq!(kept.len() + due.len(), original.len(), "{name}");
    assert!(kept.iter().all(|(id, doc)| original.get(id) == Some(doc)), "{name}: a row that was not due changed");

    // The segments hold exactly the due rows, byte for byte.
    let mut read = BTreeMap::new();
    client
        .read_archive("p", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let id = serde_json::from_str::<serde_json::Value>(&r).unwrap()["id"].as_i64().unwrap();
                assert!(read.insert(id, r).is_none(), "row {id} archived twice");
            }
            Ok(())
        })
        .await
        .unwrap();
    assert!(read == due, "{name}: the archive differs from the due rows");

    // Restored into the parent, each row goes back to its partition.
    let run = client.restore_archive("p", &SegmentSelection::default()).await.unwrap();
    let run = wait(&client, &run.id).await;
    assert_eq!(run.rows_done as usize, due.len(), "{name}: {run:?}");
    assert!(docs(&mut c, "true").await == original, "{name}: the restored table differs from the original");
    let misplaced = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM messages m WHERE m.tableoid <> (SELECT m2.part FROM messages_copy m2 WHERE m2.id = m.id)",
    )
    .await;
    assert_eq!(misplaced, 0, "{name}: rows came back to the partitions they left");
    server.stop().await.unwrap();
}

/// Monthly partitions over 16 months and a default one; ids interleave the months, so a batch
/// along the key takes rows of every due partition.
#[tokio::test(flavor = "multi_thread")]
async fn range_by_time() {
    archive_and_restore(
        "part_time",
        "CREATE TABLE messages (id bigint NOT NULL, created_at timestamptz NOT NULL, body text,
                                PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
         DO $$
         DECLARE m int;
         BEGIN
           FOR m IN 0..15 LOOP
             EXECUTE format('CREATE TABLE messages_m%s PARTITION OF messages FOR VALUES FROM (%L) TO (%L)', m,
               date_trunc('month', now()) - make_interval(months => 14 - m),
               date_trunc('month', now()) - make_interval(months => 13 - m));
           END LOOP;
         END $$;
         CREATE TABLE messages_rest PARTITION OF messages DEFAULT;
         INSERT INTO messages
         SELECT m + 16 * k,
                date_trunc('month', now()) - make_interval(months => 14 - m) + make_interval(hours => 1 + k),
                'month ' || m || ' message ' || k || repeat(' x', k % 30)
           FROM generate_series(0, 14) m, generate_series(0, 199) k
          WHERE date_trunc('month', now()) - make_interval(months => 14 - m) + make_interval(hours => 1 + k) < now();
         INSERT INTO messages SELECT 100000 + k, now() - make_interval(years => 3, days => k), 'ancient ' || k
           FROM generate_series(0, 199) k;
         CREATE TABLE messages_copy AS SELECT id, tableoid AS part FROM messages;",
    )
    .await;
}

/// Partitions by ranges of the key, one of them partitioned again by hash; the time column is
/// unrelated to the key, so due rows lie in every partition.
#[tokio::test(flavor = "multi_thread")]
async fn range_by_key_with_a_subpartitioned_range() {
    archive_and_restore(
        "part_key",
        "CREATE TABLE messages (id bigint NOT NULL PRIMARY KEY, created_at timestamptz NOT NULL, body text)
           PARTITION BY RANGE (id);
         CREATE TABLE messages_0 PARTITION OF messages FOR VALUES FROM (0) TO (1000);
         CREATE TABLE messages_1 PARTITION OF messages FOR VALUES FROM (1000) TO (2000);
         CREATE TABLE messages_2 PARTITION OF messages FOR VALUES FROM (2000) TO (3000) PARTITION BY HASH (id);
         CREATE TABLE messages_2a PARTITION OF messages_2 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE messages_2b PARTITION OF messages_2 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE messages_3 PARTITION OF messages FOR VALUES FROM (3000) TO (MAXVALUE);
         INSERT INTO messages SELECT i, now() - make_interval(days => (i * 37) % 400, secs => i), 'message ' || i
           FROM generate_series(0, 3999) i;
         CREATE TABLE messages_copy AS SELECT id, tableoid AS part FROM messages;",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hash() {
    archive_and_restore(
        "part_hash",
        "CREATE TABLE messages (id bigint NOT NULL PRIMARY KEY, created_at timestamptz NOT NULL, body text)
           PARTITION BY HASH (id);
         CREATE TABLE messages_h0 PARTITION OF messages FOR VALUES WITH (MODULUS 4, REMAINDER 0);
         CREATE TABLE messages_h1 PARTITION OF messages FOR VALUES WITH (MODULUS 4, REMAINDER 1);
         CREATE TABLE messages_h2 PARTITION OF messages FOR VALUES WITH (MODULUS 4, REMAINDER 2);
         CREATE TABLE messages_h3 PARTITION OF messages FOR VALUES WITH (MODULUS 4, REMAINDER 3);
         INSERT INTO messages SELECT i, now() - make_interval(days => 400 - i / 10), 'message ' || i || repeat('.', i % 20)
           FROM generate_series(1, 3000) i;
         CREATE TABLE messages_copy AS SELECT id, tableoid AS part FROM messages;",
    )
    .await;
}

/// A purge policy on a partitioned table deletes exactly the due rows of every partition.
#[tokio::test(flavor = "multi_thread")]
async fn purge() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("part_purge").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE messages (id bigint NOT NULL PRIMARY KEY, created_at timestamptz NOT NULL, body text)
           PARTITION BY HASH (id);
         CREATE TABLE messages_h0 PARTITION OF messages FOR VALUES WITH (MODULUS 3, REMAINDER 0);
         CREATE TABLE messages_h1 PARTITION OF messages FOR VALUES WITH (MODULUS 3, REMAINDER 1);
         CREATE TABLE messages_h2 PARTITION OF messages FOR VALUES WITH (MODULUS 3, REMAINDER 2);
         INSERT INTO messages SELECT i, now() - make_interval(days => (i * 37) % 400), 'message ' || i
           FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let kept = docs(&mut c, &format!("NOT ({DUE})")).await;
    let due = docs(&mut c, DUE).await.len();
    let server = TestServer::start(test_config(cluster.primary_url(&db), vec![], dir.path())).await.unwrap();
    let client = server.client().await;
    client
        .create_policy(&ArchivePolicy {
            name: "p".into(),
            table_name: "messages".into(),
            time_column: "created_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(180 * 86_400),
            batch_size: 97,
            mode: PolicyMode::Purge,
            ..Default::default()
        })
        .await
        .unwrap();
    let run = client.run_archive("p").await.unwrap();
    let run = wait(&client, &run.id).await;
    assert_eq!((run.kind, run.rows_done as usize), (RunKind::Purge, due));
    assert!(docs(&mut c, "true").await == kept, "exactly the rows that were not due are left");
    server.stop().await.unwrap();
}
