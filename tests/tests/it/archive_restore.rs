//! Restore at bulk-load speed: rows whose key is in the table already are skipped and counted
//! exactly, on PostgreSQL (COPY) and SQLite (a prepared statement per row); every column type
//! comes back byte for byte; rows the COPY cannot take (a conflict it could not foresee) are
//! restored the exact way, with the same outcome.

use std::{collections::BTreeMap, time::Duration};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client,
    archive::{ArchivePolicy, ArchiveRun, RunKind, RunState, SegmentSelection},
};
use strata_tests::{PgCluster, S3Server, TestServer, server::test_config};

const DAY: u64 = 86_400;

#[derive(QueryableByName, Debug)]
struct Doc {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    doc: String,
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Stmt {
    #[diesel(sql_type = Text)]
    stmt: String,
}

/// Every row of `table` as `row_to_json` writes it, by id.
async fn docs(c: &mut AsyncPgConnection, table: &str) -> BTreeMap<i64, String> {
    diesel::sql_query(format!(
        "SELECT id::int8 AS id, row_to_json(whole_row)::text AS doc FROM {table} whole_row ORDER BY id"
    ))
    .load::<Doc>(c)
    .await
    .unwrap()
    .into_iter()
    .map(|d| (d.id, d.doc))
    .collect()
}

async fn count(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(c).await.unwrap().n
}

/// Records the first word of every statement that inserts into `table` (`COPY` or `INSERT`), so a
/// test can tell which way a restore went.
async fn log_statements(c: &mut AsyncPgConnection, table: &str) {
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS restore_log (tbl text, stmt text);
         CREATE OR REPLACE FUNCTION log_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO restore_log VALUES (TG_TABLE_NAME, split_part(current_query(), ' ', 1)); RETURN NULL; END $$;
         CREATE TRIGGER {table}_log AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION log_stmt();"
    ))
    .await
    .unwrap();
}

async fn statements(c: &mut AsyncPgConnection, table: &str) -> Vec<String> {
    diesel::sql_query(format!("SELECT stmt FROM restore_log WHERE tbl = '{table}'"))
        .load::<Stmt>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stmt)
        .collect()
}

fn policy(name: &str, table: &str, batch_size: i32) -> ArchivePolicy {
    ArchivePolicy {
        name: name.into(),
        table_name: table.into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(30 * DAY),
        batch_size,
        ..Default::default()
    }
}

async fn finish(client: &Client, run: ArchiveRun) -> ArchiveRun {
    let run =
        tokio::time::timeout(Duration::from_secs(120), client.wait_archive_run(&run.id, Duration::from_millis(50)))
            .await
            .expect("run finished in time")
            .unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    run
}

async fn archive(client: &Client, policy: &str) -> ArchiveRun {
    finish(client, client.run_archive(policy).await.unwrap()).await
}

async fn restore(client: &Client, policy: &str) -> ArchiveRun {
    let run = finish(client, client.restore_archive(policy, &SegmentSelection::default()).await.unwrap()).await;
    assert_eq!(run.kind, RunKind::Restore);
    assert!(client.list_segments(policy).await.unwrap().iter().all(|s| s.restored), "every segment restored");
    run
}

struct Pg {
    c: AsyncPgConnection,
    server: TestServer,
    client: Client,
    _s3: S3Server,
    _dir: tempfile::TempDir,
}

