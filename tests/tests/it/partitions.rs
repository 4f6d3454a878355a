//! Partition upkeep on a real partitioned PostgreSQL table: rows stranded in the default partition
//! rescued, premake, health (gaps, coverage), dropping whole old partitions; refusals on bad input
//! and on SQLite.

use std::time::Duration;

use clap::Parser;
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    cli::{Cli, run},
    operations::{ItemKind, OperationKind, OperationResult, OperationState},
    partitions::PartitionInterval::{Daily, Monthly},
    scheduler::{JobKind, JobRunState, JobSpec},
};
use strata_tests::{PgCluster, TestServer, pg::count};
use tonic::Code;

use crate::operations::{strata, watch};

#[tokio::test(flavor = "multi_thread")]
async fn rescue_premake_health_and_drop_on_postgres() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("parts").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // Rows from 1 to ~6 months back, none in the current month: all land in the default partition.
    c.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL, body text) PARTITION BY RANGE (at);
         CREATE TABLE events_default PARTITION OF events DEFAULT;
         CREATE TABLE plain (id int);
         INSERT INTO events SELECT i, date_trunc('month', now(), 'UTC') - make_interval(hours => 1 + i), 'e' || i
           FROM generate_series(1, 4000) i;",
    )
    .await
    .unwrap();
    let total = count(&mut c, "SELECT count(*)::int8 AS n FROM events").await;
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    let h = client.partition_health("public", "events").await.unwrap();
    assert_eq!((h.key_column.as_str(), h.key_type.as_str()), ("at", "timestamp with time zone"));
    assert_eq!((h.partitions.len(), h.default_rows), (1, total));
    assert!(h.partitions[0].is_default);

    // Bad input changes nothing.
    for (table, code) in [("events; DROP TABLE events", Code::InvalidArgument), ("plain", Code::FailedPrecondition)] {
        let e = client.ensure_partitions("public", table, Monthly, 3, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{table}: {e}");
    }
    // A past month whose rows sit in the default partition cannot be created over them.
    let e = client.ensure_partitions("public", "events", Monthly, 0, 2).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("rescue"), "{e}");

    // Rescue: every stranded row moves to a monthly partition, one month per transaction.
    let dry = client.rescue_default_rows("public", "events", Monthly, true).await.unwrap();
    assert_eq!((dry.rows_moved, dry.rows_left), (total, 0));
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, total, "dry run moved nothing");
    let r = client.rescue_default_rows("public", "events", Monthly, false).await.unwrap();
    assert_eq!((r.rows_moved, r.rows_left), (total, 0));
    assert_eq!(r.partitions_created.len(), dry.partitions_created.len());
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, total);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, 0);
    // Every row sits in the partition of its month.
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*)::int8 AS n FROM events e JOIN pg_class p ON p.oid = e.tableoid
              WHERE p.relname <> 'events_p' || to_char(e.at AT TIME ZONE 'UTC', 'YYYYMM')"
        )
        .await,
        0
    );

    // Premake: the current month and three ahead; rescued months are already covered.
    let (created, skipped) = client.ensure_partitions("public", "events", Monthly, 3, 1).await.unwrap();
    assert_eq!((created.len(), skipped), (4, 1));
    let (again, skipped) = client.ensure_partitions("public", "events", Monthly, 3, 1).await.unwrap();
    assert_eq!((again.len(), skipped), (0, 5), "idempotent");
    let h = client.partition_health("public", "events").await.unwrap();
    assert!(h.gaps.is_empty(), "{:?}", h.gaps);
    assert!(h.coverage_ahead > Duration::from_secs(85 * 86_400), "{:?}", h.coverage_ahead);
    assert_eq!(h.default_rows, 0);

    // A hole shows up as a gap.
    let ranges: Vec<_> = h.partitions.iter().filter(|p| !p.is_default).collect();
    let middle = ranges[ranges.len() / 2].clone();
    c.batch_execute(&format!("DROP TABLE \"{}\"", middle.name)).await.unwrap();
    let h = client.partition_health("public", "events").await.unwrap();
    assert_eq!(h.gaps, vec![(middle.start, middle.end)]);

    // Drop whole partitions older than ~100 days: listed first, then gone with their rows only.
    let older = Duration::from_secs(100 * 86_400);
    let due = client.drop_partitions("public", "events", older, true).await.unwrap();
    assert!(!due.is_empty());
    let limit = chrono::Utc::now() - chrono::Duration::from_std(older).unwrap();
    assert!(due.iter().all(|p| p.end.unwrap() <= limit));
    let kept_rows = count(
        &mut c,
        &format!(
            "SELECT count(*)::int8 AS n FROM events WHERE at >= '{}'",
            due.iter().map(|p| p.end.unwrap()).max().unwrap().to_rfc3339()
        ),
    )
    .await;
    let dropped = client.drop_partitions("public", "events", older, false).await.unwrap();
    assert_eq!(dropped.iter().map(|p| &p.name).collect::<Vec<_>>(), due.iter().map(|p| &p.name).collect::<Vec<_>>());
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, kept_rows);
    let left: Vec<String> =
        client.partition_health("public", "events").await.unwrap().partitions.into_iter().map(|p| p.name).collect();
    assert!(due.iter().all(|d| !left.contains(&d.name)));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_on_sqlite_are_a_clear_failed_precondition() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let client = server.client().await;
    let e = client.partition_health("main", "events").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert!(e.to_string().contains("SQLite has no table partitioning"), "{e}");
    // RescueDefaultRows too, before any operation starts; and so `strata partitions rescue --wait`.
    let e = client.start_rescue("main", "events", Monthly, false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("SQLite has no table partitioning"), "{e}");
    let url = server.url();
    let cli = Cli::try_parse_from(["strata", "--url", &url, "partitions", "rescue", "events", "--wait"]).unwrap();
    let e = run(cli, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(e.contains("FailedPrecondition") && e.contains("SQLite has no table partitioning"), "{e}");
    assert!(client.list_operations(None, 10).await.unwrap().is_empty(), "no operation recorded");
    server.stop().await.unwrap();
}

