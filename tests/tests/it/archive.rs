//! Archival on PostgreSQL (with the S3 server) and on SQLite: archive → read → restore equals the
//! original rows exactly, filters honoured, injection attempts rejected, retention deletes only
//! what is due, purge deletes without a copy.

use std::{collections::BTreeMap, time::Duration};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client,
    archive::{ArchivePolicy, Filter, FilterOp, PolicyMode, RunKind, RunState, SegmentSelection},
};
use strata_tests::{PgCluster, S3Server, TestServer, server::test_config};
use tonic::Code;

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

async fn pg_docs(c: &mut diesel_async::AsyncPgConnection) -> BTreeMap<i64, String> {
    diesel::sql_query("SELECT id, row_to_json(t)::text AS doc FROM messages t ORDER BY id")
        .load::<Doc>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.doc))
        .collect()
}

async fn pg_count(c: &mut diesel_async::AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(c).await.unwrap().n
}

fn policy(name: &str, table: &str, after_days: u64) -> ArchivePolicy {
    ArchivePolicy {
        name: name.into(),
        table_name: table.into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(after_days * DAY),
        batch_size: 97,
        ..Default::default()
    }
}

async fn finish(client: &Client, run_id: &str) -> strata_client::archive::ArchiveRun {
    let run =
        tokio::time::timeout(Duration::from_secs(120), client.wait_archive_run(run_id, Duration::from_millis(50)))
            .await
            .expect("run finished in time")
            .unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    run
}