/// A fresh database holding `schema`, and a server on it archiving into the S3 server.
async fn pg(name: &str, schema: &str) -> Pg {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await.unwrap();
    let s3 = S3Server::start(&format!("strata-{name}").replace('_', "-")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(schema).await.unwrap();
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.object_store_url = s3.url();
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    Pg { c, server, client, _s3: s3, _dir: dir }
}

/// Chat rows (with a jsonb column) archived in several segments; a tenth of them put back by hand
/// (the same rows) before the restore. The restore skips exactly those, counts them, and leaves the
/// table equal to the original. A second table without any unique index (its key is only a policy's
/// word) shows that the skip is the key lookup's, not a constraint's.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restore_skips_the_keys_already_present() {
    let mut pg = pg(
        "restore_skip",
        "CREATE TABLE chat (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, room int NOT NULL,
                            body text NOT NULL, meta jsonb);
         INSERT INTO chat SELECT i, now() - make_interval(days => 40 + i % 300, secs => i), i % 17,
                'message ' || i || ' ' || repeat('wörds ', i % 40),
                CASE WHEN i % 7 = 0 THEN NULL ELSE jsonb_build_object('n', i, 'tags', jsonb_build_array('a', i % 5), 'x', 'é\"\\') END
           FROM generate_series(1, 3000) i;
         CREATE TABLE loose (id bigint NOT NULL, created_at timestamptz NOT NULL, v text);
         CREATE INDEX loose_id ON loose (id);
         INSERT INTO loose SELECT i, now() - interval '60 days', 'v' || i FROM generate_series(1, 1000) i;",
    )
    .await;
    for table in ["chat", "loose"] {
        pg.c.batch_execute(&format!("CREATE TABLE {table}_copy AS SELECT * FROM {table}")).await.unwrap();
        log_statements(&mut pg.c, table).await;
    }
    let original = docs(&mut pg.c, "chat").await;
    let loose = docs(&mut pg.c, "loose").await;
    let client = &pg.client;
    client.create_policy(&policy("chat", "chat", 250)).await.unwrap();
    client.create_policy(&policy("loose", "loose", 90)).await.unwrap();
    assert_eq!(archive(client, "chat").await.rows_done, 3000);
    assert_eq!(archive(client, "loose").await.rows_done, 1000);
    assert_eq!(count(&mut pg.c, "SELECT count(*)::int8 AS n FROM chat").await, 0);

    pg.c.batch_execute(
        "INSERT INTO chat SELECT * FROM chat_copy WHERE id % 10 = 3;
         INSERT INTO loose SELECT * FROM loose_copy WHERE id % 10 = 3;
         TRUNCATE restore_log;",
    )
    .await
    .unwrap();
    let r = restore(client, "chat").await;
    assert_eq!((r.rows_done, r.rows_skipped), (2700, 300), "{r:?}");
    assert_eq!(docs(&mut pg.c, "chat").await, original, "the table equals the original");
    let r = restore(client, "loose").await;
    assert_eq!((r.rows_done, r.rows_skipped), (900, 100), "{r:?}");
    assert_eq!(docs(&mut pg.c, "loose").await, loose);
    // `docs` maps by key: count too, so a key inserted twice cannot hide.
    assert_eq!(count(&mut pg.c, "SELECT count(*)::int8 AS n FROM loose").await, 1000, "no row twice");
    // Every segment went through COPY.
    for table in ["chat", "loose"] {
        let stmts = statements(&mut pg.c, table).await;
        assert!(!stmts.is_empty() && stmts.iter().all(|s| s == "COPY"), "{table}: {stmts:?}");
    }
    pg.server.stop().await.unwrap();
}

