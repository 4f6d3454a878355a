//! strata's catalog: Diesel's declarations match both live schemas, and nothing lands in the
//! application's namespace.

use diesel::{
    QueryableByName,
    sql_types::{Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use strata_server::db::schema::{CATALOG, UNIQUE_INDEXES};

use crate::support::PgFixture;

#[derive(QueryableByName, Debug)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName, Debug)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
}

#[derive(QueryableByName, Debug)]
struct PgIndex {
    #[diesel(sql_type = Text)]
    columns: String,
    #[diesel(sql_type = Text)]
    predicate: String,
}

/// A Diesel type as written in `schema.rs` (`Nullable < Text >`): the base type and whether it is
/// nullable.
fn diesel_type(ty: &str) -> (String, bool) {
    let ty: String = ty.chars().filter(|c| !c.is_whitespace()).collect();
    match ty.strip_prefix("Nullable<").and_then(|t| t.strip_suffix('>')) {
        Some(base) => (base.to_string(), true),
        None => (ty, false),
    }
}

/// The `information_schema` type a Diesel type reads and writes correctly.
fn pg_type(diesel: String) -> &'static str {
    match diesel.as_str() {
        "BigInt" => "bigint",
        "Integer" => "integer",
        "Text" => "text",
        "Timestamp" => "timestamp without time zone",
        "Bool" => "boolean",
        "Double" => "double precision",
        "Binary" => "bytea",
        other => panic!("no PostgreSQL type known for Diesel's {other}: extend the test"),
    }
}

/// A partial index's condition, compared without PostgreSQL's added casts, parentheses and spacing.
fn predicate(p: &str) -> String {
    p.replace("::text", "")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '(' && *c != ')')
        .collect::<String>()
        .to_lowercase()
}

/// Columns (comma-joined) and condition of the indexes of `strata.<table>` that match `which`.
async fn pg_index_columns(c: &mut AsyncPgConnection, table: &str, which: &str) -> Vec<PgIndex> {
    diesel::sql_query(format!(
        "SELECT array_to_string(ARRAY(
                    SELECT a.attname FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                      JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.attnum
                     ORDER BY k.n), ',') AS columns,
                COALESCE(pg_get_expr(ix.indpred, ix.indrelid), '') AS predicate
           FROM pg_index ix
           JOIN pg_class t ON t.oid = ix.indrelid
           JOIN pg_namespace ns ON ns.oid = t.relnamespace
          WHERE ns.nspname = 'strata' AND t.relname = $1 AND {which}"
    ))
    .bind::<Text, _>(table)
    .load(c)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_matches_migrations_on_postgres() {
    let f = PgFixture::new("catalog").await;
    let mut c = f.conn().await;
    for t in CATALOG {
        let live: Vec<PgColumn> = diesel::sql_query(
            "SELECT column_name::text AS name, data_type::text AS ty, is_nullable = 'YES' AS nullable
               FROM information_schema.columns
              WHERE table_schema = 'strata' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind::<Text, _>(t.name)
        .load(&mut c)
        .await
        .unwrap();
        let names: Vec<&str> = live.iter().map(|l| l.name.as_str()).collect();
        let declared: Vec<&str> = t.columns.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, declared, "strata.{}", t.name);
        for (l, (name, ty)) in live.iter().zip(t.columns) {
            let (base, nullable) = diesel_type(ty);
            assert_eq!(l.nullable, nullable, "strata.{}.{name}: nullable", t.name);
            assert_eq!(l.ty, pg_type(base), "strata.{}.{name}: type", t.name);
        }
        let pk: Vec<String> =
            pg_index_columns(&mut c, t.name, "ix.indisprimary").await.into_iter().map(|i| i.columns).collect();
        assert_eq!(pk, vec![t.primary_key.join(",")], "strata.{}: primary key", t.name);
    }
    for u in UNIQUE_INDEXES {
        let live = pg_index_columns(&mut c, u.table, "ix.indisunique AND NOT ix.indisprimary").await;
        let want = (u.columns.join(","), u.predicate.map(predicate).unwrap_or_default());
        assert!(
            live.iter().any(|i| (i.columns.clone(), predicate(&i.predicate)) == want),
            "strata.{}: no unique index on {want:?} ({}); live: {live:?}",
            u.table,
            u.guards
        );
    }
    // Migration bookkeeping lives in the strata schema; the application's public schema is untouched.
    let public: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert!(public.is_empty(), "{public:?}");
    let bookkeeping: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables
          WHERE table_schema = 'strata' AND table_name = '__diesel_schema_migrations'",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert_eq!(bookkeeping.len(), 1);
}

