//! Three real `strata-server` processes on one PostgreSQL catalog behind HAProxy, as a fleet is
//! deployed: the tests' clients talk only to HAProxy (round-robin per call, each instance checked
//! on its `/readyz`). Over about two and a half minutes (more than 130 ticks) every occurrence of
//! every job runs exactly once among them, a job never overlaps itself, and killing (SIGKILL) the
//! process holding a long archival run lets another instance take the run over and finish the
//! schedule. Two of the three run with their wall clock faked (libfaketime) 120 s ahead and 120 s
//! behind: every due time and lease follows the database's clock, so no occurrence runs early and
//! no lease is taken over before it lapsed (checked by a trigger stamping each claim, takeover and
//! end with the database's own time).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use strata_client::{
    Client, INSTANCE_HEADER,
    archive::ArchivePolicy,
    pb::{self, file_service_client::FileServiceClient, scheduler_service_client::SchedulerServiceClient},
    scheduler::{JobKind, JobRun, JobRunState, JobSpec},
};
use strata_tests::{
    PgCluster,
    haproxy::{Backend, Haproxy},
    pg::{count, free_port},
    process::ServerProcess,
};
use tonic::transport::{Channel, Endpoint};

/// Debian's libfaketime (package `faketime`, installed by `.ci/run`).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A server process; with `skew` (e.g. "+120s"), its wall clock is faked that far off while its
/// monotonic clock stays real, as on a host whose clock is wrong.
fn spawn(db_url: &str, objects: &std::path::Path, skew: Option<&str>) -> ServerProcess {
    spawn_with(db_url, objects, skew, &[])
}

/// [`spawn`] with more settings in the environment.
fn spawn_with(db_url: &str, objects: &std::path::Path, skew: Option<&str>, extra: &[(&str, &str)]) -> ServerProcess {
    let objects = format!("file://{}", objects.display());
    let mut env = vec![
        ("STRATA_DATABASE_URL", db_url),
        ("STRATA_OBJECT_STORE_URL", objects.as_str()),
        ("STRATA_RUN_LEASE", "1s"),
        ("STRATA_RUN_SCHEDULER", "true"),
        ("STRATA_SCHEDULER_POLL_INTERVAL", "100ms"),
        // Every run of the longest test (~150 per job) stays listed: the default keeps 100.
        ("STRATA_JOB_HISTORY", "1000"),
    ];
    if let Some(skew) = skew {
        assert!(std::path::Path::new(FAKETIME).exists(), "{FAKETIME} missing: apt-get install faketime");
        env.extend([("LD_PRELOAD", FAKETIME), ("FAKETIME", skew), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")]);
    }
    env.extend(extra.iter().copied());
    ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &env)
}

/// HAProxy in front of `procs`, once each of them answers through it (at most 60 s: they may still
/// be starting; their logs are shown otherwise); their instance ids, and a client of HAProxy.
async fn behind_haproxy(procs: &[ServerProcess]) -> (Haproxy, BTreeSet<String>, Client) {
    let backends: Vec<Backend> = procs.iter().map(|p| Backend { grpc: p.addr(), admin: p.admin_addr() }).collect();
    let proxy = Haproxy::start(&backends).await.unwrap();
    let ids = match proxy.wait_for_instances(procs.len(), Duration::from_secs(60)).await {
        Ok(ids) => ids,
        Err(e) => {
            let logs: Vec<String> = procs.iter().map(|p| format!("pid {}:\n{}", p.pid(), p.log())).collect();
            panic!("{e}\ntheir logs:\n{}", logs.join("\n"));
        }
    };
    let mut pids: Vec<u32> = ids.iter().map(|i| pid_of(i)).collect();
    let mut ours: Vec<u32> = procs.iter().map(ServerProcess::pid).collect();
    pids.sort_unstable();
    ours.sort_unstable();
    assert_eq!(pids, ours, "the instances answering through haproxy: {ids:?}");
    let client = Client::connect(proxy.url()).await.unwrap();
    (proxy, ids, client)
}

/// The process id in an instance id (`host:pid:random`).
fn pid_of(instance: &str) -> u32 {
    instance.split(':').nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("instance id {instance:?}"))
}

