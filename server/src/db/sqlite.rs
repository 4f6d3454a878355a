//! SQLite connections: where their statements run, and how each kind is set up.
//!
//! diesel's `SqliteConnection` is synchronous; diesel-async wraps it and hands every statement to a
//! runtime. Pooled connections for writes and ordinary reads run them on tokio's blocking threads,
//! so a long statement never stalls the workers. Point readers ([`super::Db::point_read`]) run them
//! inline on the calling worker: a lookup by key takes microseconds, several times less than the
//! hand-off to a blocking thread and back, which was most of the cost of a `StatFile` on SQLite.

use std::{error::Error as StdError, pin::Pin, time::Duration};

use diesel::{Connection as _, ConnectionError, connection::SimpleConnection as _, sqlite::SqliteConnection};
use diesel_async::{
    SimpleAsyncConnection as _, pooled_connection::SetupCallback, sync_connection_wrapper::SpawnBlocking,
};
use futures::{FutureExt as _, TryFutureExt as _, future::BoxFuture};

/// A pooled SQLite connection.
pub type SqliteConn = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<SqliteConnection, Runtime>;

/// SQLite waits this long for a competing writer's lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a connection runs its statements.
pub enum Runtime {
    /// On tokio's blocking threads.
    Blocking(tokio::runtime::Handle),
    /// On the thread that polls the query: for point readers, whose statements are short and
    /// never wait for a lock (busy timeout 0) — and for a connection opened outside any tokio
    /// runtime, whose caller blocks on its futures anyway.
    Inline,
}

impl SpawnBlocking for Runtime {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn StdError + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        match self {
            Runtime::Inline => futures::future::ready(Ok(task())).boxed(),
            Runtime::Blocking(handle) => {
                Finished { handle: handle.clone(), future: handle.spawn_blocking(task) }.map_err(Box::from).boxed()
            }
        }
    }

    fn get_runtime() -> Self {
        tokio::runtime::Handle::try_current().map_or(Runtime::Inline, Runtime::Blocking)
    }
}

/// A statement on a blocking thread that, if its caller gives up, still finishes before the
/// connection is used again (as diesel-async's own runtime does): a dropped query must not leave a
/// statement running on a connection the pool hands to the next caller.
struct Finished<R> {
    handle: tokio::runtime::Handle,
    future: tokio::task::JoinHandle<R>,
}

impl<R> std::future::Future for Finished<R> {
    type Output = Result<R, tokio::task::JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.get_mut().future).poll(cx)
    }
}

impl<R> Drop for Finished<R> {
    fn drop(&mut self) {
        if !self.future.is_finished() {
            let future = &mut self.future;
            tokio::task::block_in_place(|| {
                let _ = self.handle.block_on(future);
            });
        }
    }
}

/// Sets up a pooled connection for writes and ordinary reads.
pub(super) fn setup() -> SetupCallback<SqliteConn> {
    Box::new(|path| {
        let path = path.to_owned();
        async move {
            let mut conn = <SqliteConn as diesel_async::AsyncConnection>::establish(&path).await?;
            // One statement per call, busy_timeout first (as Diesel's docs advise): the other pragmas
            // may need a lock that a writer holds right now. WAL lets readers proceed while a writer
            // commits; busy_timeout makes concurrent writers wait instead of failing at once.
            let busy = format!("PRAGMA busy_timeout = {};", BUSY_TIMEOUT.as_millis());
            for pragma in [
                busy.as_str(),
                "PRAGMA journal_mode = WAL;",
                "PRAGMA synchronous = NORMAL;",
                "PRAGMA foreign_keys = ON;",
            ] {
                conn.batch_execute(pragma).await.map_err(ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(conn)
        }
        .boxed()
    })
}

/// Sets up a point reader: opened and made ready on a blocking thread (opening may wait for a WAL
/// recovery by another connection), then read-only and never waiting for a lock, its statements
/// run inline.
pub(super) fn reader_setup() -> SetupCallback<SqliteConn> {
    Box::new(|path| {
        let path = path.to_owned();
        async move {
            let open = move || {
                let mut conn = SqliteConnection::establish(&path)?;
                let busy = format!("PRAGMA busy_timeout = {};", BUSY_TIMEOUT.as_millis());
                // The first read sees the WAL index: any recovery or clean-up by another
                // connection is waited for here, on this blocking thread, not by a worker later.
                for sql in [busy.as_str(), "PRAGMA query_only = ON;", "SELECT count(*) FROM sqlite_master;"] {
                    conn.batch_execute(sql).map_err(ConnectionError::CouldntSetupConfiguration)?;
                }
                // From now on a lock is never waited for: a busy answer sends the read back to the
                // pooled path, which waits on a blocking thread.
                conn.batch_execute("PRAGMA busy_timeout = 0;").map_err(ConnectionError::CouldntSetupConfiguration)?;
                Ok::<_, ConnectionError>(conn)
            };
            let conn = tokio::task::spawn_blocking(open)
                .await
                .map_err(|e| ConnectionError::BadConnection(format!("opening a reader failed: {e}")))??;
            Ok(SqliteConn::with_runtime(conn, Runtime::Inline))
        }
        .boxed()
    })
}

#[cfg(test)]
mod tests {
    use diesel::{Connection as _, RunQueryDsl as _, sql_types::Integer};

    #[derive(diesel::QueryableByName)]
    struct Used {
        #[diesel(sql_type = Integer)]
        used: i32,
    }

    /// The workspace's `.cargo/config.toml` builds the bundled SQLite with SQLITE_ENABLE_QPSG; a
    /// build without it re-prepares every statement with a LIMIT on each call.
    #[test]
    fn the_bundled_sqlite_keeps_its_plans() {
        let mut c = diesel::SqliteConnection::establish(":memory:").unwrap();
        let q = diesel::sql_query("SELECT sqlite_compileoption_used('SQLITE_ENABLE_QPSG') AS used");
        assert_eq!(
            q.get_result::<Used>(&mut c).unwrap().used,
            1,
            "build strata inside its workspace (.cargo/config.toml)"
        );
    }
}
