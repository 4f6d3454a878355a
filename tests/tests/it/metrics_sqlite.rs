//! GetStorageMetrics on the embedded SQLite default, checked against the file and known rows.

use diesel::RunQueryDsl;
use strata_client::types::{Backend, NodeRole, RowCountSource};
use strata_tests::TestServer;

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_metrics_match_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let path = dir.path().join("strata.db");
    let mut c = crate::support::sqlite_sync(&path);
    diesel::sql_query("CREATE TABLE messages (id INTEGER PRIMARY KEY, room TEXT NOT NULL, body TEXT NOT NULL)")
        .execute(&mut c)
        .unwrap();
    diesel::sql_query("CREATE INDEX messages_room ON messages (room)").execute(&mut c).unwrap();
    diesel::sql_query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO messages (room, body) SELECT 'room' || (i % 10), printf('%0200d', i) FROM n",
    )
    .execute(&mut c)
    .unwrap();
    diesel::sql_query("CREATE TABLE tags (name TEXT)").execute(&mut c).unwrap();
    diesel::sql_query("INSERT INTO tags VALUES ('a'), ('b')").execute(&mut c).unwrap();
    // Fold the WAL into the main file so its length is the database size.
    diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut c).unwrap();

    let m = server.client().await.storage_metrics(None).await.unwrap();
    assert_eq!(m.backend, Backend::Sqlite);
    assert_eq!(m.served_by, NodeRole::Primary);
    assert_eq!(m.database_name, "strata.db");
    assert_eq!(m.database_size_bytes, std::fs::metadata(&path).unwrap().len() as i64);
    let msgs = m.table("messages").unwrap();
    assert_eq!(msgs.estimated_rows, 3000);
    assert_eq!(msgs.row_count_source, RowCountSource::BtreeCells);
    assert!(!msgs.sizes_estimated);
    // 3000 bodies of 200 bytes live in the table b-tree; the room index is smaller than the table.
    assert!(msgs.table_size_bytes >= 600_000, "{}", msgs.table_size_bytes);
    assert!(msgs.index_size_bytes > 0 && msgs.index_size_bytes < msgs.table_size_bytes);
    assert_eq!(msgs.toast_size_bytes, 0);
    assert_eq!(msgs.dead_rows, None);
    assert_eq!(m.table("tags").unwrap().estimated_rows, 2);
    // Every page of the file belongs to some b-tree or the freelist: application tables fit inside.
    let app: i64 = m.tables.iter().map(|t| t.total_size_bytes).sum();
    assert!(app + m.free_bytes.unwrap() <= m.database_size_bytes);
    // Catalog tables are strata's own and never listed.
    assert!(m.tables.iter().all(|t| !t.table_name.starts_with("strata_")));
    assert!(!m.notes.is_empty());
    server.stop().await.unwrap();
}