mod sqlite {
    use diesel::{
        QueryableByName, RunQueryDsl as _, SqliteConnection,
        sql_types::{Integer, Nullable, Text},
    };
    use strata_server::db::schema::{CATALOG, UNIQUE_INDEXES};
    use strata_tests::TestServer;

    use super::Name;

    #[derive(QueryableByName, Debug)]
    struct SqliteColumn {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        ty: String,
        #[diesel(sql_type = Integer)]
        not_null: i32,
        #[diesel(sql_type = Integer)]
        pk: i32,
    }

    #[derive(QueryableByName, Debug)]
    struct SqliteIndex {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Nullable<Text>)]
        sql: Option<String>,
    }

    /// The declared column types (migrations/sqlite) that hold a Diesel type's values as written.
    fn sqlite_types(diesel: &str) -> &'static [&'static str] {
        match diesel {
            "BigInt" | "Integer" => &["BIGINT", "INTEGER"],
            "Text" => &["TEXT"],
            "Timestamp" => &["TIMESTAMP"],
            "Bool" => &["BOOLEAN"],
            "Double" => &["DOUBLE", "DOUBLE PRECISION", "REAL"],
            "Binary" => &["BLOB"],
            other => panic!("no SQLite type known for Diesel's {other}: extend the test"),
        }
    }

    /// (columns comma-joined, normalised condition) of every unique index of `table`.
    fn unique_indexes(c: &mut SqliteConnection, table: &str) -> Vec<(String, String)> {
        let indexes: Vec<SqliteIndex> = diesel::sql_query(
            "SELECT l.name AS name, s.sql AS sql FROM pragma_index_list(?) AS l
               LEFT JOIN sqlite_schema AS s ON s.type = 'index' AND s.name = l.name
              WHERE l.\"unique\" = 1 AND l.origin <> 'pk'",
        )
        .bind::<Text, _>(table)
        .load(c)
        .unwrap();
        indexes
            .into_iter()
            .map(|i| {
                let columns: Vec<Name> = diesel::sql_query("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                    .bind::<Text, _>(&i.name)
                    .load(c)
                    .unwrap();
                let columns = columns.into_iter().map(|n| n.name).collect::<Vec<_>>().join(",");
                let condition =
                    i.sql.as_deref().and_then(|s| s.split_once(" WHERE ")).map(|(_, p)| super::predicate(p));
                (columns, condition.unwrap_or_default())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn catalog_matches_migrations_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::sqlite(dir.path()).await.unwrap();
        let mut c = crate::support::sqlite_sync(&dir.path().join("strata.db"));
        for t in CATALOG {
            let live: Vec<SqliteColumn> = diesel::sql_query(
                "SELECT name, type AS ty, \"notnull\" AS not_null, pk FROM pragma_table_info(?) ORDER BY cid",
            )
            .bind::<Text, _>(t.sqlite_name)
            .load(&mut c)
            .unwrap();
            let names: Vec<&str> = live.iter().map(|l| l.name.as_str()).collect();
            let declared: Vec<&str> = t.columns.iter().map(|(n, _)| *n).collect();
            assert_eq!(names, declared, "{}", t.sqlite_name);
            for (l, (name, ty)) in live.iter().zip(t.columns) {
                let (base, nullable) = super::diesel_type(ty);
                // strata always writes its keys; SQLite reports a key column without NOT NULL as
                // nullable, Diesel declares it not null.
                assert_eq!(l.not_null == 0 && l.pk == 0, nullable, "{}.{name}: nullable", t.sqlite_name);
                assert!(
                    sqlite_types(&base).contains(&l.ty.as_str()),
                    "{}.{name}: declared {:?}, Diesel {base}",
                    t.sqlite_name,
                    l.ty
                );
            }
            let mut pk: Vec<(i32, &str)> = live.iter().filter(|l| l.pk > 0).map(|l| (l.pk, l.name.as_str())).collect();
            pk.sort();
            let pk: Vec<&str> = pk.into_iter().map(|(_, n)| n).collect();
            assert_eq!(pk, t.primary_key, "{}: primary key", t.sqlite_name);
        }
        for u in UNIQUE_INDEXES {
            let table = format!("strata_{}", u.table);
            let live = unique_indexes(&mut c, &table);
            let want = (u.columns.join(","), u.predicate.map(super::predicate).unwrap_or_default());
            assert!(live.contains(&want), "{table}: no unique index on {want:?} ({}); live: {live:?}", u.guards);
        }
        let tables: Vec<Name> = diesel::sql_query("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .load(&mut c)
            .unwrap();
        for t in &tables {
            assert!(t.name.starts_with("strata_") || t.name.starts_with("sqlite_"), "unprefixed table {}", t.name);
        }
        server.stop().await.unwrap();
        // Restarting runs no migration twice.
        let server = TestServer::sqlite(dir.path()).await.unwrap();
        let n: Vec<Name> =
            diesel::sql_query("SELECT version AS name FROM strata_schema_migrations").load(&mut c).unwrap();
        let embedded = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite")).unwrap().count();
        assert_eq!(n.len(), embedded);
        server.stop().await.unwrap();
    }

    /// Rolling upgrades: a strata keeps serving a catalog that a newer strata expanded (a column, a
    /// table and a migration it does not know), and refuses to start on one whose compatibility
    /// level is above its own, saying why.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_newer_catalog_is_served_while_compatible_and_refused_when_not() {
        let dir = tempfile::tempdir().unwrap();
        TestServer::sqlite(dir.path()).await.unwrap().stop().await.unwrap();
        let mut c = crate::support::sqlite_sync(&dir.path().join("strata.db"));
        for sql in [
            "ALTER TABLE strata_files ADD COLUMN crc32c TEXT",
            "CREATE TABLE strata_future_things (id TEXT PRIMARY KEY)",
            "INSERT INTO strata_schema_migrations (version, run_on) VALUES ('20991231000099', CURRENT_TIMESTAMP)",
        ] {
            diesel::sql_query(sql).execute(&mut c).unwrap();
        }
        let server = TestServer::sqlite(dir.path()).await.unwrap();
        let client = server.client().await;
        let opts = strata_client::types::UploadOptions { owner: "o".into(), ..Default::default() };
        let f = client.upload_bytes(&opts, "a.txt", bytes::Bytes::from_static(b"still works")).await.unwrap();
        assert_eq!(client.download_bytes(&f.id, 0, 0).await.unwrap(), b"still works");
        assert!(!client.list_jobs().await.unwrap().is_empty());
        server.stop().await.unwrap();

        // A contracting upgrade raised the level: this strata stops at start-up and says why.
        diesel::sql_query("UPDATE strata_catalog_info SET compat_level = 2").execute(&mut c).unwrap();
        let e = TestServer::sqlite(dir.path()).await.err().expect("refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("compatibility level 2, newer than this strata understands (level 1)"), "{msg}");
        // Nothing was changed: the file uploaded before is still recorded.
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = Integer)]
            n: i32,
        }
        let n: N = diesel::sql_query("SELECT count(*) AS n FROM strata_files").get_result(&mut c).unwrap();
        assert_eq!(n.n, 1);
    }
}