/// Starts a run, retrying while another run still holds the policy.
async fn start(
    client: &Client,
    what: impl AsyncFn() -> Result<strata_client::archive::ArchiveRun, strata_client::Error>,
) -> strata_client::archive::ArchiveRun {
    for _ in 0..100 {
        match what().await {
            Ok(r) => return r,
            Err(e) if e.code() == Some(Code::FailedPrecondition) && e.to_string().contains("busy") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let _ = client;
    panic!("policy stayed busy")
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_archive_read_restore_retention_with_s3() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("archive").await.unwrap();
    let s3 = S3Server::start("strata-archive").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // Every kind of column the seeds use, including ones that are easy to get subtly wrong.
    c.batch_execute(
        "CREATE TABLE messages (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            created_at timestamptz NOT NULL,
            status text NOT NULL,
            body text,
            meta jsonb,
            data bytea,
            amount numeric(40, 12),
            ratio double precision,
            tags text[],
            day date,
            body_len int GENERATED ALWAYS AS (length(body)) STORED,
            note varchar(60),
            \"odd \"\"name\"\" \\\\\" text
        );
        INSERT INTO messages (created_at, status, body, meta, data, amount, ratio, tags, day, note, \"odd \"\"name\"\" \\\\\")
        SELECT now() - make_interval(days => 400 - i / 5, secs => i),
               CASE WHEN i % 3 = 0 THEN 'OPEN' ELSE 'COMPLETED' END,
               CASE WHEN i % 11 = 0 THEN NULL ELSE 'héllo wörld 🚀 «' || i || '» ' || repeat('ab', i % 50) || E'\\n\"q\"' END,
               CASE WHEN i % 5 = 0 THEN NULL ELSE jsonb_build_object('n', i, 'nested', jsonb_build_array(1, 'two', NULL, true)) END,
               CASE WHEN i % 7 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') || '\\x00ff'::bytea END,
               CASE WHEN i % 13 = 0 THEN NULL ELSE 12345678901234567890.123456789012 + i END,
               CASE WHEN i % 17 = 0 THEN NULL ELSE 0.1 * i + 1e-17 END,
               CASE WHEN i % 4 = 0 THEN NULL ELSE ARRAY['a', 'b,c', i::text] END,
               (now() - make_interval(days => i % 400))::date,
               CASE WHEN i % 9 = 0 THEN NULL ELSE E'back\\\\slash\\ttab\\x01\\x1f ctl ' || chr(127) || ' ' || i END,
               CASE WHEN i % 6 = 0 THEN NULL ELSE '' END
          FROM generate_series(1, 2000) i;
        ANALYZE messages;",
    )
    .await
    .unwrap();
    let original = pg_docs(&mut c).await;
    assert_eq!(original.len(), 2000);
    let due_sql = "SELECT count(*)::int8 AS n FROM messages WHERE created_at < now() - interval '90 days' AND status = 'COMPLETED'";
    let due = pg_count(&mut c, due_sql).await;
    assert!(due > 500, "{due}");

    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.object_store_url = s3.url();
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;

    // Hostile or wrong policies are rejected and change nothing.
    let good = ArchivePolicy {
        filters: vec![Filter::new("status", FilterOp::Eq, &["COMPLETED"])],
        delete_after: Some(Duration::from_secs(3650 * DAY)),
        ..policy("chat", "messages", 90)
    };
    let bad_policies = [
        ArchivePolicy { table_name: "messages; DROP TABLE messages".into(), ..good.clone() },
        ArchivePolicy { time_column: "created_at\" < now(); DROP TABLE messages; --".into(), ..good.clone() },
        ArchivePolicy { time_column: "body".into(), ..good.clone() },
        ArchivePolicy { key_columns: vec!["meta".into()], ..good.clone() },
        ArchivePolicy { key_columns: vec!["nope".into()], ..good.clone() },
        ArchivePolicy { filters: vec![Filter::new("id", FilterOp::Eq, &["1 OR 1=1"])], ..good.clone() },
        ArchivePolicy { filters: vec![Filter::new("status", FilterOp::In, &[])], ..good.clone() },
        ArchivePolicy { filters: vec![Filter::new("nope", FilterOp::IsNull, &[])], ..good.clone() },
        ArchivePolicy { name: "bad name".into(), ..good.clone() },
        ArchivePolicy { archive_after: Duration::ZERO, ..good.clone() },
    ];
    for bad in bad_policies {
        let e = client.create_policy(&bad).await.expect_err("rejected");
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{bad:?}: {e}");
    }
    // A text value that looks like SQL is only a value: it matches nothing and harms nothing.
    let odd = client
        .create_policy(&ArchivePolicy {
            filters: vec![Filter::new("status", FilterOp::Eq, &["x'); DROP TABLE messages; --"])],
            ..policy("odd", "messages", 90)
        })
        .await
        .unwrap();
    assert_eq!(client.plan_archive(&odd.id).await.unwrap().rows, 0);
    let r = start(&client, async || client.run_archive("odd").await).await;
    assert_eq!(finish(&client, &r.id).await.rows_done, 0);
    client.delete_policy("odd").await.unwrap();
    assert_eq!(pg_docs(&mut c).await, original);

    let p = client.create_policy(&good).await.unwrap();
    assert_eq!(p.schema_name, "public");
    assert_eq!(client.create_policy(&good).await.unwrap_err().code(), Some(Code::AlreadyExists));
    let plan = client.plan_archive("chat").await.unwrap();
    assert_eq!(plan.rows, due);
    assert_eq!(plan.batches, (due + 96) / 97);
    assert!(plan.estimated_bytes > due * 50, "{plan:?}");

    let run = start(&client, async || client.run_archive("chat").await).await;
    assert_eq!(run.kind, RunKind::Archive);
    let run = finish(&client, &run.id).await;
    assert_eq!(run.rows_done, due);
    assert_eq!(run.segments_done, (due + 96) / 97);
    assert!(run.compression_ratio > 1.5, "{run:?}");
    assert_eq!(pg_count(&mut c, due_sql).await, 0);
    assert_eq!(pg_count(&mut c, "SELECT count(*)::int8 AS n FROM messages").await, 2000 - due);

    // Segments: the manifests add up; each object is plain zstd JSON Lines holding exactly the
    // archived rows as they were.
    let segments = client.list_segments("chat").await.unwrap();
    assert_eq!(segments.iter().map(|s| s.row_count).sum::<i64>(), due);
    let mut archived = BTreeMap::new();
    for s in &segments {
        assert!(s.object_key.starts_with("archive/public.messages/"), "{}", s.object_key);
        assert!(s.object_key.ends_with(&format!("{}.jsonl.zst", s.id)));
        assert!(s.columns.iter().any(|c| c == "created_at timestamp with time zone"), "{:?}", s.columns);
        let path = s3.root.join("strata-archive").join(&s.object_key);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), s.sha256);
        let text = String::from_utf8(zstd::decode_all(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(text.len() as i64, s.raw_bytes);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_i64().unwrap();
            assert_eq!(v["status"], "COMPLETED");
            assert!(archived.insert(id, line.to_owned()).is_none(), "row {id} archived twice");
        }
    }
    assert_eq!(archived.len() as i64, due);
    for (id, doc) in &archived {
        assert_eq!(original.get(id), Some(doc), "row {id} archived as it was");
    }

    // ReadArchive streams the same rows without restoring them.
    let mut read = BTreeMap::new();
    let n = client
        .read_archive("chat", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let v: serde_json::Value = serde_json::from_str(&r).unwrap();
                read.insert(v["id"].as_i64().unwrap(), r);
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n as i64, due);
    assert_eq!(read, archived);

    // Restore everything: the table equals the original exactly (generated and identity columns too).
    let r = start(&client, async || client.restore_archive("chat", &SegmentSelection::default()).await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!((r.kind, r.rows_done, r.rows_skipped), (RunKind::Restore, due, 0));
    assert_eq!(pg_docs(&mut c).await, original);
    assert!(client.list_segments("chat").await.unwrap().iter().all(|s| s.restored));

    // Archive again; put one archived key back by hand; a restore skips it and keeps the hand-made row.
    let r = start(&client, async || client.run_archive("chat").await).await;
    assert_eq!(finish(&client, &r.id).await.rows_done, due);
    let (&some_id, _) = archived.iter().next().unwrap();
    c.batch_execute(&format!(
        "INSERT INTO messages (id, created_at, status, body) OVERRIDING SYSTEM VALUE
         VALUES ({some_id}, now(), 'HANDMADE', 'kept')"
    ))
    .await
    .unwrap();
    let committed: Vec<_> = client.list_segments("chat").await.unwrap().into_iter().filter(|s| !s.restored).collect();
    let first_two: Vec<String> = committed.iter().take(2).map(|s| s.id.clone()).collect();
    let in_first_two: i64 = committed.iter().take(2).map(|s| s.row_count).sum();
    let holder = committed.iter().position(|s| {
        let lo: i64 = s.first_key.trim_matches(['[', ']']).parse().unwrap();
        let hi: i64 = s.last_key.trim_matches(['[', ']']).parse().unwrap();
        (lo..=hi).contains(&some_id)
    });
    let r = start(&client, async || {
        client.restore_archive("chat", &SegmentSelection { ids: first_two.clone(), ..Default::default() }).await
    })
    .await;
    let r = finish(&client, &r.id).await;
    let skipped = i64::from(holder.is_some_and(|h| h < 2));
    assert_eq!((r.rows_done, r.rows_skipped), (in_first_two - skipped, skipped));
    // Restoring an already restored segment is refused and changes nothing.
    let e = client
        .restore_archive("chat", &SegmentSelection { ids: first_two.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert_eq!(pg_count(&mut c, "SELECT count(*)::int8 AS n FROM messages WHERE status = 'HANDMADE'").await, 1);

    // Retention: only segments whose newest row is older than delete_after go.
    let segments = client.list_segments("chat").await.unwrap();
    let keep = Duration::from_secs(200 * DAY);
    let limit = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap();
    let expired: Vec<_> = segments.iter().filter(|s| s.max_time.unwrap() < limit).map(|s| s.id.clone()).collect();
    assert!(!expired.is_empty() && expired.len() < segments.len(), "{} of {}", expired.len(), segments.len());
    client
        .update_policy(&ArchivePolicy { id: p.id.clone(), delete_after: Some(keep), ..good.clone() }, &["delete_after"])
        .await
        .unwrap();
    let r = start(&client, async || client.apply_retention("chat").await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!(r.segments_done as usize, expired.len());
    let left = client.list_segments("chat").await.unwrap();
    assert_eq!(left.len(), segments.len() - expired.len());
    assert!(left.iter().all(|s| !expired.contains(&s.id)));
    for s in &segments {
        let exists = s3.root.join("strata-archive").join(&s.object_key).exists();
        assert_eq!(exists, !expired.contains(&s.id), "object of segment {}", s.id);
    }
    // A policy with segments left cannot be deleted.
    assert_eq!(client.delete_policy("chat").await.unwrap_err().code(), Some(Code::FailedPrecondition));
    let runs = client.list_archive_runs(Some("chat"), 100).await.unwrap();
    assert_eq!(runs.len(), 5, "archive, restore, archive, restore, retention");
    assert!(runs.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    server.stop().await.unwrap();
}

#[derive(QueryableByName, Debug)]
struct KeyedDoc {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    doc: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    micros: Option<i64>,
}

/// Every kind of time column (timestamp without time zone, date, Unix seconds, with ±infinity
/// where the type has it), a two-column key of text and smallint, and boolean columns: every
/// archived line equals `row_to_json`, each manifest's first/last key equals `json_build_array`
/// of its first/last row's key, and its time range is its rows' (infinite times are left out).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_time_kinds_and_composite_keys() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("archive_kinds").await.unwrap();
    let s3 = S3Server::start("strata-kinds").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    let kinds = [
        (
            "ts_plain",
            "timestamp without time zone",
            "(now() AT TIME ZONE 'UTC') - make_interval(days => i, secs => i)",
            "'-infinity'",
        ),
        ("ts_date", "date", "(now() - make_interval(days => i))::date", "'-infinity'"),
        ("ts_unix", "bigint", "extract(epoch FROM now() - make_interval(days => i, secs => i))::int8", "NULL"),
    ];
    for (table, ty, value, odd) in kinds {
        c.batch_execute(&format!(
            "CREATE TABLE {table} (k1 text, k2 smallint, at {ty}, flag boolean, body text, n int, PRIMARY KEY (k1, k2));
             INSERT INTO {table} SELECT 'room \"' || (i % 7) || '\"', i, {value},
                    CASE WHEN i % 5 = 0 THEN NULL ELSE i % 2 = 0 END, 'row ' || i, -i
               FROM generate_series(1, 300) i;
             INSERT INTO {table} VALUES ('odd', 0, {odd}, true, 'odd row', 0);"
        ))
        .await
        .unwrap();
    }
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.object_store_url = s3.url();
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    for (table, ty, _, _) in kinds {
        // Key, document and time (Unix microseconds, as extract(epoch) gives them) of every row.
        let micros = match ty {
            "bigint" => "at * 1000000".to_string(),
            _ => "CASE WHEN isfinite(at) THEN (extract(epoch FROM at) * 1000000)::int8 END".to_string(),
        };
        let before: BTreeMap<String, KeyedDoc> = diesel::sql_query(format!(
            "SELECT json_build_array(k1, k2)::text AS key, row_to_json(t)::text AS doc, {micros} AS micros FROM {table} t"
        ))
        .load::<KeyedDoc>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.key.clone(), d))
        .collect();
        // The cutoff converted to the column's type, as strata compares it (a date compares with
        // the cutoff's UTC day).
        let cutoff = match ty {
            "bigint" => "extract(epoch FROM now() - interval '30 days')",
            "date" => "((now() AT TIME ZONE 'UTC') - interval '30 days')::date",
            _ => "now() - interval '30 days'",
        };
        let due_sql = format!("SELECT count(*)::int8 AS n FROM {table} WHERE at < {cutoff}");
        let due = pg_count(&mut c, &due_sql).await;
        assert!(due > 200, "{table}: {due}");
        client
            .create_policy(&ArchivePolicy {
                time_column: "at".into(),
                key_columns: vec!["k1".into(), "k2".into()],
                batch_size: 37,
                ..policy(table, table, 30)
            })
            .await
            .unwrap();
        let r = start(&client, async || client.run_archive(table).await).await;
        assert_eq!(finish(&client, &r.id).await.rows_done, due, "{table}");
        assert_eq!(pg_count(&mut c, &due_sql).await, 0, "{table}");
        let mut seen = 0;
        for s in client.list_segments(table).await.unwrap() {
            let bytes = std::fs::read(s3.root.join("strata-kinds").join(&s.object_key)).unwrap();
            let text = String::from_utf8(zstd::decode_all(bytes.as_slice()).unwrap()).unwrap();
            let rows: Vec<&KeyedDoc> = text
                .lines()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let key = serde_json::to_string(&[&v["k1"], &v["k2"]]).unwrap().replace(",", ", ");
                    let row = before.get(&key).unwrap_or_else(|| panic!("{table}: no row {key}"));
                    assert_eq!(row.doc, line, "{table}: row {key} archived as it was");
                    row
                })
                .collect();
            seen += rows.len();
            assert_eq!((&s.first_key, &s.last_key), (&rows[0].key, &rows[rows.len() - 1].key), "{table}");
            let times: Vec<i64> = rows.iter().filter_map(|r| r.micros).collect();
            let as_time = |us: Option<&i64>| us.map(|&us| chrono::DateTime::from_timestamp_micros(us).unwrap());
            assert_eq!(s.min_time, as_time(times.iter().min()), "{table}: {}", s.id);
            assert_eq!(s.max_time, as_time(times.iter().max()), "{table}: {}", s.id);
        }
        assert_eq!(seen as i64, due, "{table}");
    }
    server.stop().await.unwrap();
}

#[derive(QueryableByName, Debug, PartialEq)]
struct SqliteRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    snapshot: String,
}