/// A gRPC channel to HAProxy for calls whose answering instance matters: the SDK does not show
/// response headers.
async fn raw_channel(proxy: &Haproxy) -> Channel {
    Endpoint::from_shared(proxy.url()).unwrap().connect().await.expect("connect to haproxy")
}

/// The instance that answered a call (its `x-strata-instance` header), or why none is named.
fn answered_by(metadata: &tonic::metadata::MetadataMap) -> String {
    match metadata.get(INSTANCE_HEADER) {
        Some(v) => v.to_str().unwrap().to_owned(),
        None => format!("(no {INSTANCE_HEADER} header)"),
    }
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

/// How long the cluster test runs its every-second and every-2-seconds jobs: a few minutes of them.
const RUN_FOR_SECS: i64 = 150;

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
    let mut procs: Vec<ServerProcess> =
        [None, Some("+120s"), Some("-120s")].into_iter().map(|skew| spawn(&db_url, objects.path(), skew)).collect();
    let (proxy, _, client) = behind_haproxy(&procs).await;
    // The fakes took: each skewed instance saw its clock differ from the database's by ~120 s.
    for (p, sign) in [(&procs[1], ""), (&procs[2], "-")] {
        // ahead_ms=1200xx for the one ahead, ahead_ms=-1200xx for the one behind.
        let log = p.log();
        assert!(
            log.lines().any(|l| l.contains("differs from the database's") && l.contains(&format!("ahead_ms={sign}1"))),
            "no clock skew reported by a faked instance:\n{log}"
        );
    }
    // Stamp every claim, takeover and end of a job run with the database's own time.
    c.batch_execute(
        "CREATE TABLE run_log (run_id text, kind text, run_trigger text, state text, scheduled_for timestamp,
                               old_lease timestamp, at timestamp, job text);
         CREATE FUNCTION log_run() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           IF TG_OP = 'INSERT' THEN
             INSERT INTO run_log VALUES (NEW.id, 'claim', NEW.run_trigger, NEW.state, NEW.scheduled_for, NULL,
                                         clock_timestamp() AT TIME ZONE 'UTC', NEW.job_name);
           ELSIF NEW.attempt > OLD.attempt THEN
             INSERT INTO run_log VALUES (NEW.id, 'takeover', NEW.run_trigger, NEW.state, NEW.scheduled_for,
                                         OLD.lease_until, clock_timestamp() AT TIME ZONE 'UTC', NEW.job_name);
           ELSIF OLD.state = 'running' AND NEW.state <> 'running' THEN
             INSERT INTO run_log VALUES (NEW.id, 'end', NEW.run_trigger, NEW.state, NEW.scheduled_for,
                                         OLD.lease_until, clock_timestamp() AT TIME ZONE 'UTC', NEW.job_name);
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER log_run AFTER INSERT OR UPDATE ON strata.job_runs FOR EACH ROW EXECUTE FUNCTION log_run();",
    )
    .await
    .unwrap();

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
            let pid = pid_of(&r.instance);
            break (r, pid);
        }
        assert!(Utc::now() - start < chrono::Duration::seconds(20), "the archive job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = procs.iter().position(|p| p.pid() == holder_pid).expect("the holder is one of ours");
    procs[victim].kill9();
    let killed_at = Utc::now();
    // The client goes on calling through HAProxy: its checks take the dead instance out of
    // rotation, and a call that could not connect to it meanwhile goes to another instance.

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

    // Run on for a few minutes of ticks, then let the tail settle.
    while Utc::now() - start < chrono::Duration::seconds(RUN_FOR_SECS) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settled = Utc::now() - chrono::Duration::seconds(6);
    let from = start + chrono::Duration::seconds(1);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let sample = runs_by_tick(&client, "sample", from, settled).await;
    // Lower bounds some 10 s short of the ~143 s between `from` and `settled`: every tick in
    // between is checked; these only say the run lasted that long.
    let sample_ticks = assert_exactly_once("sample", &sample, 1);
    assert!(sample_ticks >= 130, "{sample_ticks} ticks");
    let vacuum = runs_by_tick(&client, "vacuum", from, settled).await;
    let vacuum_ticks = assert_exactly_once("vacuum", &vacuum, 2);
    assert!(vacuum_ticks >= 65, "{vacuum_ticks} ticks");
    // Occurrences that came while the long run was going waited for it, then ran late, in order.
    let archive = runs_by_tick(&client, "archive", from, settled).await;
    let archive_ticks = assert_exactly_once("archive", &archive, 5);
    assert!(archive_ticks >= 24, "{archive_ticks} ticks");
    // A job never overlaps itself: by the database's clock (from the claim to the end the trigger
    // stamped; a run claimed while another of its job runs waits for that one to commit its end)…
    let overlaps = count(
        &mut c,
        "WITH spans AS (
           SELECT run_id, job,
                  min(at) FILTER (WHERE kind = 'claim' AND state = 'running') AS began,
                  coalesce(max(at) FILTER (WHERE kind = 'end'), 'infinity') AS ended
             FROM run_log GROUP BY run_id, job)
         SELECT count(*)::int8 AS n FROM spans a JOIN spans b ON a.job = b.job AND a.run_id < b.run_id
          WHERE a.began < b.ended AND b.began < a.ended",
    )
    .await;
    assert_eq!(overlaps, 0, "runs of a job overlapping by the database's clock");
    let ended = count(&mut c, "SELECT count(*)::int8 AS n FROM run_log WHERE kind = 'end'").await;
    let counted = (sample_ticks + vacuum_ticks + archive_ticks) as i64;
    assert!(ended >= counted, "{ended} ends logged for {counted} runs");
    // …and by the times the runs record.
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
    let stored =
        count(&mut c, &format!("SELECT count(*)::int8 AS n FROM strata.snapshots WHERE id BETWEEN {first} AND {last}"))
            .await;
    assert!(
        (sample_ticks as i64..=sample_ticks as i64 + taken_over).contains(&stored),
        "{stored} snapshots stored for {sample_ticks} ticks ({taken_over} taken over)"
    );
    // Every due row was archived exactly once: the hot table plus committed segments hold 40 000.
    let hot = count(&mut c, "SELECT count(*)::int8 AS n FROM events").await;
    let archived = count(
        &mut c,
        "SELECT coalesce(sum(row_count), 0)::int8 AS n FROM strata.archive_segments WHERE state = 'committed'",
    )
    .await;
    assert_eq!((hot, archived), (0, 40_000));
    // One clock: no scheduled occurrence was claimed before it was due, no run taken over before
    // its lease lapsed — by the database's time (50 ms for the instances' estimate of it).
    let early = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM run_log WHERE kind = 'claim' AND run_trigger = 'schedule'
           AND state = 'running' AND at < scheduled_for - interval '50 milliseconds'",
    )
    .await;
    assert_eq!(early, 0, "occurrences claimed before they were due");
    let claims = count(&mut c, "SELECT count(*)::int8 AS n FROM run_log WHERE kind = 'claim'").await;
    assert!(claims >= 200, "{claims} claims logged");
    let early_takeovers = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM run_log WHERE kind = 'takeover'
           AND (old_lease IS NULL OR at < old_lease - interval '50 milliseconds')",
    )
    .await;
    assert_eq!(early_takeovers, 0, "runs taken over before their lease lapsed");
    let takeovers = count(&mut c, "SELECT count(*)::int8 AS n FROM run_log WHERE kind = 'takeover'").await;
    assert!(takeovers >= 1, "the killed instance's run was taken over");

    // The work was shared: more than one instance ran sampling runs.
    let instances: std::collections::BTreeSet<&str> = sample.values().flatten().map(|r| r.instance.as_str()).collect();
    eprintln!("{sample_ticks} sample ticks, {vacuum_ticks} vacuum ticks on {} instances", instances.len());
    let status = client.scheduler_status().await.unwrap();
    assert!(status.running);
    assert_eq!(status.instances.iter().filter(|i| i.alive).count(), 2, "{status:?}");
    drop(proxy);
}

