//! `kill -9` of a real `strata-server` process at random points during archival runs: after every
//! kill, each original row is exactly once either in the table or in a committed segment; after
//! the last restart a re-run finishes the job and leaves no pending segment or stray object.

use std::{collections::BTreeMap, time::Duration};

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client,
    archive::{ArchivePolicy, RunState},
};
use strata_tests::{PgCluster, S3Server, process::ServerProcess};

const BUCKET: &str = "strata-crash";

#[derive(QueryableByName)]
struct Doc {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    doc: String,
}

#[derive(QueryableByName)]
struct Seg {
    #[diesel(sql_type = Text)]
    object_key: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    row_count: i64,
}

fn spawn(db_url: &str, s3_url: &str) -> ServerProcess {
    ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", db_url),
            ("STRATA_OBJECT_STORE_URL", s3_url),
            ("STRATA_RUN_LEASE", "1s"),
            ("STRATA_RUN_SCHEDULER", "false"),
        ],
    )
}

async fn hot(c: &mut AsyncPgConnection) -> BTreeMap<i64, String> {
    diesel::sql_query("SELECT id, row_to_json(t)::text AS doc FROM chat t")
        .load::<Doc>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.id, d.doc))
        .collect()
}

/// Every row of every committed segment, read from the S3 server's files. Panics on a row that
/// appears twice.
async fn archived(c: &mut AsyncPgConnection, s3: &S3Server) -> (BTreeMap<i64, String>, usize) {
    let segs: Vec<Seg> =
        diesel::sql_query("SELECT object_key, state, row_count FROM strata.archive_segments").load(c).await.unwrap();
    let mut out = BTreeMap::new();
    let mut pending = 0;
    for s in segs {
        if s.state != "committed" {
            pending += 1;
            continue;
        }
        let bytes = std::fs::read(s3.root.join(BUCKET).join(&s.object_key)).expect("committed segment object");
        let text = String::from_utf8(zstd::decode_all(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(text.lines().count() as i64, s.row_count);
        for line in text.lines() {
            let id = serde_json::from_str::<serde_json::Value>(line).unwrap()["id"].as_i64().unwrap();
            assert!(out.insert(id, line.to_owned()).is_none(), "row {id} is in two committed segments");
        }
    }
    (out, pending)
}

/// Starts a run, waiting while the killed server's lease (1 s) has not expired yet.
async fn start_run(client: &Client) -> strata_client::archive::ArchiveRun {
    loop {
        match client.run_archive("chat").await {
            Ok(r) => return r,
            Err(e) if e.to_string().contains("busy") => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Table ∪ committed segments equals the original, each row exactly once.
async fn check_exactly_once(c: &mut AsyncPgConnection, s3: &S3Server, original: &BTreeMap<i64, String>) -> usize {
    let table = hot(c).await;
    let (segments, _) = archived(c, s3).await;
    for id in table.keys() {
        assert!(!segments.contains_key(id), "row {id} is both in the table and in a segment");
    }
    let mut all = table.clone();
    all.extend(segments.clone());
    assert_eq!(all.len(), original.len(), "rows lost");
    assert!(all == *original, "a row changed");
    segments.len()
}

/// The rows of `chat`: 30,000 over 400 days, ids in time order.
const ROWS: &str = "INSERT INTO chat
    SELECT i, now() - make_interval(days => 400 - i / 125), 'message ' || i || repeat(' lorem', i % 40), i * 1.5
      FROM generate_series(1, 30000) i;";

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_archival_loses_and_duplicates_nothing() {
    kill_9_during_archival(
        "crash",
        &format!(
            "CREATE TABLE chat (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text, n numeric); {ROWS}"
        ),
    )
    .await;
}

/// The same on a table partitioned by month (rows of different partitions share locations), with
/// the oldest rows in its default partition.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_archival_of_a_partitioned_table_loses_and_duplicates_nothing() {
    kill_9_during_archival(
        "crash_partitioned",
        &format!(
            "CREATE TABLE chat (id bigint NOT NULL, created_at timestamptz NOT NULL, body text, n numeric,
                                PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
             DO $$
             DECLARE m int;
             BEGIN
               FOR m IN 0..12 LOOP
                 EXECUTE format('CREATE TABLE chat_m%s PARTITION OF chat FOR VALUES FROM (%L) TO (%L)', m,
                   date_trunc('month', now()) - make_interval(months => 11 - m),
                   date_trunc('month', now()) - make_interval(months => 10 - m));
               END LOOP;
             END $$;
             CREATE TABLE chat_default PARTITION OF chat DEFAULT;
             {ROWS}"
        ),
    )
    .await;
}

async fn kill_9_during_archival(name: &str, ddl: &str) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database(name).await.unwrap();
    let s3 = S3Server::start(BUCKET).unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(ddl).await.unwrap();
    let original = hot(&mut c).await;
    let db_url = cluster.primary_url(&db);

    // The policy is created through a first server, which is then killed as well.
    let mut first = spawn(&db_url, &s3.url());
    first
        .client()
        .await
        .create_policy(&ArchivePolicy {
            name: "chat".into(),
            table_name: "chat".into(),
            time_column: "created_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(30 * 86_400),
            batch_size: 40,
            ..Default::default()
        })
        .await
        .unwrap();
    first.kill9();

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = seed;
    let mut next = move || {
        // xorshift64: reproducible from the printed seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    eprintln!("kill points seed {seed}");
    let mut kills_mid_run = 0;
    let mut attempts = 0;
    let mut last_killed = None;
    while kills_mid_run < 22 {
        attempts += 1;
        assert!(attempts < 60, "could not kill mid-run often enough ({kills_mid_run} of 22)");
        let before = check_exactly_once(&mut c, &s3, &original).await;
        let mut p = spawn(&db_url, &s3.url());
        let client = p.client().await;
        // The killed server's lease must expire (1 s) before a new run may take the policy over.
        let run = start_run(&client).await;
        // Short random delays: a faster machine must not finish the table before 22 kills.
        tokio::time::sleep(Duration::from_millis(next() % 250)).await;
        let still_running = client.archive_run(&run.id).await.map(|r| r.state == RunState::Running).unwrap_or(false);
        p.kill9();
        let after = check_exactly_once(&mut c, &s3, &original).await;
        if still_running {
            kills_mid_run += 1;
            last_killed = Some(run.id.clone());
        }
        eprintln!("kill {attempts}: archived rows {before} -> {after}, mid-run: {still_running}");
        assert!(after >= before);
    }

    // A last server finishes the job; leftovers of the crashes are cleaned.
    let mut p = spawn(&db_url, &s3.url());
    let client = p.client().await;
    // Once its lease (1 s) has lapsed, the last killed run reads as interrupted, not running.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed = client.archive_run(last_killed.as_deref().expect("a run killed mid-way")).await.unwrap();
    assert_eq!(killed.state, RunState::Failed, "{killed:?}");
    assert!(killed.error.contains("interrupted"), "{killed:?}");
    let run = start_run(&client).await;
    let run = client.wait_archive_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let archived_rows = check_exactly_once(&mut c, &s3, &original).await;
    let due = original.len() - hot(&mut c).await.len();
    assert_eq!(archived_rows, due);
    let due_left: i64 = diesel::sql_query(
        "SELECT count(*)::int8 AS id, '' AS doc FROM chat WHERE created_at < now() - interval '30 days'",
    )
    .get_result::<Doc>(&mut c)
    .await
    .unwrap()
    .id;
    assert_eq!(due_left, 0);
    let (_, pending) = archived(&mut c, &s3).await;
    assert_eq!(pending, 0, "pending segments of killed runs were cleaned up");
    // Every object under archive/ belongs to a committed segment.
    let keys: Vec<Seg> = diesel::sql_query("SELECT object_key, state, row_count FROM strata.archive_segments")
        .load(&mut c)
        .await
        .unwrap();
    let mut on_disk = Vec::new();
    let root = s3.root.join(BUCKET);
    let mut stack = vec![root.join("archive")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                on_disk.push(e.path().strip_prefix(&root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    on_disk.sort();
    let mut expected: Vec<String> = keys.into_iter().map(|s| s.object_key).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "no stray objects");
    // The interrupted runs are recorded as such, not left running.
    let runs = client.list_archive_runs(Some("chat"), 1000).await.unwrap();
    assert!(runs.iter().filter(|r| r.state == RunState::Running).count() == 0, "{runs:?}");
    p.kill9();
}
