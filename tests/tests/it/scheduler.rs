//! The scheduler on one instance (SQLite): job checks, pause / resume / run-now, stop / start,
//! bounded history, timeouts, shutdown and missed occurrences. The multi-instance exactly-once
//! test is `server/tests/scheduler_cluster.rs` (three processes on PostgreSQL).

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use strata_client::{
    Client,
    archive::{ArchivePolicy, RunState},
    scheduler::{JobChanges, JobKind, JobRunState, JobSpec},
};
use strata_tests::{TestServer, server::test_config};
use tonic::Code;

use crate::support::eventually;

fn job(name: &str, kind: JobKind, target: &str, schedule: &str) -> JobSpec {
    JobSpec::new(name, kind, schedule).target(target)
}

async fn finished_runs(c: &Client, job: &str) -> usize {
    c.list_job_runs(Some(job), 1000).await.unwrap().iter().filter(|r| r.state != JobRunState::Running).count()
}

async fn pause_builtin(c: &Client) {
    for j in c.list_jobs().await.unwrap() {
        c.pause_job(&j.spec.name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_checked_paused_resumed_run_now_stopped_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        test_config(format!("sqlite://{}", dir.path().join("s.db").display()), vec![], &dir.path().join("objects"));
    config.run_scheduler = true;
    config.job_history = 5;
    let server = TestServer::start(config).await.unwrap();
    let c = server.client().await;

    // The built-in jobs exist, each with its schedule.
    let builtin: Vec<(String, String)> =
        c.list_jobs().await.unwrap().into_iter().map(|j| (j.spec.name, j.spec.schedule)).collect();
    assert_eq!(
        builtin,
        [
            ("alert-evaluation".to_string(), "* * * * *".to_string()),
            ("backup".into(), "0 2 * * *".into()),
            ("maintenance".into(), "0 3 * * *".into()),
            ("metrics-sample".into(), "*/5 * * * *".into()),
            ("upload-expiry".into(), "*/10 * * * *".into()),
        ]
    );
    pause_builtin(&c).await;

    // Bad input: a clear status, nothing stored.
    let code = |r: Result<_, strata_client::Error>| r.map(|_: strata_client::scheduler::Job| ()).unwrap_err().code();
    assert_eq!(
        code(c.create_job(&job("x", JobKind::MetricsSample, "", "61 * * * *")).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(
            c.create_job(&JobSpec { time_zone: "Mars/Base".into(), ..job("x", JobKind::MetricsSample, "", "@daily") })
                .await
        ),
        Some(Code::InvalidArgument)
    );
    assert_eq!(
        code(c.create_job(&job("../x", JobKind::MetricsSample, "", "@daily")).await),
        Some(Code::InvalidArgument)
    );
    assert_eq!(code(c.create_job(&job("x", JobKind::Archive, "no-such-policy", "@daily")).await), Some(Code::NotFound));
    assert_eq!(code(c.create_job(&job("x", JobKind::Backup, "a-target", "@daily")).await), Some(Code::InvalidArgument));
    let with_option = JobSpec {
        options: [("ahead".to_string(), "3".to_string())].into(),
        ..job("x", JobKind::Maintenance, "", "@daily")
    };
    assert_eq!(code(c.create_job(&with_option).await), Some(Code::InvalidArgument));
    assert_eq!(c.list_jobs().await.unwrap().len(), 5, "nothing stored");
    let e = c.delete_job("backup").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition));
    assert_eq!(c.delete_job("nope").await.unwrap_err().code(), Some(Code::NotFound));

    // An every-second job runs every second, one run per occurrence.
    let tick = c.create_job(&job("tick", JobKind::MetricsSample, "", "* * * * * *")).await.unwrap();
    assert!(tick.next_run_at.is_some());
    assert_eq!(
        c.create_job(&job("tick", JobKind::MetricsSample, "", "@daily")).await.unwrap_err().code(),
        Some(Code::AlreadyExists)
    );
    eventually("three runs", Duration::from_secs(10), || {
        let c = c.clone();
        async move { (finished_runs(&c, "tick").await >= 3).then_some(()) }
    })
    .await;
    let runs = c.list_job_runs(Some("tick"), 100).await.unwrap();
    assert!(runs.iter().all(|r| r.state == JobRunState::Running || r.state == JobRunState::Succeeded), "{runs:?}");
    assert!(runs.iter().find(|r| r.state == JobRunState::Succeeded).unwrap().message.starts_with("snapshot "));
    let mut times: Vec<_> = runs.iter().map(|r| r.scheduled_at.unwrap()).collect();
    times.dedup();
    assert_eq!(times.len(), runs.len(), "one run per occurrence");

    // Paused: no new occurrence runs; run-now still does.
    let paused = c.pause_job("tick").await.unwrap();
    assert!(!paused.spec.enabled && paused.next_run_at.is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = c.list_job_runs(Some("tick"), 100).await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.list_job_runs(Some("tick"), 100).await.unwrap().len(), before, "a paused job ran");
    let manual = c.run_job_now("tick").await.unwrap();
    assert!(manual.manual);
    let manual = crate::support::finished_run(&c, &manual.id).await;
    assert_eq!(manual.state, JobRunState::Succeeded, "{manual:?}");
    let resumed = c.resume_job("tick").await.unwrap();
    assert!(resumed.spec.enabled && resumed.next_run_at.is_some());
    let resumed_at = chrono::Utc::now();
    eventually("runs after resume", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            let runs = c.list_job_runs(Some("tick"), 100).await.unwrap();
            (runs.iter().filter(|r| !r.manual && r.scheduled_at.unwrap() > resumed_at).count() >= 2).then_some(())
        }
    })
    .await;

    // History is bounded: job_history = 5 finished runs (plus a running one) are kept.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = c.list_job_runs(Some("tick"), 100).await.unwrap();
    assert!(kept.len() <= 6, "{} runs kept", kept.len());
    assert_eq!(kept.iter().filter(|r| r.state != JobRunState::Running).count(), 5, "{kept:?}");

    // Stopped: nothing scheduled runs on any instance; RunJobNow still works; started again, the
    // stopped period is skipped (no missed runs, no burst).
    let s = c.stop_scheduler().await.unwrap();
    assert!(!s.running);
    assert_eq!(s.changed_by, "loopback");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newest = c.list_job_runs(Some("tick"), 1).await.unwrap()[0].id.clone();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(c.list_job_runs(Some("tick"), 1).await.unwrap()[0].id, newest, "ran while stopped");
    let manual = c.run_job_now("tick").await.unwrap();
    assert_eq!(crate::support::finished_run(&c, &manual.id).await.state, JobRunState::Succeeded);
    let s = c.start_scheduler().await.unwrap();
    assert!(s.running);
    assert!(s.instances.iter().any(|i| i.id == s.this_instance && i.alive), "{s:?}");
    eventually("runs after start", Duration::from_secs(10), || {
        let c = c.clone();
        let manual = manual.id.clone();
        async move {
            let newest = &c.list_job_runs(Some("tick"), 1).await.unwrap()[0];
            (newest.id != manual && !newest.manual).then_some(())
        }
    })
    .await;
    let all = c.list_job_runs(None, 1000).await.unwrap();
    assert!(all.iter().all(|r| r.state != JobRunState::Missed), "{all:?}");

    // A schedule change takes effect from now; deleting removes the job and its history.
    let daily = c
        .update_job(
            "tick",
            JobChanges {
                schedule: Some("0 4 * * *".into()),
                time_zone: Some("Asia/Tokyo".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let next = daily.next_run_at.unwrap();
    assert_eq!(next.format("%H:%M:%S").to_string(), "19:00:00", "04:00 in Tokyo is 19:00 UTC");
    eventually("the running run to end", Duration::from_secs(10), || {
        let c = c.clone();
        async move { c.scheduler_status().await.unwrap().running_runs.is_empty().then_some(()) }
    })
    .await;
    c.delete_job("tick").await.unwrap();
    assert_eq!(c.job("tick").await.unwrap_err().code(), Some(Code::NotFound));
    assert_eq!(c.list_job_runs(Some("tick"), 10).await.unwrap_err().code(), Some(Code::NotFound));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn timeouts_shutdown_and_missed_occurrences_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let config = || {
        let mut c = test_config(format!("sqlite://{}", db.display()), vec![], &dir.path().join("objects"));
        c.run_scheduler = true;
        c.scheduler_catch_up = Duration::from_secs(1);
        c
    };
    let server = TestServer::start(config()).await.unwrap();
    let c = server.client().await;
    pause_builtin(&c).await;
    let mut conn = crate::support::sqlite(&db).await;
    conn.batch_execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, created_at TEXT, body TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
         INSERT INTO t SELECT i, datetime('now', '-400 days'), 'row ' || i FROM s;",
    )
    .await
    .unwrap();
    c.create_policy(&ArchivePolicy {
        name: "t".into(),
        table_name: "t".into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(30 * 86_400),
        batch_size: 5,
        ..Default::default()
    })
    .await
    .unwrap();

    // A run past its timeout is stopped and recorded as timed out; the archival run it started
    // stops after its batch and says so.
    let slow = JobSpec { timeout: Duration::from_millis(300), ..job("slow", JobKind::Archive, "t", "@yearly") };
    c.create_job(&slow).await.unwrap();
    let r = c.run_job_now("slow").await.unwrap();
    // Not twice at once.
    assert_eq!(c.run_job_now("slow").await.unwrap_err().code(), Some(Code::FailedPrecondition));
    let r = crate::support::finished_run(&c, &r.id).await;
    assert_eq!(r.state, JobRunState::TimedOut, "{r:?}");
    assert!(r.error.contains("timed out after 300ms"), "{r:?}");
    let archive_run = &c.list_archive_runs(Some("t"), 10).await.unwrap()[0];
    assert_eq!(archive_run.state, RunState::Cancelled, "{archive_run:?}");

    // A server shutdown cancels a running job and records it.
    c.update_job("slow", JobChanges { timeout: Some(Duration::ZERO), ..Default::default() }).await.unwrap();
    let r = c.run_job_now("slow").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // And an every-second job, to miss occurrences while no server runs.
    c.create_job(&job("tick", JobKind::MetricsSample, "", "* * * * * *")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.stop().await.unwrap();
    let stopped_at = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(4)).await;

    let server = TestServer::start(config()).await.unwrap();
    let c = server.client().await;
    let r = c.job_run(&r.id).await.unwrap();
    assert_eq!(r.state, JobRunState::Cancelled, "{r:?}");
    assert!(r.error.contains("shutting down"), "{r:?}");
    // The occurrences older than scheduler_catch_up (1 s) are recorded once as missed; the recent
    // ones run late; then the schedule goes on.
    let missed =
        eventually("a missed record", Duration::from_secs(10), || {
            let c = c.clone();
            async move {
                c.list_job_runs(Some("tick"), 100).await.unwrap().into_iter().find(|r| r.state == JobRunState::Missed)
            }
        })
        .await;
    assert!(missed.scheduled_at.unwrap() <= stopped_at + chrono::Duration::seconds(1), "{missed:?}");
    let count: u64 = missed.message.split(' ').next().unwrap().parse().unwrap();
    // About one per second of the 4 s outage, less the last second, plus a slow restart.
    assert!((2..=15).contains(&count), "{missed:?}");
    eventually("runs after the restart", Duration::from_secs(10), || {
        let (c, after) = (c.clone(), missed.scheduled_at);
        async move {
            let runs = c.list_job_runs(Some("tick"), 100).await.unwrap();
            runs.iter().any(|r| r.state == JobRunState::Succeeded && r.scheduled_at > after).then_some(())
        }
    })
    .await;
    server.stop().await.unwrap();
}