/// A table with every kind of column, hard values in each and NULL in every nullable one, an
/// identity column GENERATED ALWAYS and a generated column: after archive → restore through COPY,
/// `row_to_json` of every row equals the original. A table with a composite column, which the
/// decoder does not write, is restored exactly too, the exact way.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restore_is_byte_exact_for_every_column_type() {
    let mut pg = pg(
        "restore_types",
        r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
           CREATE DOMAIN short_text AS varchar(20) CHECK (VALUE <> 'forbidden');
           CREATE TABLE kinds (
               id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
               created_at timestamptz NOT NULL,
               j jsonb, js json, n numeric, n2 numeric(40, 12), f8 double precision, f4 real,
               b bytea, t text, vc varchar(60), ch char(5), st short_text,
               tstz timestamptz, ts timestamp, d date, iv interval,
               ia int[], ia2 int[], ta text[], na numeric[], flag boolean, u uuid, m mood, r int4range,
               sm smallint, big bigint, tsv tsvector, "odd ""col"" \ name" text,
               g text GENERATED ALWAYS AS (upper(t)) STORED
           );
           INSERT INTO kinds (created_at, j, js, n, n2, f8, f4, b, t, vc, ch, st, tstz, ts, d, iv, ia, ia2, ta, na,
                              flag, u, m, r, sm, big, tsv, "odd ""col"" \ name") VALUES
           (now() - interval '400 days',
            '{"a": {"b": [1, 2.50, "\u00e9\ud83d\ude80", null, true], "c": {}}, "k\"q": "tab\t\\"}',
            '{"a" : 1,  "a": [ 2.0e10, "\u00e9" ] }',
            123456789012345678901234567890.123456789012345678901234567890000, 1.500000000000,
            0.1, 3.4028235e38, '\x00ff5c0a09', E'tab\there\nnew\\back "quote" ''apos'' é🚀 \x01 \u2028 \\N',
            'varchar', 'ab', 'fine',
            '2024-02-29 12:34:56.789012+00', '2000-01-01 00:00:00.5', '2024-02-29', '1 year 2 mons 3 days 04:05:06.789',
            '{1,NULL,3}', '{{1,2},{3,4}}', ARRAY['a,b', 'c"d', 'e\f', NULL, 'NULL', '', ' sp ', '{x}'],
            '{1.50,NULL,-0.000001}', true, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '[1,10)',
            -32768, 9223372036854775807, 'a fat:2 cat', 'odd'),
           (now() - interval '399 days', '"just a string"', '"x\u00e9\/"', 'NaN', -0.000000000001, 'NaN', 'NaN', '',
            '', '', '', '', 'infinity', '-infinity', 'infinity', '-1 days +02:00:00.5', '{}', '{}', '{}', '{}',
            false, '00000000-0000-0000-0000-000000000000', 'sad', 'empty', 0, -9223372036854775808, '', ''),
           (now() - interval '398 days', '[]', '[]', '-0.0000001', 0, 'Infinity', '-Infinity', '\x', '\N', ' ', 'x', 'x',
            '0044-03-15 10:00 BC', '0044-03-15 10:00 BC', '0044-03-15 BC', '0', NULL, NULL, '{"\\"}', NULL, NULL,
            NULL, NULL, '(,5]', 1, 1, NULL, NULL),
           (now() - interval '397 days', '12.50', 'null', 'Infinity', NULL, '-Infinity', 1.17549435e-38, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL),
           (now() - interval '396 days', NULL, NULL, NULL, NULL, 5e-324, '-0', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
           INSERT INTO kinds (created_at, t, j, f8, ia, ta)
           SELECT now() - make_interval(days => 100 + i), 'row ' || i || E'\t' || repeat('\', i % 3),
                  jsonb_build_object('i', i, 'half', i / 2.0), i / 7.0, ARRAY[i, -i], ARRAY['t' || i]
             FROM generate_series(1, 300) i;
           CREATE TYPE address AS (street text, zip int);
           CREATE TABLE composite (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, home address, homes address[]);
           INSERT INTO composite SELECT i, now() - interval '100 days', ROW('Main "St" ' || i, i)::address,
                  ARRAY[ROW('a,b', 1)::address, NULL] FROM generate_series(1, 50) i;"#,
    )
    .await;
    log_statements(&mut pg.c, "kinds").await;
    log_statements(&mut pg.c, "composite").await;
    let original = docs(&mut pg.c, "kinds").await;
    let composite = docs(&mut pg.c, "composite").await;
    assert_eq!(original.len(), 305);
    let client = &pg.client;
    client.create_policy(&policy("kinds", "kinds", 40)).await.unwrap();
    client.create_policy(&policy("composite", "composite", 20)).await.unwrap();
    assert_eq!(archive(client, "kinds").await.rows_done, 305);
    assert_eq!(archive(client, "composite").await.rows_done, 50);
    pg.c.batch_execute("TRUNCATE restore_log").await.unwrap();
    let r = restore(client, "kinds").await;
    assert_eq!((r.rows_done, r.rows_skipped), (305, 0), "{r:?}");
    let back = docs(&mut pg.c, "kinds").await;
    for (id, doc) in &original {
        assert_eq!(back.get(id), Some(doc), "row {id} restored byte for byte");
    }
    assert_eq!(back.len(), original.len());
    let stmts = statements(&mut pg.c, "kinds").await;
    assert!(!stmts.is_empty() && stmts.iter().all(|s| s == "COPY"), "{stmts:?}");

    let r = restore(client, "composite").await;
    assert_eq!((r.rows_done, r.rows_skipped), (50, 0), "{r:?}");
    assert_eq!(docs(&mut pg.c, "composite").await, composite);
    let stmts = statements(&mut pg.c, "composite").await;
    assert!(!stmts.is_empty() && stmts.iter().all(|s| s == "INSERT"), "{stmts:?}");
    pg.server.stop().await.unwrap();
}

/// Between archive and restore the application writes: a row under an archived key (its own
/// content) and a row under a new key that takes an archived row's value of another unique column.
/// The first is found by the key lookup and skipped; the second only shows as COPY's unique
/// violation, after which that segment is restored the exact way (its conflicting row skipped, as
/// the exact statement's ON CONFLICT DO NOTHING does). Every other row comes back as it was, and
/// the application's rows stay.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restore_falls_back_the_exact_way_on_a_conflict_it_could_not_foresee() {
    let mut pg = pg(
        "restore_conflict",
        "CREATE TABLE users (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, email text UNIQUE, name text);
         INSERT INTO users SELECT i, now() - make_interval(days => 100, secs => i), 'u' || i || '@example.com', 'user ' || i
           FROM generate_series(1, 500) i;",
    )
    .await;
    log_statements(&mut pg.c, "users").await;
    let original = docs(&mut pg.c, "users").await;
    let client = &pg.client;
    client.create_policy(&policy("users", "users", 100)).await.unwrap();
    assert_eq!(archive(client, "users").await.rows_done, 500);
    pg.c.batch_execute(
        "INSERT INTO users VALUES (42, now(), 'app42@example.com', 'the application''s 42');
         INSERT INTO users VALUES (1000, now(), 'u250@example.com', 'took 250''s email');
         TRUNCATE restore_log;",
    )
    .await
    .unwrap();
    let app = docs(&mut pg.c, "users").await;
    let r = restore(client, "users").await;
    assert_eq!((r.rows_done, r.rows_skipped), (498, 2), "{r:?}");
    let back = docs(&mut pg.c, "users").await;
    assert_eq!(back.len(), 500 - 2 + 2);
    for (id, doc) in &original {
        match id {
            42 | 250 => assert_eq!(back.get(id), app.get(id), "row {id}: the application's, or none"),
            _ => assert_eq!(back.get(id), Some(doc), "row {id}"),
        }
    }
    assert_eq!(back.get(&1000), app.get(&1000));
    // The segment holding row 250 went the exact way; the others through COPY.
    let segments = client.list_segments("users").await.unwrap().len();
    let stmts = statements(&mut pg.c, "users").await;
    assert_eq!(stmts.iter().filter(|s| *s == "INSERT").count(), 1, "{stmts:?}");
    assert_eq!(stmts.iter().filter(|s| *s == "COPY").count(), segments - 1, "{stmts:?}");
    pg.server.stop().await.unwrap();
}