async fn sqlite_rows(
    c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>,
) -> Vec<SqliteRow> {
    // typeof + an exact rendering of every value: a REAL that lost digits or a BLOB that came back
    // as text would differ.
    let exact = |c: &str| {
        format!(
            "typeof({c}) || ':' || CASE typeof({c}) WHEN 'real' THEN printf('%!.17g', {c}) WHEN 'blob' THEN hex({c}) ELSE ifnull({c}, '') END"
        )
    };
    let cols = ["created_at", "status", "body", "ratio", "data", "n"].map(exact).join(" || '|' || ");
    diesel::sql_query(format!("SELECT id, {cols} AS snapshot FROM events ORDER BY id")).load(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_archive_restore_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TEXT, status TEXT, body TEXT, ratio REAL, data BLOB, n INTEGER);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 600)
         INSERT INTO events SELECT i,
             datetime('now', '-' || (i % 200) || ' days'),
             CASE WHEN i % 4 = 0 THEN 'OPEN' ELSE 'DONE' END,
             CASE WHEN i % 9 = 0 THEN NULL ELSE 'ünïcode ✓ ' || i || char(10) || '\"' END,
             CASE WHEN i % 5 = 0 THEN NULL ELSE 0.1 * i + 1e-15 END,
             CASE WHEN i % 6 = 0 THEN NULL ELSE randomblob(16 + i % 7) END,
             CASE WHEN i % 8 = 0 THEN NULL ELSE i * 1000003 END
           FROM s;",
    )
    .await
    .unwrap();
    let original = sqlite_rows(&mut c).await;
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;

    let p = client
        .create_policy(&ArchivePolicy {
            filters: vec![Filter::new("status", FilterOp::In, &["DONE", "ARCHIVABLE"])],
            batch_size: 50,
            ..policy("events", "events", 30)
        })
        .await
        .unwrap();
    assert_eq!(p.schema_name, "main");
    let e = client
        .create_policy(&ArchivePolicy { table_name: "events\"; DROP TABLE events; --".into(), ..policy("x", "", 30) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument));
    // A value an INTEGER or REAL column cannot take would match nothing, silently, every run.
    for (column, value) in [("n", "1 OR 1=1"), ("id", "0x10"), ("ratio", "NaN")] {
        let e = client
            .create_policy(&ArchivePolicy {
                filters: vec![Filter::new(column, FilterOp::Eq, &[value])],
                ..policy("x", "events", 30)
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{column} = {value:?}: {e}");
    }
    let due = original
        .iter()
        .filter(|r| {
            let days = (r.id % 200) as u64;
            days >= 30 && r.id % 4 != 0
        })
        .count() as i64;
    assert_eq!(client.plan_archive("events").await.unwrap().rows, due);
    let r = start(&client, async || client.run_archive("events").await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!(r.rows_done, due);
    assert_eq!(sqlite_rows(&mut c).await.len() as i64, 600 - due);

    // Archived rows read back as JSON with BLOBs tagged.
    let mut blobs = 0;
    let n = client
        .read_archive("events", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let v: serde_json::Value = serde_json::from_str(&r).unwrap();
                if v["data"].is_object() {
                    assert!(v["data"]["$blob"].is_string());
                    blobs += 1;
                }
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n as i64, due);
    assert!(blobs > 0);

    let r = start(&client, async || client.restore_archive("events", &SegmentSelection::default()).await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!((r.rows_done, r.rows_skipped), (due, 0));
    assert_eq!(sqlite_rows(&mut c).await, original, "restored rows equal the originals, types and all");

    // Purge: OPEN rows older than 100 days go, with no segment.
    client
        .create_policy(&ArchivePolicy {
            filters: vec![Filter::new("status", FilterOp::Eq, &["OPEN"])],
            mode: PolicyMode::Purge,
            batch_size: 7,
            ..policy("purge-open", "events", 100)
        })
        .await
        .unwrap();
    let purge_due = original.iter().filter(|r| (r.id % 200) >= 100 && r.id % 4 == 0).count() as i64;
    let r = start(&client, async || client.run_archive("purge-open").await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!((r.kind, r.rows_done), (RunKind::Purge, purge_due));
    assert!(client.list_segments("purge-open").await.unwrap().is_empty());
    let left = sqlite_rows(&mut c).await;
    assert_eq!(left.len() as i64, 600 - purge_due);
    assert!(left.iter().all(|r| !((r.id % 200) >= 100 && r.id % 4 == 0)));
    server.stop().await.unwrap();
}

/// A time-range selection of more segments than the server reads per page (100): read and
/// restored oldest rows first, page after page, each row exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn range_selections_page_through_hundreds_of_segments() {
    const ROWS: i64 = 1200;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    // Row i is 100 + i hours old: the larger the id, the older the row.
    c.batch_execute(&format!(
        "CREATE TABLE log (id INTEGER PRIMARY KEY, created_at TEXT, v TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ROWS})
         INSERT INTO log SELECT i, datetime('now', '-' || (100 + i) || ' hours'), 'row ' || i FROM s;"
    ))
    .await
    .unwrap();
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    client.create_policy(&ArchivePolicy { batch_size: 4, ..policy("log", "log", 1) }).await.unwrap();
    let r = start(&client, async || client.run_archive("log").await).await;
    assert_eq!(finish(&client, &r.id).await.rows_done, ROWS);
    assert_eq!(client.list_segments("log").await.unwrap().len(), 300);
    let ids = async |c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::SqliteConnection>| {
        diesel::sql_query("SELECT id AS n FROM log ORDER BY id")
            .load::<N>(c)
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.n)
            .collect::<Vec<_>>()
    };
    assert!(ids(&mut c).await.is_empty());

    // Rows 300 to 900 hours old: ids 200..=800, about 150 segments, plus the rest of the two
    // segments at the edges.
    let now = chrono::Utc::now();
    let range = SegmentSelection {
        start: Some(now - chrono::Duration::hours(900)),
        end: Some(now - chrono::Duration::hours(300)),
        ids: vec![],
    };
    // Rows by segment, in the order read.
    let mut segments: Vec<(String, Vec<i64>)> = Vec::new();
    client
        .read_archive("log", &range, |segment, rows| {
            if segments.last().is_none_or(|(s, _)| *s != segment) {
                segments.push((segment.to_owned(), Vec::new()));
            }
            let ids = &mut segments.last_mut().unwrap().1;
            for r in rows {
                let v: serde_json::Value = serde_json::from_str(&r).unwrap();
                ids.push(v["id"].as_i64().unwrap());
            }
            Ok(())
        })
        .await
        .unwrap();
    // Oldest rows first: each segment's rows are older (larger ids) than the next segment's.
    for pair in segments.windows(2) {
        let (older, newer) = (&pair[0].1, &pair[1].1);
        assert!(newer.iter().max() < older.iter().min(), "{} read before {}", pair[0].0, pair[1].0);
    }
    let read: Vec<i64> = segments.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
    let unique: std::collections::BTreeSet<i64> = read.iter().copied().collect();
    assert_eq!(unique.len(), read.len(), "each row read once");
    let inner = 201..=799;
    assert!(inner.clone().all(|i| read.contains(&i)), "every row of the range read");
    assert!(read.len() <= inner.count() + 2 * 2 * 4, "{} rows read", read.len());

    let r = start(&client, async || client.restore_archive("log", &range).await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!((r.rows_done, r.rows_skipped), (read.len() as i64, 0));
    let mut back = read.clone();
    back.sort();
    assert_eq!(ids(&mut c).await, back, "the range's rows, restored once each");

    // The rest, unbounded: every other segment, page after page.
    let r = start(&client, async || client.restore_archive("log", &SegmentSelection::default()).await).await;
    let r = finish(&client, &r.id).await;
    assert_eq!((r.rows_done, r.rows_skipped), (ROWS - read.len() as i64, 0));
    assert_eq!(ids(&mut c).await, (1..=ROWS).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_shutdown_stop_runs_between_batches_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, created_at TEXT, body TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO t SELECT i, datetime('now', '-400 days'), 'row ' || i FROM s;",
    )
    .await
    .unwrap();
    let config = || test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config()).await.unwrap();
    let client = server.client().await;
    client.create_policy(&ArchivePolicy { batch_size: 5, ..policy("t", "t", 30) }).await.unwrap();
    let count = async |c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
        diesel::SqliteConnection,
    >| { diesel::sql_query("SELECT count(*) AS n FROM t").get_result::<N>(c).await.unwrap().n };

    // CancelRun: the run stops after its current batch, recorded as cancelled; what it did stays.
    let r = client.run_archive("t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = client.cancel_archive_run(&r.id).await.unwrap();
    assert!(asked.cancel_requested);
    let r = client.wait_archive_run(&r.id, Duration::from_millis(20)).await.unwrap();
    assert_eq!(r.state, RunState::Cancelled, "{r:?}");
    assert_eq!(r.error, "cancelled on request");
    assert!(r.rows_done > 0 && r.rows_done < 20000, "{r:?}");
    assert_eq!(count(&mut c).await, 20000 - r.rows_done);
    let archived: i64 = client.list_segments("t").await.unwrap().iter().map(|s| s.row_count).sum();
    assert_eq!(archived, r.rows_done);

    // Server shutdown: the run is cancelled and recorded as such, not left "running".
    let r2 = start(&client, async || client.run_archive("t").await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop().await.unwrap();
    let server = TestServer::start(config()).await.unwrap();
    let client = server.client().await;
    let r2 = client.archive_run(&r2.id).await.unwrap();
    assert_eq!((r2.state, r2.error.as_str()), (RunState::Cancelled, "server stopping"), "{r2:?}");
    let archived: i64 = client.list_segments("t").await.unwrap().iter().map(|s| s.row_count).sum();
    assert_eq!(count(&mut c).await + archived, 20000, "nothing lost or doubled");
    // A new run (in bigger batches) finishes the job.
    let p = client.policy("t").await.unwrap();
    client.update_policy(&ArchivePolicy { batch_size: 2000, ..p }, &["batch_size"]).await.unwrap();
    let r3 = start(&client, async || client.run_archive("t").await).await;
    finish(&client, &r3.id).await;
    assert_eq!(count(&mut c).await, 0);
    server.stop().await.unwrap();
}

/// An S3 server that stalls (a proxy that stops forwarding, connections left open) while a batch
/// holds its rows: the segment upload times out within the configured bound, the batch rolls back,
/// and an application's UPDATE of one of those rows, blocked meanwhile, proceeds. Nothing is lost;
/// once S3 answers again, the next run archives the rows (with the application's change).
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_object_store_releases_the_rows_within_the_timeouts() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("archive_stall").await.unwrap();
    let s3 = S3Server::start("strata-stall").unwrap();
    let proxy = strata_tests::proxy::StallProxy::start(s3.addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE messages (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
         INSERT INTO messages SELECT i, now() - make_interval(days => 400 - i / 10), 'message ' || i
           FROM generate_series(1, 3000) i;",
    )
    .await
    .unwrap();
    let due_sql = "SELECT count(*)::int8 AS n FROM messages WHERE created_at < now() - interval '90 days'";
    let due = pg_count(&mut c, due_sql).await;
    assert!(due > 1000, "{due}");
    let mut config = test_config(cluster.primary_url(&db), vec![], dir.path());
    config.object_store_url = s3.url_via(proxy.addr);
    // The batch holds its rows for at least one attempt's 8 s: long enough that a loaded machine
    // still sees it waiting and then the application's UPDATE blocked (with 1 s timeouts, the
    // whole window passed between two looks of this test on a loaded machine).
    config.s3_connect_timeout = Duration::from_secs(1);
    config.s3_read_timeout = Duration::from_secs(8);
    config.s3_attempt_timeout = Duration::from_secs(10);
    config.s3_max_attempts = 2;
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    client.create_policy(&ArchivePolicy { batch_size: 5000, ..policy("stall", "messages", 90) }).await.unwrap();

    proxy.stall();
    let began = std::time::Instant::now();
    let run = start(&client, async || client.run_archive("stall").await).await;
    // The batch holds the due rows while its upload waits on the stalled store: a session idle in
    // its transaction that has locked rows of the table (ROW SHARE, what SELECT … FOR UPDATE takes;
    // the metrics collector's size query, also briefly idle in its transaction, holds only ACCESS
    // SHARE). Judged on the look that saw it: a second look could come after the batch gave up.
    let waiting = "SELECT count(DISTINCT a.pid)::int8 AS n FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
                   WHERE a.datname = current_database() AND a.state = 'idle in transaction'
                     AND l.relation = 'messages'::regclass AND l.mode = 'RowShareLock'";
    let mut app = cluster.connect(&db).await.unwrap();
    let mut seen_waiting = false;
    for _ in 0..600 {
        if pg_count(&mut app, waiting).await > 0 {
            seen_waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen_waiting,
        "the batch never waited on the store ({:?} after the run started): {:?}",
        began.elapsed(),
        client.archive_run(&run.id).await
    );
    let waited_at = began.elapsed();
    // The application writes one of those rows: it waits for the batch's lock, then proceeds.
    let update = tokio::spawn(async move {
        app.batch_execute("SET lock_timeout = '120s'; UPDATE messages SET body = 'edited while stalled' WHERE id = 1")
            .await
            .map(|()| app)
    });
    let blocked = "SELECT count(*)::int8 AS n FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let mut seen_blocked = false;
    for _ in 0..1000 {
        if pg_count(&mut c, blocked).await > 0 {
            seen_blocked = true;
            break;
        }
        if update.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen_blocked,
        "the application's UPDATE never waited for the batch's row lock (batch seen waiting {waited_at:?} \
         after the run started, UPDATE ended by {:?}): {:?}",
        began.elapsed(),
        client.archive_run(&run.id).await
    );
    let ended =
        tokio::time::timeout(Duration::from_secs(90), client.wait_archive_run(&run.id, Duration::from_millis(50)))
            .await
            .expect("the run ends although the store never answers")
            .unwrap();
    assert_eq!(ended.state, RunState::Failed, "{ended:?}");
    assert_eq!(ended.rows_done, 0, "{ended:?}");
    let _app = tokio::time::timeout(Duration::from_secs(60), update)
        .await
        .expect("the UPDATE proceeds once the batch let go")
        .unwrap()
        .expect("the UPDATE succeeds");
    assert_eq!(pg_count(&mut c, due_sql).await, due, "every row is still in the table");

    // The store answers again: the rows are archived, the application's change with them.
    proxy.resume();
    let run = start(&client, async || client.run_archive("stall").await).await;
    let done = finish(&client, &run.id).await;
    assert_eq!(done.rows_done as i64, due);
    assert_eq!(pg_count(&mut c, due_sql).await, 0);
    let mut edited = Vec::new();
    let read = client
        .read_archive("stall", &SegmentSelection::default(), |_, rows| {
            edited.extend(rows.into_iter().filter(|r| r.contains("edited while stalled")));
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(read as i64, due);
    assert_eq!(edited.len(), 1, "the application's change is what was archived: {edited:?}");
    server.stop().await.unwrap();
}

/// On SQLite, column names with a `'` (or spaces, or SQL in them) archive and restore: each name
/// reaches SQL only quoted, in identifiers and in JSON paths alike.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_odd_column_names_archive_and_restore() {
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Row {
        #[diesel(sql_type = Text)]
        row: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let mut c = crate::support::sqlite(&db).await;
    c.batch_execute(
        "CREATE TABLE notes (\"it's\" INTEGER PRIMARY KEY, \"created at\" TEXT, \"x'); DROP TABLE notes; --\" TEXT,
                             \"blob's\" BLOB);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO notes SELECT i, datetime('now', '-' || (i % 100) || ' days'), 'note ' || i || ' ''quoted''',
                                  CASE WHEN i % 3 = 0 THEN NULL ELSE randomblob(8) END FROM s;",
    )
    .await
    .unwrap();
    let rows = async |c: &mut diesel_async::sync_connection_wrapper::SyncConnectionWrapper<
        diesel::SqliteConnection,
    >| {
        diesel::sql_query(
            "SELECT \"it's\" || '|' || \"created at\" || '|' || \"x'); DROP TABLE notes; --\" || '|' || ifnull(hex(\"blob's\"), 'null') AS row
               FROM notes ORDER BY \"it's\"",
        )
        .load::<Row>(c)
        .await
        .unwrap()
    };
    let original = rows(&mut c).await;
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    client
        .create_policy(&ArchivePolicy {
            time_column: "created at".into(),
            key_columns: vec!["it's".into()],
            batch_size: 40,
            ..policy("notes", "notes", 30)
        })
        .await
        .unwrap();
    let r = start(&client, async || client.run_archive("notes").await).await;
    let r = finish(&client, &r.id).await;
    assert!(r.rows_done > 100, "{r:?}");
    assert_eq!(rows(&mut c).await.len() as i64 + r.rows_done, original.len() as i64);
    let r = start(&client, async || client.restore_archive("notes", &SegmentSelection::default()).await).await;
    finish(&client, &r.id).await;
    assert_eq!(rows(&mut c).await, original, "every row back, exactly");
    server.stop().await.unwrap();
}
