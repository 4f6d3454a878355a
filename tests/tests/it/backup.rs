//! Backups: pg_dump streamed into the S3 server and restorable; SQLite snapshots that open; one
//! backup at a time; rotation after a checked backup.

use std::time::Duration;

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::backup::BackupState;
use strata_server::service::backup::Retention;
use strata_tests::{PgCluster, S3Server, TestServer, pg::bindir, server::test_config};
use tonic::Code;

#[derive(QueryableByName)]
struct Digest {
    #[diesel(sql_type = Text)]
    d: String,
}

const DIGEST: &str = "SELECT md5(string_agg(row_to_json(t)::text, E'\\n' ORDER BY id)) AS d FROM orders t";

#[tokio::test(flavor = "multi_thread")]
async fn postgres_dump_streams_to_s3_restores_and_rotates() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("backup").await.unwrap();
    let s3 = S3Server::start("strata-backups").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, placed timestamptz, note text, amount numeric, meta jsonb);
         INSERT INTO orders SELECT i, now() - i * interval '1 hour', 'order ' || i || ' ✓', i * 1.25, jsonb_build_object('i', i)
           FROM generate_series(1, 5000) i;",
    )
    .await
    .unwrap();
    let before = diesel::sql_query(DIGEST).get_result::<Digest>(&mut c).await.unwrap().d;
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.object_store_url = s3.url();
    config.pg_bin_dir = Some(bindir());
    config.backup_retention = Retention { daily: 1, weekly: 1, monthly: 1 };
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;

    // Two at once: one runs, the other is refused.
    let (a, b) = tokio::join!(client.run_backup(), client.run_backup());
    let first = match (a, b) {
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => {
            assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
            x
        }
        other => panic!("expected exactly one backup to start: {other:?}"),
    };
    let first = client.wait_backup(&first.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(first.state, BackupState::Succeeded, "{first:?}");
    assert_eq!(first.format, "pg_dump");
    assert!(
        first.verification.starts_with("pg_restore --list:") && !first.verification.ends_with(" 0 entries"),
        "{first:?}"
    );
    let path = s3.root.join("strata-backups").join(&first.object_key);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as i64, first.size_bytes);
    assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), first.sha256);
    assert_eq!(&bytes[..5], b"PGDMP", "custom-format dump");

    // The dump restores into an empty database with the same rows.
    let copy = cluster.create_database("restored").await.unwrap();
    let out = std::process::Command::new(bindir().join("pg_restore"))
        .args(["--no-owner", "--dbname", &cluster.primary_url(&copy)])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut r = cluster.connect(&copy).await.unwrap();
    assert_eq!(diesel::sql_query(DIGEST).get_result::<Digest>(&mut r).await.unwrap().d, before);

    // Rotation (1 day / 1 week / 1 month): after more backups today only the newest stays.
    let mut last = first.clone();
    for _ in 0..2 {
        let b = client.run_backup().await.unwrap();
        last = client.wait_backup(&b.id, Duration::from_millis(50)).await.unwrap();
        assert_eq!(last.state, BackupState::Succeeded);
    }
    // Rotation follows the checked backup's record (moments after it reads Succeeded).
    let listed = crate::support::eventually("rotation", Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.list_backups(100).await.ok().filter(|l| l.len() == 1) }
    })
    .await;
    assert_eq!(listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), vec![last.id.as_str()]);
    assert!(!path.exists(), "rotated-out backup's object is gone");
    assert!(s3.root.join("strata-backups").join(&last.object_key).exists());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_snapshot_is_checked_and_opens() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let mut c = crate::support::sqlite(&dir.path().join("strata.db")).await;
    c.batch_execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT, data BLOB);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
         INSERT INTO orders SELECT i, 'order ' || i, randomblob(64) FROM s;",
    )
    .await
    .unwrap();
    let sql =
        "SELECT group_concat(id || ':' || note || ':' || hex(data), ',') AS d FROM (SELECT * FROM orders ORDER BY id)";
    let before = diesel::sql_query(sql).get_result::<Digest>(&mut c).await.unwrap().d;
    let client = server.client().await;
    let b = client.run_backup().await.unwrap();
    let b = client.wait_backup(&b.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(
        (b.state, b.format.as_str(), b.verification.as_str()),
        (BackupState::Succeeded, "sqlite", "integrity_check: ok")
    );
    let path = dir.path().join("objects").join(&b.object_key);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as i64, b.size_bytes);
    let mut copy = crate::support::sqlite(&path).await;
    assert_eq!(diesel::sql_query(sql).get_result::<Digest>(&mut copy).await.unwrap().d, before);
    // No snapshot or check copy is left beside the database.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".strata-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.stop().await.unwrap();
}

/// A `pg_dump` older than the server refuses to dump it: the backup fails before it runs, saying
/// which versions meet and what to install, and stores nothing. (The image has only PostgreSQL 15
/// tools, so the older ones are scripts that answer `--version` as pg_dump 9.6 and pg_restore 14
/// would, and fail the test if run for anything else.)
#[tokio::test(flavor = "multi_thread")]
async fn tools_older_than_the_server_fail_the_backup_clearly() {
    use std::os::unix::fs::PermissionsExt as _;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("old_tools").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-bin");
    std::fs::create_dir(&old).unwrap();
    for (tool, version) in [("pg_dump", "9.6.24"), ("pg_restore", "14.11 (Debian 14.11-1)")] {
        let script = old.join(tool);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo '{tool} (PostgreSQL) {version}'; exit 0; }}\necho 'ran for a backup' >&2; exit 3\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.pg_bin_dir = Some(old.clone());
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let b = client.run_backup().await.unwrap();
    let b = client.wait_backup(&b.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(b.state, BackupState::Failed, "{b:?}");
    let error = b.error.clone();
    assert!(error.contains("pg_dump is version 9") && error.contains("older than the PostgreSQL 15 server"), "{error}");
    assert!(!error.contains("ran for a backup"), "{error}");
    // Only pg_restore old: named as such.
    std::fs::remove_file(old.join("pg_dump")).unwrap();
    std::os::unix::fs::symlink(bindir().join("pg_dump"), old.join("pg_dump")).unwrap();
    let b = client.run_backup().await.unwrap();
    let b = client.wait_backup(&b.id, Duration::from_millis(50)).await.unwrap();
    let error = b.error.clone();
    assert!(error.contains("pg_restore is version 14"), "{b:?}");
    assert_eq!(b.size_bytes, 0, "{b:?}");
    let objects = dir.path().join("backups");
    assert!(!objects.exists() || walk(&objects) == 0, "nothing stored under {}", objects.display());
    server.stop().await.unwrap();
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() { walk(&e.path()) } else { 1 }
        })
        .sum()
}
