//! Helpers shared by the integration tests.

use std::{future::Future, time::Duration};

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use strata_tests::{PgCluster, TestServer};

/// A server on a fresh database of the shared cluster, with the database name and a temp dir.
pub(crate) struct PgFixture {
    pub(crate) server: TestServer,
    pub(crate) db: String,
    pub(crate) _dir: tempfile::TempDir,
}

impl PgFixture {
    pub(crate) async fn new(prefix: &str) -> Self {
        let cluster = PgCluster::shared();
        let db = cluster.create_database(prefix).await.expect("create database");
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::postgres(cluster, &db, dir.path()).await.expect("start server");
        Self { server, db, _dir: dir }
    }

    pub(crate) async fn sql(&self, sql: &str) {
        let mut c = PgCluster::shared().connect(&self.db).await.unwrap();
        c.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub(crate) async fn conn(&self) -> AsyncPgConnection {
        PgCluster::shared().connect(&self.db).await.unwrap()
    }
}

/// Polls `f` until it returns Some, at most `limit`; panics with `what` otherwise.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
