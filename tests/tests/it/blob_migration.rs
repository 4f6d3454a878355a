//! Moving base64 and bytea blobs out of a PostgreSQL table, interrupted mid-run and resumed.

use std::time::Duration;

use base64::Engine as _;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text},
};
use diesel_async::RunQueryDsl;
use strata_client::types::BlobMigrationSpec;
use strata_tests::{PgCluster, TestServer};
use tonic::Code;

use crate::{objects::pattern, support::eventually};

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    b64: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    b64_ref: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    raw_ref: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    raw_len: Option<i64>,
}

fn blob(i: i64) -> Option<Vec<u8>> {
    // Some rows have no blob; some share content (deduplicated into one object).
    match i % 10 {
        0 => None,
        1 => Some(b"same content".to_vec()),
        _ => Some(pattern((i as usize * 997) % 40_000, i as u64)),
    }
}

/// Every row with a blob points at files whose bytes equal the original, and its blob is cleared.
async fn assert_migrated(client: &strata_client::Client, rows: Vec<Row>) {
    for r in rows {
        match blob(r.id) {
            None => assert!(r.b64_ref.is_none() && r.raw_ref.is_none()),
            Some(original) => {
                assert!(r.b64.is_none() && r.raw_len.is_none(), "row {} cleared", r.id);
                for file in [r.b64_ref.unwrap(), r.raw_ref.unwrap()] {
                    assert_eq!(client.download_bytes(&file, 0, 0).await.unwrap(), original, "row {}", r.id);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_and_bytea_survive_interruption() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("blobmig").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    diesel::sql_query("CREATE TABLE docs (id BIGINT PRIMARY KEY, b64 TEXT, b64_ref TEXT, raw BYTEA, raw_ref TEXT)")
        .execute(&mut c)
        .await
        .unwrap();
    let n = 150i64;
    for i in 1..=n {
        let b = blob(i);
        diesel::sql_query("INSERT INTO docs (id, b64, raw) VALUES ($1, $2, $3)")
            .bind::<BigInt, _>(i)
            .bind::<Nullable<Text>, _>(b.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(b)))
            .bind::<Nullable<diesel::sql_types::Binary>, _>(b.clone())
            .execute(&mut c)
            .await
            .unwrap();
    }
    let with_blob = (1..=n).filter(|i| blob(*i).is_some()).count() as i64;

    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;
    let spec = |base64: bool| BlobMigrationSpec {
        table_name: "docs".into(),
        key_column: "id".into(),
        blob_column: if base64 { "b64" } else { "raw" }.into(),
        reference_column: if base64 { "b64_ref" } else { "raw_ref" }.into(),
        base64,
        batch_size: 7,
        owner: "migration".into(),
        ..Default::default()
    };
    // Bad targets change nothing.
    for bad in [
        BlobMigrationSpec { table_name: "docs; DROP TABLE docs".into(), ..spec(true) },
        BlobMigrationSpec { blob_column: "nope".into(), ..spec(true) },
        BlobMigrationSpec { blob_column: "raw".into(), ..spec(true) },
        BlobMigrationSpec { reference_column: "id".into(), ..spec(true) },
    ] {
        let e = client.start_blob_migration(&bad).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    }
    // Dry run: counts only.
    let dry = client.start_blob_migration(&BlobMigrationSpec { dry_run: true, ..spec(true) }).await.unwrap();
    assert!(dry.migration.is_none());
    assert_eq!(dry.pending_rows, with_blob);
    let expected_b64_bytes: i64 =
        (1..=n).filter_map(blob).map(|b| base64::engine::general_purpose::STANDARD.encode(b).len() as i64).sum();
    assert_eq!(dry.pending_bytes, expected_b64_bytes);

    // Start, then stop the server mid-run.
    let started = client.start_blob_migration(&spec(true)).await.unwrap();
    let id = started.migration.unwrap().id;
    eventually("some rows migrated", Duration::from_secs(30), || {
        let (c, id) = (client.clone(), id.clone());
        async move { c.blob_migration(&id).await.ok().filter(|m| m.rows_done >= 20) }
    })
    .await;
    server.stop().await.unwrap();
    let partial: i64 = {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        diesel::sql_query("SELECT count(*)::int8 AS n FROM docs WHERE b64_ref IS NOT NULL")
            .get_result::<N>(&mut c)
            .await
            .unwrap()
            .n
    };
    assert!(partial >= 20 && partial < with_blob, "interrupted mid-run: {partial}");

    // A new server resumes it by itself; then the bytea column.
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;
    let done = finished(&client, &id, "the resumed migration").await;
    assert_eq!((done.state.as_str(), done.rows_done), ("done", with_blob), "{:?}", done.error);
    let raw = client.start_blob_migration(&spec(false)).await.unwrap().migration.unwrap().id;
    let done = finished(&client, &raw, "the bytea migration").await;
    assert_eq!((done.state.as_str(), done.rows_done), ("done", with_blob), "{:?}", done.error);

    // Every row's bytes equal the original, exactly once, and the blob columns are cleared.
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id, b64, b64_ref, raw_ref, octet_length(raw)::int8 AS raw_len FROM docs ORDER BY id")
            .load(&mut c)
            .await
            .unwrap();
    assert_eq!(rows.len(), n as usize);
    assert_migrated(&client, rows).await;
    let files = client
        .list_files(&strata_client::types::FileQuery {
            owner: Some("migration".into()),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(files.files.len() as i64, 2 * with_blob, "one file per migrated value, none twice");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_base64_and_blob_columns_survive_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    diesel::sql_query("CREATE TABLE docs (id INTEGER PRIMARY KEY, b64 TEXT, b64_ref TEXT, raw BLOB, raw_ref TEXT)")
        .execute(&mut c)
        .await
        .unwrap();
    let n = 90i64;
    for i in 1..=n {
        let b = blob(i);
        diesel::sql_query("INSERT INTO docs (id, b64, raw) VALUES (?, ?, ?)")
            .bind::<BigInt, _>(i)
            .bind::<Nullable<Text>, _>(b.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(b)))
            .bind::<Nullable<diesel::sql_types::Binary>, _>(b.clone())
            .execute(&mut c)
            .await
            .unwrap();
    }
    let with_blob = (1..=n).filter(|i| blob(*i).is_some()).count() as i64;
    let config =
        || strata_tests::server::test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config()).await.unwrap();
    let client = server.client().await;
    let spec = |base64: bool| BlobMigrationSpec {
        table_name: "docs".into(),
        key_column: "id".into(),
        blob_column: if base64 { "b64" } else { "raw" }.into(),
        reference_column: if base64 { "b64_ref" } else { "raw_ref" }.into(),
        base64,
        batch_size: 3,
        owner: "migration".into(),
        ..Default::default()
    };
    for bad in [
        BlobMigrationSpec { table_name: "docs; DROP TABLE docs".into(), ..spec(true) },
        BlobMigrationSpec { blob_column: "raw".into(), ..spec(true) },
        BlobMigrationSpec { blob_column: "b64".into(), ..spec(false) },
    ] {
        assert_eq!(client.start_blob_migration(&bad).await.unwrap_err().code(), Some(Code::InvalidArgument));
    }
    let dry = client.start_blob_migration(&BlobMigrationSpec { dry_run: true, ..spec(false) }).await.unwrap();
    assert_eq!(dry.pending_rows, with_blob);
    assert_eq!(dry.pending_bytes, (1..=n).filter_map(blob).map(|b| b.len() as i64).sum::<i64>());

    let id = client.start_blob_migration(&spec(true)).await.unwrap().migration.unwrap().id;
    eventually("some rows migrated", Duration::from_secs(30), || {
        let (c, id) = (client.clone(), id.clone());
        async move { c.blob_migration(&id).await.ok().filter(|m| m.rows_done >= 10) }
    })
    .await;
    server.stop().await.unwrap();
    // Resumed by the next server; then the BLOB column.
    let server = TestServer::start(config()).await.unwrap();
    let client = server.client().await;
    let done = finished(&client, &id, "the resumed migration").await;
    assert_eq!((done.state.as_str(), done.rows_done), ("done", with_blob), "{:?}", done.error);
    let raw = client.start_blob_migration(&spec(false)).await.unwrap().migration.unwrap().id;
    let done = finished(&client, &raw, "the BLOB migration").await;
    assert_eq!((done.state.as_str(), done.rows_done), ("done", with_blob), "{:?}", done.error);
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id, b64, b64_ref, raw_ref, length(raw) AS raw_len FROM docs ORDER BY id")
            .load(&mut c)
            .await
            .unwrap();
    assert_migrated(&client, rows).await;
    server.stop().await.unwrap();
}

/// Waits (at most a minute) until a migration is no longer running.
async fn finished(client: &strata_client::Client, id: &str, what: &str) -> strata_client::types::BlobMigration {
    tokio::time::timeout(Duration::from_secs(60), client.wait_blob_migration(id, Duration::from_millis(100)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
}
