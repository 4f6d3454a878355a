//! An exhausted pool answers UNAVAILABLE after the acquire timeout instead of hanging.

use std::time::{Duration, Instant};

use diesel::RunQueryDsl as _;
use diesel_async::SimpleAsyncConnection;
use strata_tests::{PgCluster, TestServer, server::test_config};

#[tokio::test(flavor = "multi_thread")]
async fn postgres_pool_exhaustion_is_unavailable() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("pool").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.pool_max_size = 1;
    config.pool_acquire_timeout = Duration::from_secs(1);
    // The metrics loop reads strata.snapshots every 5 s: behind the lock below it would hold the
    // only connection itself, and the write this test blocks could not even start.
    config.metrics = false;
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;

    // Hold a lock the snapshot insert needs, so RecordSnapshot occupies the only connection.
    let mut locker = cluster.connect(&db).await.unwrap();
    locker.batch_execute("BEGIN; LOCK TABLE strata.snapshots IN ACCESS EXCLUSIVE MODE;").await.unwrap();
    let writer = {
        let c = client.clone();
        tokio::spawn(async move { c.record_snapshot().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), client.storage_metrics(None))
        .await
        .expect("must not hang")
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert!(err.to_string().contains("primary"), "{err}");
    eprintln!("UNAVAILABLE after {:?}", started.elapsed());
    // A saturated pool is not a down database: health stays SERVING.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(client.health("").await.unwrap(), strata_client::HealthStatus::Serving);

    // Release: the blocked write completes and the pool recovers.
    locker.batch_execute("COMMIT").await.unwrap();
    writer.await.unwrap().expect("the blocked write completes");
    let m = client.storage_metrics(None).await.unwrap();
    assert!(m.pools[0].gets_timed_out >= 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_pool_exhaustion_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.db");
    let mut config = test_config(format!("sqlite://{}", path.display()), vec![], dir.path());
    config.pool_max_size = 1;
    config.pool_acquire_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;

    // Our write lock makes RecordSnapshot wait (busy timeout) while holding the only connection.
    let mut c = crate::support::sqlite_sync(&path);
    diesel::sql_query("BEGIN IMMEDIATE").execute(&mut c).unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { client.record_snapshot().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = tokio::time::timeout(Duration::from_secs(20), client.storage_metrics(None))
        .await
        .expect("must not hang")
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert_eq!(client.health("").await.unwrap(), strata_client::HealthStatus::Serving);
    diesel::sql_query("COMMIT").execute(&mut c).unwrap();
    writer.await.unwrap().expect("the blocked write completes once the lock is released");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_sessions_are_read_only_and_statements_time_out() {
    use diesel::{QueryableByName, sql_types::Text};
    use strata_server::db::{Conn, Db, DbSettings, Role};

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        v: String,
    }

    let cluster = PgCluster::shared();
    let db_name = cluster.create_database("readonly").await.unwrap();
    let db = Db::connect(DbSettings {
        url: cluster.primary_url(&db_name),
        replica_urls: vec![cluster.replica_url(&db_name)],
        pool_max_size: 2,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(2),
        max_replica_lag: Duration::from_secs(30),
        metrics: Default::default(),
    })
    .await
    .unwrap();
    db.wait_ready(Duration::from_secs(10)).await.unwrap();
    let (mut conn, role) = db.read().await.unwrap();
    assert_eq!(role, Role::Replica);
    let Conn::Pg(c) = &mut conn else { panic!("postgres") };
    let q = diesel::sql_query("SELECT current_setting('default_transaction_read_only') AS v");
    let s: Setting = diesel_async::RunQueryDsl::get_result(q, &mut **c).await.unwrap();
    assert_eq!(s.v, "on");
    let Conn::Pg(c) = &mut db.write().await.unwrap() else { panic!("postgres") };
    let q = diesel::sql_query("SELECT current_setting('statement_timeout') AS v");
    let s: Setting = diesel_async::RunQueryDsl::get_result(q, &mut **c).await.unwrap();
    assert_eq!(s.v, "500ms");

    // Through the API: metrics do not wait for a locked table (sizes become estimates), and a
    // write stuck behind a lock ends with DEADLINE_EXCEEDED.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(cluster.primary_url(&db_name), vec![], dir.path());
    config.statement_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let mut locker = cluster.connect(&db_name).await.unwrap();
    locker
        .batch_execute("CREATE TABLE busy (id INT); INSERT INTO busy SELECT generate_series(1, 1000); ANALYZE busy;")
        .await
        .unwrap();
    locker
        .batch_execute(
            "BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE; LOCK TABLE strata.snapshots IN ACCESS EXCLUSIVE MODE;",
        )
        .await
        .unwrap();
    let m = client.storage_metrics(None).await.expect("metrics answer despite the lock");
    let busy = m.table("busy").unwrap();
    assert!(busy.sizes_estimated && busy.table_size_bytes > 0 && busy.estimated_rows == 1000, "{busy:?}");
    assert!(m.notes.iter().any(|n| n.contains("locked")));
    let err = client.record_snapshot().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::DeadlineExceeded), "{err}");
    locker.batch_execute("COMMIT").await.unwrap();
    let m = client.storage_metrics(None).await.unwrap();
    assert!(!m.table("busy").unwrap().sizes_estimated);
    client.record_snapshot().await.unwrap();
    server.stop().await.unwrap();
}
