//! Three real `strata-server` processes on one PostgreSQL catalog: over more than 50 ticks every
//! occurrence of every job runs exactly once among them, a job never overlaps itself, and killing
//! (SIGKILL) the process holding a long archival run lets another instance take the run over and
//! finish the schedule.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client,
    archive::ArchivePolicy,
    scheduler::{JobKind, JobRun, JobRunState, JobSpec},
};
use strata_tests::{PgCluster, process::ServerProcess};

fn spawn(db_url: &str, objects: &std::path::Path) -> ServerProcess {
    let objects = format!("file://{}", objects.display());
    ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", db_url),
            ("STRATA_OBJECT_STORE_URL", &objects),
            ("STRATA_RUN_LEASE", "1s"),
            ("STRATA_RUN_SCHEDULER", "true"),
            ("STRATA_SCHEDULER_POLL_INTERVAL", "100ms"),
        ],
    )
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn job(name: &str, kind: JobKind, target: &str, schedule: &str) -> JobSpec {
    JobSpec { timeout: Duration::from_secs(600), ..JobSpec::new(name, kind, schedule).target(target) }
}

/// The scheduled runs of `job` for occurrences in [from, to], by occurrence.
async fn runs_by_tick(
    c: &Client,
    job: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> BTreeMap<DateTime<Utc>, Vec<JobRun>> {
    let mut by = BTreeMap::<DateTime<Utc>, Vec<JobRun>>::new();
    for r in c.list_job_runs(Some(job), 100_000).await.unwrap() {
        let t = r.scheduled_at.unwrap();
        if !r.manual && t >= from && t <= to {
            by.entry(t).or_default().push(r);
        }
    }
    by
}

/// Every occurrence of `schedule_secs`-second ticks in [from, to] has exactly one run, which
/// succeeded; returns the number of ticks.
fn assert_exactly_once(job: &str, by: &BTreeMap<DateTime<Utc>, Vec<JobRun>>, every: i64) -> usize {
    let ticks: Vec<_> = by.keys().copied().collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            every,
            "{job}: a tick between {} and {} never ran",
            pair[0],
            pair[1]
        );
    }
    for (t, runs) in by {
        assert_eq!(runs.len(), 1, "{job} at {t}: {runs:?}");
        assert_eq!(runs[0].state, JobRunState::Succeeded, "{job} at {t}: {:?}", runs[0]);
    }
    ticks.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_run_every_tick_exactly_once_and_survive_a_kill() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("sched").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // Enough rows, archived in small batches, for one archival run to last several seconds.
    c.batch_execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
         INSERT INTO events SELECT i, now() - interval '400 days' + make_interval(secs => i), 'event ' || i || repeat(' x', i % 50)
           FROM generate_series(1, 40000) i;
         CREATE TABLE scratch (id bigint PRIMARY KEY, v text);",
    )
    .await
    .unwrap();
    let db_url = cluster.primary_url(&db);
    let mut procs: Vec<ServerProcess> = (0..3).map(|_| spawn(&db_url, objects.path())).collect();
    let client = procs[0].client().await;
    for p in &procs[1..] {
        p.client().await;
    }

    // Only the test's jobs run: the built-in ones are paused.
    for j in client.list_jobs().await.unwrap() {
        assert!(j.builtin);
        client.pause_job(&j.spec.name).await.unwrap();
    }
    client
        .create_policy(&ArchivePolicy {
            name: "events".into(),
            table_name: "events".into(),
            time_column: "created_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(30 * 86_400),
            batch_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Utc::now();
    client.create_job(&job("sample", JobKind::MetricsSample, "", "* * * * * *")).await.unwrap();
    client.create_job(&job("vacuum", JobKind::Maintenance, "scratch", "*/2 * * * * *")).await.unwrap();
    client.create_job(&job("archive", JobKind::Archive, "events", "*/5 * * * * *")).await.unwrap();

    // Kill the process holding the first (long) archival run as soon as it runs.
    let (held, holder_pid) = loop {
        let runs = client.list_job_runs(Some("archive"), 10).await.unwrap();
        if let Some(r) = runs.into_iter().find(|r| r.state == JobRunState::Running) {
            let pid: u32 = r.instance.split(':').nth(1).unwrap().parse().unwrap();
            break (r, pid);
        }
        assert!(Utc::now() - start < chrono::Duration::seconds(20), "the archive job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = procs.iter().position(|p| p.pid() == holder_pid).expect("the holder is one of ours");
    procs[victim].kill9();
    let killed_at = Utc::now();
    let survivor = procs.iter().position(|p| p.pid() != holder_pid).unwrap();
    let client = procs[survivor].client().await;

    // Another instance takes the run over once its 1 s lease lapses, and finishes it.
    let done = loop {
        let r = client.job_run(&held.id).await.unwrap();
        if r.state != JobRunState::Running {
            break r;
        }
        assert!(Utc::now() - killed_at < chrono::Duration::seconds(120), "the held run never finished: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.state, JobRunState::Succeeded, "{done:?}");
    assert_eq!(done.attempt, 2, "{done:?}");
    assert!(!done.instance.contains(&format!(":{holder_pid}:")), "{done:?}");

    // Run on until the every-second job has seen more than 50 ticks, then let the tail settle.
    while Utc::now() - start < chrono::Duration::seconds(62) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = Utc::now() - chrono::Duration::seconds(6);
    let from = start + chrono::Duration::seconds(1);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sample = runs_by_tick(&client, "sample", from, settled).await;
    let sample_ticks = assert_exactly_once("sample", &sample, 1);
    assert!(sample_ticks >= 50, "{sample_ticks} ticks");
    let vacuum = runs_by_tick(&client, "vacuum", from, settled).await;
    let vacuum_ticks = assert_exactly_once("vacuum", &vacuum, 2);
    assert!(vacuum_ticks >= 24, "{vacuum_ticks} ticks");
    // Occurrences that came while the long run was going waited for it, then ran late, in order.
    let archive = runs_by_tick(&client, "archive", from, settled).await;
    assert!(assert_exactly_once("archive", &archive, 5) >= 9);
    // A job never overlaps itself.
    for by in [&sample, &vacuum, &archive] {
        let runs: Vec<&JobRun> = by.values().flatten().collect();
        for pair in runs.windows(2) {
            assert!(pair[0].ended_at.unwrap() <= pair[1].started_at.unwrap(), "{:?} overlaps {:?}", pair[0], pair[1]);
        }
    }
    // The work, not only the bookkeeping, happened once per tick: each sampling run names the
    // snapshot it stored ("snapshot N: …"); they are distinct, and the snapshot table holds no
    // other row between the first and the last of them (but one per run killed mid-way and
    // taken over).
    let taken_over = sample.values().flatten().filter(|r| r.attempt > 1).count() as i64;
    let ids: std::collections::BTreeSet<i64> = sample
        .values()
        .flatten()
        .map(|r| r.message.strip_prefix("snapshot ").and_then(|m| m.split(':').next()).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len(), sample_ticks, "one snapshot per run");
    // (Through iter(): Diesel's RunQueryDsl::first would shadow BTreeSet::first.)
    let (first, last) = (ids.iter().next().unwrap(), ids.iter().next_back().unwrap());
    let stored = diesel::sql_query(format!(
        "SELECT count(*)::int8 AS n FROM strata.snapshots WHERE id BETWEEN {first} AND {last}"
    ))
    .get_result::<Count>(&mut c)
    .await
    .unwrap()
    .n;
    assert!(
        (sample_ticks as i64..=sample_ticks as i64 + taken_over).contains(&stored),
        "{stored} snapshots stored for {sample_ticks} ticks ({taken_over} taken over)"
    );
    // Every due row was archived exactly once: the hot table plus committed segments hold 40 000.
    let hot = diesel::sql_query("SELECT count(*)::int8 AS n FROM events").get_result::<Count>(&mut c).await.unwrap().n;
    let archived = diesel::sql_query(
        "SELECT coalesce(sum(row_count), 0)::int8 AS n FROM strata.archive_segments WHERE state = 'committed'",
    )
    .get_result::<Count>(&mut c)
    .await
    .unwrap()
    .n;
    assert_eq!((hot, archived), (0, 40_000));
    // The work was shared: more than one instance ran sampling runs.
    let instances: std::collections::BTreeSet<&str> = sample.values().flatten().map(|r| r.instance.as_str()).collect();
    eprintln!("{sample_ticks} sample ticks, {vacuum_ticks} vacuum ticks on {} instances", instances.len());
    let status = client.scheduler_status().await.unwrap();
    assert!(status.running);
    assert_eq!(status.instances.iter().filter(|i| i.alive).count(), 2, "{status:?}");
}