#[derive(QueryableByName, Debug, PartialEq)]
struct SqliteRow {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    snapshot: String,
}

type SqliteConn = diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>;

/// Every value with its type, exactly (a REAL that lost digits or a BLOB that came back as text
/// would differ).
async fn sqlite_rows(c: &mut SqliteConn, table: &str, key: &str, cols: &[&str]) -> Vec<SqliteRow> {
    let exact = |c: &&str| {
        format!(
            "typeof({c}) || ':' || CASE typeof({c}) WHEN 'real' THEN printf('%!.17g', {c}) WHEN 'blob' THEN hex({c}) ELSE ifnull({c}, '') END"
        )
    };
    let cols = cols.iter().map(exact).collect::<Vec<_>>().join(" || '|' || ");
    diesel::sql_query(format!("SELECT {key} AS key, {cols} AS snapshot FROM {table} ORDER BY {key}"))
        .load(c)
        .await
        .unwrap()
}

/// SQLite: a tenth of the archived rows put back before the restore are skipped exactly, on a table
/// keyed by its rowid (the insert's conflict skips them) and on one whose two-column key has no
/// index at all (looked up per row); values come back with their types.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_restore_skips_the_keys_already_present() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT, body TEXT, ratio REAL, data BLOB, n INTEGER, flag BOOLEAN);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 2000)
         INSERT INTO events SELECT i, datetime('now', '-' || (40 + i % 300) || ' days'),
             CASE WHEN i % 9 = 0 THEN NULL ELSE 'ünïcode ✓ ' || i || char(10) || '\"' || char(9) || '\\' END,
             CASE WHEN i % 5 = 0 THEN NULL ELSE 0.1 * i + 1e-15 END,
             CASE WHEN i % 6 = 0 THEN NULL ELSE randomblob(16 + i % 7) END,
             CASE WHEN i % 8 = 0 THEN NULL WHEN i % 8 = 1 THEN 'text in an int column' ELSE i * 1000003 END,
             i % 2 = 0
           FROM s;
         CREATE TABLE pairs (room TEXT, seq INTEGER, created_at TEXT, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 1000)
         INSERT INTO pairs SELECT 'room ' || (i % 13), i, datetime('now', '-60 days'), 'v' || i FROM s;
         CREATE TABLE events_copy AS SELECT * FROM events;
         CREATE TABLE pairs_copy AS SELECT * FROM pairs;",
    )
    .await
    .unwrap();
    let event_cols = ["created_at", "body", "ratio", "data", "n", "flag"];
    let original = sqlite_rows(&mut c, "events", "id", &event_cols).await;
    let pairs = sqlite_rows(&mut c, "pairs", "room || '/' || seq", &["created_at", "v"]).await;
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    client.create_policy(&policy("events", "events", 150)).await.unwrap();
    client
        .create_policy(&ArchivePolicy {
            key_columns: vec!["room".into(), "seq".into()],
            ..policy("pairs", "pairs", 70)
        })
        .await
        .unwrap();
    assert_eq!(archive(&client, "events").await.rows_done, 2000);
    assert_eq!(archive(&client, "pairs").await.rows_done, 1000);
    c.batch_execute(
        "INSERT INTO events SELECT * FROM events_copy WHERE id % 10 = 3;
         INSERT INTO pairs SELECT * FROM pairs_copy WHERE seq % 10 = 3;",
    )
    .await
    .unwrap();
    let r = restore(&client, "events").await;
    assert_eq!((r.rows_done, r.rows_skipped), (1800, 200), "{r:?}");
    assert_eq!(sqlite_rows(&mut c, "events", "id", &event_cols).await, original);
    let r = restore(&client, "pairs").await;
    assert_eq!((r.rows_done, r.rows_skipped), (900, 100), "{r:?}");
    assert_eq!(sqlite_rows(&mut c, "pairs", "room || '/' || seq", &["created_at", "v"]).await, pairs);
    server.stop().await.unwrap();
}