#[derive(QueryableByName)]
struct Runner {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    runner: Option<String>,
}

#[derive(QueryableByName)]
struct Blob {
    #[diesel(sql_type = diesel::sql_types::Text)]
    raw_ref: String,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    raw: Vec<u8>,
}

/// A blob migration started through HAProxy six times at once (round-robin: two calls on each
/// instance) has one runner; SIGKILLed, it is taken over by another instance once its lease lapsed
/// (by the database's clock: two instances run with their wall clock two minutes off) and every row
/// is moved exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_migration_has_one_runner_and_outlives_it() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("blobfleet").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    const ROWS: i64 = 3000;
    c.batch_execute(&format!(
        "CREATE TABLE docs (id bigint PRIMARY KEY, raw bytea, raw_ref text);
         INSERT INTO docs SELECT i, convert_to(repeat(md5(i::text), 64), 'UTF8'), NULL FROM generate_series(1, {ROWS}) i;
         CREATE TABLE docs_before AS SELECT id, raw FROM docs;"
    ))
    .await
    .unwrap();
    let db_url = cluster.primary_url(&db);
    let mut procs: Vec<ServerProcess> =
        [None, Some("+120"), Some("-120")].into_iter().map(|skew| spawn(&db_url, objects.path(), skew)).collect();
    let (proxy, ids, client) = behind_haproxy(&procs).await;
    // Stamp every change of runner with the database's own time and the lease it replaced.
    c.batch_execute(
        "CREATE TABLE runner_log (old_runner text, new_runner text, old_lease timestamp, at timestamp);
         CREATE FUNCTION log_runner() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
           INSERT INTO runner_log VALUES (OLD.runner, NEW.runner, OLD.lease_until, clock_timestamp() AT TIME ZONE 'UTC');
           RETURN NEW;
         END $$;
         CREATE TRIGGER log_runner AFTER UPDATE ON strata.blob_migrations FOR EACH ROW
           WHEN (OLD.runner IS DISTINCT FROM NEW.runner) EXECUTE FUNCTION log_runner();",
    )
    .await
    .unwrap();

    let request = pb::StartBlobMigrationRequest {
        table_name: "docs".into(),
        key_column: "id".into(),
        blob_column: "raw".into(),
        reference_column: "raw_ref".into(),
        encoding: pb::BlobEncoding::Bytea as i32,
        batch_size: 20,
        owner: "fleet".into(),
        ..Default::default()
    };
    // Started through HAProxy six times at once: it sends each call to the next instance in turn,
    // so every instance gets some. One migration, the other calls are told it exists.
    let channel = raw_channel(&proxy).await;
    let results = futures::future::join_all((0..6).map(|_| {
        let (mut files, request) = (FileServiceClient::new(channel.clone()), request.clone());
        async move {
            match files.start_blob_migration(request).await {
                Ok(r) => (answered_by(r.metadata()), Ok(r.into_inner())),
                Err(status) => (answered_by(status.metadata()), Err(status)),
            }
        }
    }))
    .await;
    let answering: BTreeSet<String> = results.iter().map(|(by, _)| by.clone()).collect();
    assert_eq!(answering, ids, "the starts were not answered by every instance: {results:?}");
    let started: Vec<_> = results.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
    assert_eq!(started.len(), 1, "{results:?}");
    for e in results.iter().filter_map(|(_, r)| r.as_ref().err()) {
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    }
    let id = started[0].migration.as_ref().unwrap().id.clone();

    // Kill its runner mid-way.
    let t0 = std::time::Instant::now();
    loop {
        let m = client.blob_migration(&id).await.unwrap();
        if m.rows_done >= 200 {
            assert_eq!(m.state, "running", "{m:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the migration never got going: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runner = diesel::sql_query("SELECT runner FROM strata.blob_migrations WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(&id)
        .get_result::<Runner>(&mut c)
        .await
        .unwrap()
        .runner
        .expect("a running migration has a runner");
    let pid = pid_of(&runner);
    let victim = procs.iter().position(|p| p.pid() == pid).expect("the runner is one of ours");
    procs[victim].kill9();

    // Still through HAProxy, which takes the dead instance out of rotation.
    let done = loop {
        let m = client.blob_migration(&id).await.unwrap();
        if m.state != "running" {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "the migration never finished: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done.state.as_str(), done.rows_done), ("done", ROWS), "{done:?}");

    // Every row moved exactly once: cleared, pointing at its own file, one file per row.
    assert_eq!(
        count(&mut c, "SELECT count(*)::int8 AS n FROM docs WHERE raw IS NULL AND raw_ref IS NOT NULL").await,
        ROWS
    );
    assert_eq!(count(&mut c, "SELECT count(DISTINCT raw_ref)::int8 AS n FROM docs").await, ROWS);
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM strata.files WHERE owner = 'fleet'").await, ROWS);
    // The bytes are the originals (a sample, read back through HAProxy from the survivors).
    let sample: Vec<Blob> = diesel::sql_query(
        "SELECT d.raw_ref, b.raw FROM docs d JOIN docs_before b USING (id) WHERE d.id % 97 = 1 ORDER BY d.id",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert!(sample.len() >= 30);
    for b in sample {
        assert_eq!(client.download_bytes(&b.raw_ref, 0, 0).await.unwrap(), b.raw, "file {}", b.raw_ref);
    }
    // One takeover, from the killed runner, and not before its lease lapsed by the database's time.
    let takeovers = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM runner_log WHERE old_runner IS NOT NULL AND new_runner IS NOT NULL",
    )
    .await;
    assert_eq!(takeovers, 1, "exactly one takeover");
    let early = count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM runner_log WHERE old_lease IS NULL OR at < old_lease - interval '50 milliseconds'",
    )
    .await;
    assert_eq!(early, 0, "taken over before the lease lapsed");
    drop(proxy);
}

/// 50 alerts fire at once on a fleet of three (clocks two minutes apart) whose webhook receiver
/// fails the first 50 requests and then recovers: every notification is delivered, retries carry
/// the same delivery id, and no delivery is answered 200 twice — each send is leased to one
/// instance and only the lease holder records the attempt.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_alerts_are_each_delivered_once_by_a_fleet() {
    use strata_client::alerts::{AlertMetric, AlertRule};
    let hook = strata_tests::notify::WebhookSink::start(50).await.unwrap();
    let cluster = PgCluster::shared();
    let db = cluster.create_database("notify").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    // 50 tables of ~200 KiB each, past a 100 kB threshold.
    let mut ddl = String::new();
    for i in 0..50 {
        ddl.push_str(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY, v text); INSERT INTO t{i} SELECT g, repeat('x', 1000) FROM generate_series(1, 200) g;"
        ));
    }
    c.batch_execute(&ddl).await.unwrap();
    let db_url = cluster.primary_url(&db);
    let url = hook.url();
    let extra = [("STRATA_ALERT_WEBHOOK_URL", url.as_str()), ("STRATA_ALERT_NOTIFY_ATTEMPTS", "20")];
    let procs: Vec<ServerProcess> = [None, Some("+120"), Some("-120")]
        .into_iter()
        .map(|skew| spawn_with(&db_url, objects.path(), skew, &extra))
        .collect();
    let (proxy, _, client) = behind_haproxy(&procs).await;
    for j in client.list_jobs().await.unwrap() {
        client.pause_job(&j.spec.name).await.unwrap();
    }
    for mut r in client.list_rules().await.unwrap() {
        r.enabled = false;
        client.update_rule(&r, &["enabled"]).await.unwrap();
    }
    client.create_rule(&AlertRule::new("big-tables", AlertMetric::TableSize, Some(100_000.0), None)).await.unwrap();
    let run = client.run_job_now("alert-evaluation").await.unwrap();
    let t0 = std::time::Instant::now();
    let run = loop {
        let r = client.job_run(&run.id).await.unwrap();
        if r.state != JobRunState::Running {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "evaluation never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.state, JobRunState::Succeeded, "{run:?}");
    assert!(run.message.contains("50 fired"), "{}", run.message);

    // Every notification delivered (answered 200) once. The built-in rules fire too before the
    // test disables them when this machine's disk is past disk-used's 80 % (a firing and then a
    // resolved notification): the 50 are counted among the big-tables rule's deliveries, and every
    // delivery, theirs included, must be answered 200 exactly once.
    let rule_of = |r: &strata_tests::notify::Received| {
        let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        doc["alert"]["rule"].as_str().unwrap_or_default().to_owned()
    };
    let ok_by_id = |rule: Option<&str>| {
        let mut by = BTreeMap::<String, usize>::new();
        for r in hook.received().iter().filter(|r| r.status == 200 && rule.is_none_or(|x| rule_of(r) == x)) {
            *by.entry(r.headers["x-strata-delivery"].clone()).or_default() += 1;
        }
        by
    };
    while ok_by_id(Some("big-tables")).len() < 50 {
        assert!(t0.elapsed() < Duration::from_secs(120), "{} of 50 delivered", ok_by_id(Some("big-tables")).len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past any retry that could still come (the longest backoff after 50 failures is a few seconds).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let received = hook.received();
    assert_eq!(ok_by_id(Some("big-tables")).len(), 50);
    let ok = ok_by_id(None);
    assert!(ok.values().all(|n| *n == 1), "a delivery answered 200 twice: {ok:?}");
    let others: Vec<String> = received.iter().map(rule_of).filter(|r| r != "big-tables").collect();
    assert!(others.iter().all(|r| r == "disk-used"), "deliveries of other rules: {others:?}");
    let failed: Vec<&str> =
        received.iter().filter(|r| r.status != 200).map(|r| r.headers["x-strata-delivery"].as_str()).collect();
    assert_eq!(failed.len(), 50, "the first 50 requests failed");
    // Retries carry the id of the delivery they retry.
    assert!(failed.iter().all(|id| ok.contains_key(*id)), "a failed delivery never succeeded");
    // The catalog agrees: each delivery sent once, every attempt recorded once.
    let sent = count(&mut c, "SELECT count(*)::int8 AS n FROM strata.alert_notifications WHERE state = 'sent'").await;
    let attempts = count(&mut c, "SELECT coalesce(sum(attempts), 0)::int8 AS n FROM strata.alert_notifications").await;
    if (sent, attempts) != (ok.len() as i64, received.len() as i64) {
        // What the instances said about recording attempts (the likely culprit).
        for p in &procs {
            for l in p.log().lines().filter(|l| l.contains("notification") && !l.contains("INFO")) {
                eprintln!("{}: {l}", p.pid());
            }
        }
    }
    assert_eq!((sent, attempts), (ok.len() as i64, received.len() as i64));
    let notified = count(&mut c, "SELECT count(*)::int8 AS n FROM strata.alert_events WHERE kind = 'notified'").await;
    assert_eq!(notified, ok.len() as i64);
    drop(proxy);
}

/// The previous release's server (built by `tests/setup.sh` from the commit in
/// `tests/upgrade-from`), beside this build's binary in the target directory.
fn previous_server() -> std::path::PathBuf {
    let commit = include_str!("../../tests/upgrade-from").trim();
    let target = std::path::Path::new(env!("CARGO_BIN_EXE_strata-server")).parent().unwrap().parent().unwrap();
    let path = target.join("previous").join(format!("strata-server-{commit}"));
    assert!(path.exists(), "{} missing: run tests/setup.sh (it builds the previous release)", path.display());
    path
}

/// Uploads `data` as `name` through `channel`: the file's id and the instance that wrote it.
async fn upload(channel: &Channel, name: &str, data: bytes::Bytes) -> (String, String) {
    use pb::upload_request::Kind;
    let header = pb::FileHeader {
        name: name.into(),
        owner: "o".into(),
        size_bytes: Some(data.len() as i64),
        ..Default::default()
    };
    let msgs =
        [pb::UploadRequest { kind: Some(Kind::Header(header)) }, pb::UploadRequest { kind: Some(Kind::Chunk(data)) }];
    let r = FileServiceClient::new(channel.clone()).upload(futures::stream::iter(msgs)).await.unwrap();
    let by = answered_by(r.metadata());
    (r.into_inner().file.expect("the uploaded file").id, by)
}

/// Downloads file `id` through `channel`: its bytes and the instance that read them.
async fn download(channel: &Channel, id: &str) -> (Vec<u8>, String) {
    let request = pb::DownloadRequest { file_id: id.into(), offset: 0, length: 0 };
    let r = FileServiceClient::new(channel.clone()).download(request).await.unwrap();
    let by = answered_by(r.metadata());
    let (mut stream, mut data) = (r.into_inner(), Vec::new());
    while let Some(m) = stream.message().await.unwrap() {
        data.extend_from_slice(&m.chunk);
    }
    (data, by)
}

/// A rolling upgrade behind HAProxy: an instance of the previous release keeps serving, scheduling
/// and migrating blobs while an instance of this one upgrades the catalog under it and runs beside
/// it; every occurrence runs once, every row moves once, each sees what the other wrote. The
/// clients talk only to HAProxy; which release answered a call is told by its `x-strata-instance`
/// header.
#[tokio::test(flavor = "multi_thread")]
async fn the_previous_release_and_this_one_share_a_catalog() {
    let old_bin = previous_server();
    let cluster = PgCluster::shared();
    let db = cluster.create_database("upgrade").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    c.batch_execute(
        "CREATE TABLE docs (id bigint PRIMARY KEY, raw bytea, raw_ref text);
         INSERT INTO docs SELECT i, convert_to(repeat(md5(i::text), 32), 'UTF8'), NULL FROM generate_series(1, 600) i;",
    )
    .await
    .unwrap();
    let db_url = cluster.primary_url(&db);
    let objects_url = format!("file://{}", objects.path().display());
    let env = [
        ("STRATA_DATABASE_URL", db_url.as_str()),
        ("STRATA_OBJECT_STORE_URL", objects_url.as_str()),
        ("STRATA_RUN_LEASE", "1s"),
        ("STRATA_RUN_SCHEDULER", "true"),
        ("STRATA_SCHEDULER_POLL_INTERVAL", "100ms"),
    ];
    // The previous release creates the catalog, then this one upgrades it while it runs. One
    // HAProxy throughout, as deployed: the new instance's place is in its configuration from the
    // start, out of rotation until that instance is up and passes the checks.
    let old = ServerProcess::spawn(old_bin.to_str().unwrap(), &env);
    let loopback = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let new_backend = Backend { grpc: loopback(free_port()), admin: loopback(free_port()) };
    let proxy = Haproxy::start(&[Backend { grpc: old.addr(), admin: old.admin_addr() }, new_backend]).await.unwrap();
    let old_instance = match proxy.wait_for_instances(1, Duration::from_secs(60)).await {
        Ok(ids) => ids.into_iter().next().unwrap(),
        Err(e) => panic!("{e}\nthe previous release's log:\n{}", old.log()),
    };
    assert_eq!(pid_of(&old_instance), old.pid(), "{old_instance}");
    let client = Client::connect(proxy.url()).await.unwrap();
    for j in client.list_jobs().await.unwrap() {
        client.pause_job(&j.spec.name).await.unwrap();
    }
    let files = raw_channel(&proxy).await;
    // Only the old one is up: it writes this one.
    let (before, by) = upload(&files, "before", bytes_of("from the old one")).await;
    assert_eq!(by, old_instance);
    let (new_listen, new_admin_listen) = (new_backend.grpc.to_string(), new_backend.admin.to_string());
    let mut new_env = env.to_vec();
    new_env.extend([("STRATA_LISTEN", new_listen.as_str()), ("STRATA_ADMIN_LISTEN", new_admin_listen.as_str())]);
    let new = ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &new_env);
    let ids = match proxy.wait_for_instances(2, Duration::from_secs(60)).await {
        Ok(ids) => ids,
        Err(e) => panic!("{e}\nthis release's log:\n{}\nthe previous release's log:\n{}", new.log(), old.log()),
    };
    let new_instance = ids.iter().find(|i| **i != old_instance).unwrap().clone();
    assert_eq!(pid_of(&new_instance), new.pid(), "{ids:?}");
    let level = count(&mut c, "SELECT compat_level AS n FROM strata.catalog_info").await;
    assert_eq!(level, 1);

    // The old one still works on the upgraded catalog: files both ways. Uploads through HAProxy
    // until each release has written one (it sends each call to the next instance in turn), then
    // every file read back through it until each release has served it.
    let both = BTreeSet::from([old_instance.clone(), new_instance.clone()]);
    let mut written = vec![(before, bytes_of("from the old one"), old_instance.clone())];
    for i in 0.. {
        let writers: BTreeSet<String> = written[1..].iter().map(|(_, _, by)| by.clone()).collect();
        if writers == both {
            break;
        }
        assert!(i < 10, "{i} uploads through haproxy after the upgrade, written by {writers:?} only");
        let data = bytes::Bytes::from(format!("upload {i}, after the upgrade"));
        let (id, by) = upload(&files, &format!("after-{i}"), data.clone()).await;
        assert!(both.contains(&by), "{by}");
        written.push((id, data, by));
    }
    for (id, data, writer) in &written {
        let mut readers = BTreeSet::new();
        for _ in 0..10 {
            let (got, by) = download(&files, id).await;
            assert_eq!(got, *data, "file {id}, written by {writer}, read by {by}");
            readers.insert(by);
            if readers == both {
                break;
            }
        }
        assert_eq!(readers, both, "file {id}, written by {writer}");
    }

    // A blob migration started by the old one is left to it while it makes progress. After a call
    // the new one answered, HAProxy sends the next one (the start) to the old one.
    let request = pb::StartBlobMigrationRequest {
        table_name: "docs".into(),
        key_column: "id".into(),
        blob_column: "raw".into(),
        reference_column: "raw_ref".into(),
        encoding: pb::BlobEncoding::Bytea as i32,
        batch_size: 10,
        owner: "upgrade".into(),
        ..Default::default()
    };
    let mut scheduler = SchedulerServiceClient::new(files.clone());
    for i in 0.. {
        assert!(i < 10, "through haproxy the new release answered none of {i} calls");
        let r = scheduler.get_scheduler_status(pb::GetSchedulerStatusRequest {}).await.unwrap();
        if answered_by(r.metadata()) == new_instance {
            break;
        }
    }
    let started = FileServiceClient::new(files.clone()).start_blob_migration(request).await.unwrap();
    assert_eq!(answered_by(started.metadata()), old_instance, "the start went to this release");
    let id = started.into_inner().migration.unwrap().id;

    // Both schedule: an every-second job runs once per occurrence across the two versions.
    let start = Utc::now();
    client.create_job(&job("tick", JobKind::MetricsSample, "", "* * * * * *")).await.unwrap();
    let t0 = std::time::Instant::now();
    let done = loop {
        let m = client.blob_migration(&id).await.unwrap();
        if m.state != "running" {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "the migration never finished: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done.state.as_str(), done.rows_done), ("done", 600), "{done:?}");
    while Utc::now() - start < chrono::Duration::seconds(12) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = Utc::now() - chrono::Duration::seconds(3);
    let ticks = runs_by_tick(&client, "tick", start + chrono::Duration::seconds(1), settled).await;
    assert!(assert_exactly_once("tick", &ticks, 1) >= 8);
    let versions: BTreeSet<&str> = ticks.values().flatten().map(|r| r.instance.as_str()).collect();
    eprintln!("ticks run by {} instance(s)", versions.len());
    // Every row moved once; the old release ran it alone (it holds the lease; nobody took it over).
    assert_eq!(
        count(&mut c, "SELECT count(*)::int8 AS n FROM docs WHERE raw IS NULL AND raw_ref IS NOT NULL").await,
        600
    );
    assert_eq!(count(&mut c, "SELECT count(*)::int8 AS n FROM strata.files WHERE owner = 'upgrade'").await, 600);
    let runner = diesel::sql_query("SELECT runner FROM strata.blob_migrations WHERE id = $1")
        .bind::<diesel::sql_types::Text, _>(&id)
        .get_result::<Runner>(&mut c)
        .await
        .unwrap();
    assert_eq!(runner.runner, Some(old_instance), "taken over from a live runner of the previous release");
    drop((proxy, old, new));
}

fn bytes_of(s: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(s.as_bytes())
}