#[derive(QueryableByName)]
struct Doc {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    doc: String,
}

async fn docs(c: &mut diesel_async::AsyncPgConnection) -> std::collections::BTreeMap<i64, String> {
    diesel::sql_query("SELECT id, row_to_json(t)::text AS doc FROM logs t")
        .load::<Doc>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.doc))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_partitions_exports_whole_partitions_then_drops_them() {
    use strata_client::archive::{ArchivePolicy, RunState, SegmentSelection};
    let cluster = PgCluster::shared();
    let db = cluster.create_database("partarch").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE logs (id bigint NOT NULL, at timestamptz NOT NULL, msg text) PARTITION BY RANGE (at)",
    )
    .await
    .unwrap();
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;
    client.ensure_partitions("public", "logs", Monthly, 1, 6).await.unwrap();
    c.batch_execute(
        "INSERT INTO logs SELECT i, now() - make_interval(hours => i), 'log ' || i || ' ü' FROM generate_series(1, 4000) i",
    )
    .await
    .unwrap();
    let original = docs(&mut c).await;
    client
        .create_policy(&ArchivePolicy {
            name: "logs".into(),
            table_name: "logs".into(),
            time_column: "at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(60 * 86_400),
            batch_size: 300,
            ..Default::default()
        })
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(60);
    let before = client.partition_health("public", "logs").await.unwrap().partitions;
    let due: Vec<_> = before.iter().filter(|p| p.end.unwrap() <= cutoff).cloned().collect();
    assert!(due.len() >= 2, "{due:?}");
    let due_rows = original.values().filter(|d| {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).unwrap();
        due.iter().any(|p| at >= p.start.unwrap() && at < p.end.unwrap())
    });
    let due_rows = due_rows.count() as i64;

    let run = client.archive_partitions("logs").await.unwrap();
    let run = client.wait_archive_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    assert_eq!(run.rows_done, due_rows);
    let after: Vec<String> =
        client.partition_health("public", "logs").await.unwrap().partitions.into_iter().map(|p| p.name).collect();
    assert!(due.iter().all(|p| !after.contains(&p.name)), "due partitions dropped: {after:?}");
    assert_eq!(after.len(), before.len() - due.len());
    // Nothing is left detached or pending.
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM strata.detached_partitions").await, 0);
    // Hot rows + archived rows are exactly the original rows.
    let mut all = docs(&mut c).await;
    client
        .read_archive("logs", &SegmentSelection::default(), |_, rows| {
            for r in rows {
                let id = serde_json::from_str::<serde_json::Value>(&r).unwrap()["id"].as_i64().unwrap();
                assert!(all.insert(id, r).is_none(), "row {id} twice");
            }
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(all, original);

    // Recreate the months and restore: the table is whole again.
    client.ensure_partitions("public", "logs", Monthly, 1, 6).await.unwrap();
    let r = client.restore_archive("logs", &SegmentSelection::default()).await.unwrap();
    let r = client.wait_archive_run(&r.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!((r.state, r.rows_done), (RunState::Succeeded, due_rows));
    assert_eq!(docs(&mut c).await, original);
    server.stop().await.unwrap();
}

/// Partitions of `table` in the database, by name.
async fn partition_names(c: &mut diesel_async::AsyncPgConnection, table: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query(format!(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = '{table}'::regclass ORDER BY 1"
    ))
    .load::<Name>(c)
    .await
    .unwrap()
    .into_iter()
    .map(|n| n.name)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn integer_ranges_created_topped_up_and_reported() {
    use strata_client::partitions::PartitionKind;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("intparts").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE items (id bigint NOT NULL, body text) PARTITION BY RANGE (id);
         CREATE TABLE items_p0 PARTITION OF items FOR VALUES FROM (0) TO (1000);
         INSERT INTO items SELECT i, 'item ' || i FROM generate_series(0, 999) i;
         CREATE TABLE orders (id integer NOT NULL) PARTITION BY RANGE (id);
         CREATE TABLE orders_p0 PARTITION OF orders FOR VALUES FROM (0) TO (1000);
         CREATE TABLE orders_default PARTITION OF orders DEFAULT;
         INSERT INTO orders SELECT i FROM generate_series(0, 2500) i;
         CREATE TABLE tagged (tag text NOT NULL) PARTITION BY LIST (tag);
         CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL) PARTITION BY RANGE (at);",
    )
    .await
    .unwrap();
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    // Bad input changes nothing: no width, a negative one, a width on a time table, an interval on
    // an integer table, a list-partitioned table.
    for (table, width, code) in [
        ("items", 0, Code::InvalidArgument),
        ("items", -1000, Code::InvalidArgument),
        ("events", 1000, Code::InvalidArgument),
        ("tagged", 1000, Code::FailedPrecondition),
    ] {
        let e = client.ensure_integer_ranges("public", table, width, 2, 0).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{table} width {width}: {e}");
    }
    let e = client.ensure_partitions("public", "items", Monthly, 2, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("width"), "{e}");
    assert_eq!(partition_names(&mut c, "items").await, ["items_p0"]);
    assert!(partition_names(&mut c, "events").await.is_empty());

    // The range holding the largest key (999) exists: the two beyond it are created.
    let (created, skipped) = client.ensure_integer_ranges("public", "items", 1000, 2, 0).await.unwrap();
    let bounds = |parts: &[strata_client::partitions::PartitionInfo]| -> Vec<(String, Option<i64>, Option<i64>)> {
        parts.iter().map(|p| (p.name.clone(), p.start_key, p.end_key)).collect()
    };
    assert_eq!(
        bounds(&created),
        [("items_p1000".into(), Some(1000), Some(2000)), ("items_p2000".into(), Some(2000), Some(3000))]
    );
    assert_eq!(skipped, 1);
    // Rows up to 2500: topped up two beyond the range holding 2500; idempotent.
    c.batch_execute("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1000, 2500) i").await.unwrap();
    let (created, skipped) = client.ensure_integer_ranges("public", "items", 1000, 2, 0).await.unwrap();
    assert_eq!(
        bounds(&created),
        [("items_p3000".into(), Some(3000), Some(4000)), ("items_p4000".into(), Some(4000), Some(5000))]
    );
    assert_eq!(skipped, 1);
    let (again, skipped) = client.ensure_integer_ranges("public", "items", 1000, 2, 1).await.unwrap();
    assert_eq!((again.len(), skipped), (0, 4), "idempotent");
    // premake 0: the server's partition_premake_ranges (4) beyond the range of 2500.
    let (created, skipped) = client.ensure_integer_ranges("public", "items", 1000, 0, 0).await.unwrap();
    assert_eq!(created.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["items_p5000", "items_p6000"]);
    assert_eq!(skipped, 3);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM items_p2000").await, 501, "rows land in their range");

    let h = client.partition_health("public", "items").await.unwrap();
    assert_eq!((h.kind, h.key_column.as_str(), h.key_type.as_str()), (PartitionKind::IntegerRange, "id", "bigint"));
    let expected: Vec<(String, Option<i64>, Option<i64>)> =
        (0..7).map(|k| (format!("items_p{}", k * 1000), Some(k * 1000), Some(k * 1000 + 1000))).collect();
    assert_eq!(bounds(&h.partitions), expected);
    assert!(h.key_gaps.is_empty() && h.gaps.is_empty(), "{:?}", h.key_gaps);
    assert_eq!(h.default_rows, 0);
    let r = h.integer_range.unwrap();
    assert_eq!((r.max_key, r.keys_ahead), (Some(2500), 7000 - 2501));
    assert!(h.hash.is_none());

    // A hole shows up as a gap with integer bounds.
    c.batch_execute("DROP TABLE items_p4000").await.unwrap();
    let h = client.partition_health("public", "items").await.unwrap();
    assert_eq!(h.key_gaps, [(4000, 5000)]);

    // The scheduled premake job tops integer ranges up too, given a width; options that do not
    // fit the table's kind are refused when the job is created.
    let premake = |table: &str, options: &[(&str, &str)]| JobSpec {
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        enabled: false,
        ..JobSpec::new(&format!("premake-{table}-{}", options.len()), JobKind::PartitionPremake, "@daily")
            .target(&format!("public.{table}"))
    };
    for (table, options, wanted) in [
        ("items", &[][..], "width is required"),
        ("items", &[("width", "1000"), ("interval", "daily")][..], "interval is for time-range tables"),
        ("items", &[("width", "-5")][..], "positive"),
        ("events", &[("width", "1000")][..], "width is for integer-range tables"),
    ] {
        let e = client.create_job(&premake(table, options)).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{table} {options:?}: {e}");
        assert!(e.to_string().contains(wanted), "{table} {options:?}: {e}");
    }
    assert!(client.list_jobs().await.unwrap().iter().all(|j| !j.spec.name.starts_with("premake-")));
    client.create_job(&premake("items", &[("width", "1000"), ("ahead", "3")])).await.unwrap();
    let run = client.run_job_now("premake-items-2").await.unwrap();
    let run = client.wait_job_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(run.state, JobRunState::Succeeded, "{run:?}");
    // The range holding 2500 and three beyond it: all there but the hole at 4000.
    assert_eq!(run.message, "1 partition(s) created, 3 already there", "{run:?}");
    let h = client.partition_health("public", "items").await.unwrap();
    assert!(h.key_gaps.is_empty(), "{:?}", h.key_gaps);

    // A range over rows in the default partition: refused, nothing created, the rows counted.
    let e = client.ensure_integer_ranges("public", "orders", 1000, 1, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("rescue them first"), "{e}");
    assert_eq!(partition_names(&mut c, "orders").await, ["orders_default", "orders_p0"]);
    let h = client.partition_health("public", "orders").await.unwrap();
    assert_eq!((h.kind, h.key_type.as_str(), h.default_rows), (PartitionKind::IntegerRange, "integer", 1501));
    assert_eq!(h.integer_range.unwrap().keys_ahead, 0, "the largest key is past every range");

    // The time-only calls say so.
    let e = client.drop_partitions("public", "items", Duration::from_secs(1), true).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("time-range partitions only") && e.to_string().contains("integer range"), "{e}");
    let e = client.start_rescue("public", "orders", Monthly, true).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("time-range partitions only"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_partitions_created_and_skew_reported() {
    use strata_client::{archive::ArchivePolicy, partitions::PartitionKind};
    let cluster = PgCluster::shared();
    let db = cluster.create_database("hashparts").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE visits (user_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now()) PARTITION BY HASH (user_id);
         CREATE TABLE visits_a PARTITION OF visits FOR VALUES WITH (MODULUS 4, REMAINDER 0);
         CREATE TABLE visits_b PARTITION OF visits FOR VALUES WITH (MODULUS 4, REMAINDER 1);
         CREATE TABLE visits_c PARTITION OF visits FOR VALUES WITH (MODULUS 4, REMAINDER 2);
         CREATE TABLE bare (id bigint NOT NULL) PARTITION BY HASH (id);",
    )
    .await
    .unwrap();
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    let h = client.partition_health("public", "visits").await.unwrap();
    assert_eq!((h.kind, h.key_column.as_str(), h.key_type.as_str()), (PartitionKind::Hash, "user_id", "bigint"));
    let x = h.hash.unwrap();
    assert_eq!((x.modulus, x.missing_remainders.as_slice()), (4, &[3][..]));
    let hashes: Vec<(i32, i32)> =
        h.partitions.iter().map(|p| p.hash.map(|b| (b.modulus, b.remainder)).unwrap()).collect();
    assert_eq!(hashes, [(4, 0), (4, 1), (4, 2)]);

    // Bad input changes nothing.
    let e = client.ensure_integer_ranges("public", "visits", 1000, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let e = client.ensure_partitions("public", "visits", Monthly, 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    let e = client.ensure_hash_partitions("public", "bare").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert_eq!(partition_names(&mut c, "visits").await.len(), 3);

    // The missing remainder is created; idempotent.
    let (created, skipped) = client.ensure_hash_partitions("public", "visits").await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(
        (created[0].name.as_str(), created[0].hash.map(|b| (b.modulus, b.remainder))),
        ("visits_h3", Some((4, 3)))
    );
    assert_eq!(skipped, 3);
    let (again, skipped) = client.ensure_hash_partitions("public", "visits").await.unwrap();
    assert_eq!((again.len(), skipped), (0, 4));
    // A premake job on a hash table takes no options, and creates missing remainders.
    let job = |options: &[(&str, &str)]| JobSpec {
        options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        enabled: false,
        ..JobSpec::new("premake-visits", JobKind::PartitionPremake, "@daily").target("public.visits")
    };
    let e = client.create_job(&job(&[("ahead", "2")])).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("option ahead does not apply"), "{e}");
    client.create_job(&job(&[])).await.unwrap();
    let run = client.run_job_now("premake-visits").await.unwrap();
    let run = client.wait_job_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!((run.state, run.message.as_str()), (JobRunState::Succeeded, "0 partition(s) created, 4 already there"));

    // One heavy user: its partition holds most rows.
    c.batch_execute(
        "INSERT INTO visits (user_id) SELECT 7 FROM generate_series(1, 6000);
         INSERT INTO visits (user_id) SELECT i FROM generate_series(1, 2000) i;
         ANALYZE visits;",
    )
    .await
    .unwrap();
    let h = client.partition_health("public", "visits").await.unwrap();
    let x = h.hash.unwrap();
    assert!(x.missing_remainders.is_empty(), "{x:?}");
    assert!(x.row_skew > 1.5, "{x:?}");
    assert!(x.size_skew > 1.5, "{x:?}");
    for p in &h.partitions {
        let exact = count(&mut c, &format!("SELECT count(*)::int8 AS n FROM \"{}\"", p.name)).await;
        assert_eq!(p.estimated_rows, exact, "{}", p.name);
    }
    assert_eq!(h.partitions.iter().map(|p| p.estimated_rows).sum::<i64>(), 8000);

    // The time-only calls say so.
    let e = client.drop_partitions("public", "visits", Duration::from_secs(1), true).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("time-range partitions only") && e.to_string().contains("hash"), "{e}");
    client
        .create_policy(&ArchivePolicy {
            name: "visits".into(),
            table_name: "visits".into(),
            time_column: "at".into(),
            key_columns: vec!["user_id".into()],
            archive_after: Duration::from_secs(86_400),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = client.archive_partitions("visits").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("time-range partitions only"), "{e}");
    server.stop().await.unwrap();
}

/// RescueDefaultRows as an operation: it returns at once and shows its progress (days moved of
/// those found); a second one on the table is refused meanwhile; a cancel stops it between days,
/// each day moved whole (its rows, its partition, its item) and the oldest first; `strata
/// partitions rescue --wait` then moves the rest, each row into the partition of its day.
#[tokio::test(flavor = "multi_thread")]
async fn rescue_runs_as_an_operation_cancels_between_periods_and_waits() {
    // One period per transaction, each its own steps: the cancel comes after the first, long
    // before the last.
    const DAYS: i64 = 40;
    const PER_DAY: i64 = 25;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("parts_ops").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // PER_DAY rows on each of the DAYS days (UTC) before today, all in the default partition.
    c.batch_execute(&format!(
        "CREATE TABLE events (id bigint NOT NULL, at timestamptz NOT NULL, body text) PARTITION BY RANGE (at);
         CREATE TABLE events_default PARTITION OF events DEFAULT;
         INSERT INTO events SELECT i, date_trunc('day', now(), 'UTC') - make_interval(days => 1 + i % {DAYS})
             + make_interval(mins => i / {DAYS} * 50), 'e' || i
           FROM generate_series(0, {DAYS} * {PER_DAY} - 1) i;"
    ))
    .await
    .unwrap();
    let total = DAYS * PER_DAY;
    let misplaced = "SELECT count(*)::int8 AS n FROM events e JOIN pg_class p ON p.oid = e.tableoid
                      WHERE p.relname NOT IN ('events_default', 'events_p' || to_char(e.at AT TIME ZONE 'UTC', 'YYYYMMDD'))";
    let server = TestServer::postgres(cluster, &db, dir.path()).await.unwrap();
    let client = server.client().await;

    let op = client.start_rescue("public", "events", Daily, false).await.unwrap();
    assert_eq!((op.kind, op.state), (Some(OperationKind::Rescue), OperationState::Running), "{op:?}");
    assert_eq!(op.target, "public.events");
    let e = client.start_rescue("public", "events", Daily, true).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "one rescue of a table at a time: {e}");
    assert!(e.to_string().contains(&op.id), "{e}");
    let running = watch(&client, &op.id, |o| o.done > 0).await;
    assert_eq!(running.state, OperationState::Running, "{running:?}");
    assert_eq!(running.total, DAYS, "every day found before the first moves: {running:?}");
    let asked = client.cancel_operation(&op.id).await.unwrap();
    assert!(asked.cancel_requested, "{asked:?}");
    let ended = client.wait_operation(&op.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(ended.state, OperationState::Cancelled, "{ended:?}");
    assert_eq!(ended.error.as_deref(), Some("cancelled on request"));
    let OperationResult::Rescue { rows_moved, partitions_created: moved_days, rows_left } = ended.result else {
        panic!("{ended:?}")
    };
    assert_eq!(rows_left, total - rows_moved, "what it left, though cancelled: {ended:?}");
    assert!(moved_days >= running.done && moved_days < DAYS, "stopped between days: {ended:?}");
    assert_eq!(rows_moved, moved_days * PER_DAY, "{ended:?}");
    let items = client.all_operation_items(&op.id).await.unwrap();
    assert_eq!(items.len() as i64, moved_days, "{items:?}");
    assert!(items.iter().all(|i| i.kind == ItemKind::Partition && i.rows == PER_DAY), "{items:?}");
    let mut recorded: Vec<&str> = items.iter().map(|i| i.value.as_str()).collect();
    recorded.sort();
    let mut made = partition_names(&mut c, "events").await;
    made.retain(|n| n != "events_default");
    assert_eq!(made, recorded, "the partitions made are those recorded");
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, total - rows_moved);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, total);
    assert_eq!(count(&mut c, misplaced).await, 0);
    let newer = "SELECT count(*)::int8 AS n FROM events_default
                  WHERE at < (SELECT max(at) FROM events WHERE tableoid <> 'events_default'::regclass)";
    assert_eq!(count(&mut c, newer).await, 0, "the oldest days moved first");

    let (code, out) = strata(&server, &["partitions", "rescue", "events", "--interval", "daily", "--wait"]).await;
    assert_eq!(code, std::process::ExitCode::SUCCESS, "{out}");
    let summary = format!(
        "{} row(s) into {} partition(s); 0 left in the default partition",
        total - rows_moved,
        DAYS - moved_days
    );
    assert!(out.contains("succeeded") && out.contains(&summary), "{out}");
    let listed =
        out.lines().filter(|l| l.contains(" partition events_p") && l.ends_with(&format!(": {PER_DAY} row(s)")));
    assert_eq!(listed.count() as i64, DAYS - moved_days, "{out}");
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events_default").await, 0);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM events").await, total);
    assert_eq!(count(&mut c, misplaced).await, 0, "each row in the partition of its day");
    assert_eq!(partition_names(&mut c, "events").await.len() as i64, DAYS + 1);
    let ops = client.list_operations(Some(OperationKind::Rescue), 10).await.unwrap();
    let states: Vec<(OperationState, bool)> = ops.iter().map(|o| (o.state, o.id == op.id)).collect();
    assert_eq!(states, [(OperationState::Succeeded, false), (OperationState::Cancelled, true)], "newest first");
    server.stop().await.unwrap();
}
