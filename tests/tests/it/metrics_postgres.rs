//! GetStorageMetrics on PostgreSQL, checked against the files on disk and known row counts.

use std::{path::Path, time::Duration};

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use strata_client::types::{Backend, NodeRole, RowCountSource};
use strata_tests::PgCluster;

use crate::support::{PgFixture, eventually};

#[derive(QueryableByName)]
struct Path1 {
    #[diesel(sql_type = Text)]
    path: String,
}

/// Bytes of a relation's files on disk: main fork plus free-space and visibility maps.
fn relation_file_bytes(rel_path: &str) -> i64 {
    let base = PgCluster::shared().primary_data_dir().join(rel_path);
    ["", "_fsm", "_vm"]
        .iter()
        .map(|suffix| {
            let p = format!("{}{suffix}", base.display());
            std::fs::metadata(Path::new(&p)).map_or(0, |m| m.len() as i64)
        })
        .sum()
}

async fn paths(f: &PgFixture, sql: &str) -> Vec<String> {
    let mut c = f.conn().await;
    diesel::sql_query(sql).load::<Path1>(&mut c).await.unwrap().into_iter().map(|p| p.path).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_files_on_disk_and_row_counts() {
    let f = PgFixture::new("metrics").await;
    // 5000 small rows, an index, and 20 rows large and random enough to be TOASTed out of line.
    f.sql(
        "CREATE TABLE events (id BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL, body TEXT);
         CREATE INDEX events_kind_idx ON events (kind);
         INSERT INTO events (kind, body) SELECT 'k' || (g % 7), repeat('x', 100) FROM generate_series(1, 5000) g;
         INSERT INTO events (kind, body)
              SELECT 'big', (SELECT string_agg(md5(random()::text || g || s), '') FROM generate_series(1, 300) s)
                FROM generate_series(1, 20) g;
         CREATE TABLE small_things (id INT PRIMARY KEY);
         INSERT INTO small_things SELECT generate_series(1, 10);
         DELETE FROM events WHERE id <= 100;
         ANALYZE events; ANALYZE small_things;
         SELECT count(*) FROM events;",
    )
    .await;
    // A CHECKPOINT flushes every page so the files on disk have their final sizes.
    f.sql("CHECKPOINT").await;

    let client = f.server.client().await;
    // Dead-row counts reach the statistics system when the deleting session reports (≤ 1 s later).
    let m = eventually("dead rows in statistics", Duration::from_secs(15), || {
        let client = client.clone();
        async move {
            let m = client.storage_metrics(None).await.unwrap();
            (m.table("events")?.dead_rows == Some(100)).then_some(m)
        }
    })
    .await;
    assert_eq!(m.backend, Backend::Postgres);
    assert_eq!(m.served_by, NodeRole::Primary);
    assert_eq!(m.database_name, f.db);

    let ev = m.table("events").unwrap();
    assert_eq!(ev.schema_name, "public");
    // ANALYZE samples a table this small completely, so the estimate is exact.
    assert_eq!(ev.estimated_rows, 4920);
    assert_eq!(ev.row_count_source, RowCountSource::Statistics);
    assert!(!ev.sizes_estimated);
    assert!(ev.seq_scans.unwrap() >= 1, "count(*) was a sequential scan");
    assert!(ev.last_analyze.is_some());

    let heap = paths(&f, "SELECT pg_relation_filepath('events') AS path").await;
    assert_eq!(ev.table_size_bytes, relation_file_bytes(&heap[0]));
    let idx =
        paths(&f, "SELECT pg_relation_filepath(indexrelid) AS path FROM pg_index WHERE indrelid = 'events'::regclass")
            .await;
    assert_eq!(idx.len(), 2);
    assert_eq!(ev.index_size_bytes, idx.iter().map(|p| relation_file_bytes(p)).sum::<i64>());
    let toast = paths(
        &f,
        "SELECT pg_relation_filepath(reltoastrelid) AS path FROM pg_class WHERE oid = 'events'::regclass
         UNION ALL
         SELECT pg_relation_filepath(indexrelid) FROM pg_index
          WHERE indrelid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'events'::regclass)",
    )
    .await;
    let toast_bytes: i64 = toast.iter().map(|p| relation_file_bytes(p)).sum();
    assert!(toast_bytes > 0, "the big rows were stored out of line");
    assert_eq!(ev.toast_size_bytes, toast_bytes);
    assert_eq!(ev.total_size_bytes, ev.table_size_bytes + ev.index_size_bytes + ev.toast_size_bytes);
    // 5000 rows of ≥ 100 bytes each must occupy at least that much heap.
    assert!(ev.table_size_bytes >= 500_000, "{}", ev.table_size_bytes);

    let small = m.table("small_things").unwrap();
    assert_eq!(small.estimated_rows, 10);
    assert_eq!(small.toast_size_bytes, 0);
    // Largest first.
    let pos = |n: &str| m.tables.iter().position(|t| t.table_name == n).unwrap();
    assert!(pos("events") < pos("small_things"));
    // strata's own catalog is not an application table.
    assert!(m.tables.iter().all(|t| t.schema_name != "strata"));

    // The database size is the sum of every file in its directory.
    let dir: Vec<String> =
        paths(&f, "SELECT 'base/' || oid::text AS path FROM pg_database WHERE datname = current_database()").await;
    let on_disk: i64 = std::fs::read_dir(PgCluster::shared().primary_data_dir().join(&dir[0]))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len() as i64)
        .sum();
    assert_eq!(m.database_size_bytes, on_disk);

    // Pools: the primary and the replica, with the configured size.
    assert_eq!(m.pools.len(), 2);
    assert_eq!(m.pools[0].name, "primary");
    assert_eq!(m.pools[0].max_size, 8);
    assert!(m.pools[0].gets_direct + m.pools[0].gets_waited >= 1);
    assert_eq!(m.replicas.len(), 1);

    // Prefix filter.
    let only = client.storage_metrics(Some("small_")).await.unwrap();
    assert_eq!(only.tables.iter().map(|t| t.table_name.as_str()).collect::<Vec<_>>(), ["small_things"]);
    f.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn never_analyzed_table_reports_no_statistics() {
    let f = PgFixture::new("fresh").await;
    f.sql("CREATE TABLE fresh (id INT)").await;
    let m = f.server.client().await.storage_metrics(Some("fresh")).await.unwrap();
    let t = m.table("fresh").unwrap();
    assert_eq!(t.row_count_source, RowCountSource::None);
    assert_eq!(t.estimated_rows, 0);
    assert_eq!(t.total_size_bytes, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_prefix_is_rejected() {
    let f = PgFixture::new("prefix").await;
    let client = f.server.client().await;
    let err = client.storage_metrics(Some("bad\u{0}name")).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    let err = client.storage_metrics(Some(&"x".repeat(500))).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
    // A quote in a prefix is data, not SQL.
    let m = client.storage_metrics(Some("x' OR '1'='1")).await.unwrap();
    assert!(m.tables.is_empty());
}
