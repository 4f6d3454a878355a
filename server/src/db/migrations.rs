//! Embedded migrations. PostgreSQL keeps Diesel's bookkeeping table inside the `strata` schema;
//! SQLite keeps it in `strata_schema_migrations`: neither touches the application's namespace.

use diesel::{
    Connection, ExpressionMethods as _, QueryDsl as _, RunQueryDsl as _,
    migration::{Migration, MigrationVersion},
    sqlite::{Sqlite, SqliteConnection},
};
use diesel_async::SimpleAsyncConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{Error, Result};

const POSTGRES: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The catalog compatibility level this strata understands. The catalog records the lowest level
/// that may run against it (`catalog_info.compat_level`); only a contracting migration (a drop, a
/// rename, a column whose meaning changes) raises it, together with this constant. Expanding
/// migrations (new tables, nullable or defaulted columns) leave it alone, so during a rolling
/// upgrade the previous version keeps running against the upgraded catalog. See
/// docs/operations.md ("Upgrades").
pub const CATALOG_LEVEL: i64 = 1;

/// Refuses a catalog whose compatibility level is above [`CATALOG_LEVEL`].
pub(crate) fn check_level(level: i64) -> Result<()> {
    if level > CATALOG_LEVEL {
        return Err(Error::Migration(format!(
            "the catalog is at compatibility level {level}, newer than this strata understands (level \
             {CATALOG_LEVEL}): a newer strata upgraded it with a contracting migration; run that version or newer"
        )));
    }
    Ok(())
}

/// Runs pending PostgreSQL migrations on a dedicated connection (not a pooled one, whose
/// `search_path` must stay the application's). Returns how many ran.
pub(crate) async fn run_postgres(url: &str) -> Result<usize> {
    let mut conn = async { super::pg_connect::PgTarget::parse(url)?.connect().await }
        .await
        .map_err(|e| Error::Connect { node: "primary".into(), message: e.to_string() })?;
    // A session-level advisory lock serialises strata instances that start at the same time (it is
    // released when this connection closes); taken first, because even `CREATE SCHEMA IF NOT
    // EXISTS` run by two sessions at once fails one of them on pg_namespace's unique index. The
    // schema must exist before Diesel creates its bookkeeping table in it.
    conn.batch_execute("SELECT pg_advisory_lock(7365626174617374)")
        .await
        .map_err(|e| Error::Migration(e.to_string()))?;
    conn.batch_execute("CREATE SCHEMA IF NOT EXISTS strata; SET search_path TO strata;")
        .await
        .map_err(|e| Error::Migration(e.to_string()))?;
    let ran = tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let ran = harness.run_pending_migrations(POSTGRES).map(|v| v.len());
        // Closing the connection releases the advisory lock.
        drop(harness);
        ran
    })
    .await
    .map_err(|e| Error::Migration(e.to_string()))?
    .map_err(|e| Error::Migration(e.to_string()))?;
    Ok(ran)
}

/// Runs pending SQLite migrations. Returns how many ran.
pub(crate) async fn run_sqlite(path: &str) -> Result<usize> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = SqliteConnection::establish(&path)
            .map_err(|e| Error::Connect { node: "primary".into(), message: e.to_string() })?;
        // WAL is a property of the file: switch it once here, at start-up. A pooled connection
        // switching it later would need an exclusive lock, which an application's open write
        // transaction denies at once (no busy wait for journal-mode changes).
        for pragma in ["PRAGMA busy_timeout = 5000", "PRAGMA journal_mode = WAL"] {
            diesel::sql_query(pragma).execute(&mut conn).map_err(|e| Error::Migration(format!("{pragma}: {e}")))?;
        }
        let mut harness = PrefixedSqliteHarness(&mut conn);
        harness.run_pending_migrations(SQLITE).map(|v| v.len()).map_err(|e| Error::Migration(e.to_string()))
    })
    .await
    .map_err(|e| Error::Migration(e.to_string()))?
}

diesel::table! {
    strata_schema_migrations (version) {
        version -> Text,
        run_on -> Timestamp,
    }
}

/// Diesel's migration harness, keeping its bookkeeping in `strata_schema_migrations`.
struct PrefixedSqliteHarness<'a>(&'a mut SqliteConnection);

impl PrefixedSqliteHarness<'_> {
    fn ensure_table(&mut self) -> diesel::QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS strata_schema_migrations (
                version VARCHAR(50) PRIMARY KEY NOT NULL,
                run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        )
        .execute(self.0)
        .map(|_| ())
    }
}

impl MigrationHarness<Sqlite> for PrefixedSqliteHarness<'_> {
    fn run_migration(&mut self, migration: &dyn Migration<Sqlite>) -> Result<MigrationVersion<'static>, BoxError> {
        self.ensure_table()?;
        let version = migration.name().version().as_owned();
        // DDL is transactional on SQLite: the migration and its bookkeeping row commit together.
        self.0.transaction::<_, BoxError, _>(|conn| {
            migration.run(conn)?;
            diesel::insert_into(strata_schema_migrations::table)
                .values((
                    strata_schema_migrations::version.eq(version.to_string()),
                    strata_schema_migrations::run_on.eq(chrono::Utc::now().naive_utc()),
                ))
                .execute(conn)?;
            Ok(())
        })?;
        Ok(version)
    }

    fn revert_migration(&mut self, migration: &dyn Migration<Sqlite>) -> Result<MigrationVersion<'static>, BoxError> {
        let version = migration.name().version().as_owned();
        self.0.transaction::<_, BoxError, _>(|conn| {
            migration.revert(conn)?;
            diesel::delete(
                strata_schema_migrations::table.filter(strata_schema_migrations::version.eq(version.to_string())),
            )
            .execute(conn)?;
            Ok(())
        })?;
        Ok(version)
    }

    fn applied_migrations(&mut self) -> Result<Vec<MigrationVersion<'static>>, BoxError> {
        self.ensure_table()?;
        let versions: Vec<String> = strata_schema_migrations::table
            .select(strata_schema_migrations::version)
            .order(strata_schema_migrations::version.desc())
            .load(self.0)?;
        Ok(versions.into_iter().map(MigrationVersion::from).collect())
    }
}
