//! strata's catalog: Diesel's declarations match both live schemas, and nothing lands in the
//! application's namespace.

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use strata_server::db::schema::CATALOG;

use crate::support::PgFixture;

#[derive(QueryableByName, Debug)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_matches_migrations_on_postgres() {
    let f = PgFixture::new("catalog").await;
    let mut c = f.conn().await;
    for (table, _, columns) in CATALOG {
        let live: Vec<String> = diesel::sql_query(format!(
            "SELECT column_name::text AS name FROM information_schema.columns
              WHERE table_schema = 'strata' AND table_name = '{table}' ORDER BY ordinal_position"
        ))
        .load::<Name>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
        assert_eq!(live, *columns, "strata.{table}");
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
    use diesel::RunQueryDsl as _;
    use strata_server::db::schema::CATALOG;
    use strata_tests::TestServer;

    use super::Name;

    #[tokio::test(flavor = "multi_thread")]
    async fn catalog_matches_migrations_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::sqlite(dir.path()).await.unwrap();
        let mut c = crate::support::sqlite_sync(&dir.path().join("strata.db"));
        for (_, sqlite_name, columns) in CATALOG {
            let live: Vec<String> =
                diesel::sql_query(format!("SELECT name FROM pragma_table_info('{sqlite_name}') ORDER BY cid"))
                    .load::<Name>(&mut c)
                    .unwrap()
                    .into_iter()
                    .map(|n| n.name)
                    .collect();
            assert_eq!(live, *columns, "{sqlite_name}");
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
}
