//! Per-caller limits: a burst over the rate limit is answered RESOURCE_EXHAUSTED with a retry delay
//! while another caller goes on; calls in progress are capped per caller, WatchAlerts subscribers
//! per instance; a unary call past the default deadline is stopped and changes nothing.

use std::time::Duration;

use diesel::RunQueryDsl;
use strata_client::Error;
use strata_tests::{
    TestServer,
    server::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, test_config, test_tokens},
};
use tonic::Code;
use tonic_types::StatusExt as _;

fn config(dir: &std::path::Path) -> strata_server::config::Config {
    let mut c = test_config(format!("sqlite://{}", dir.join("s.db").display()), vec![], &dir.join("objects"));
    c.tokens = test_tokens();
    c
}

/// The retry delay a RESOURCE_EXHAUSTED answer carries.
fn retry_delay(e: &Error) -> Option<Duration> {
    match e {
        Error::Status(s) if s.code() == Code::ResourceExhausted => s.get_details_retry_info()?.retry_delay,
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_rate_is_refused_with_a_delay_while_another_caller_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    (c.rate_limit, c.rate_burst) = (5, 10);
    let server = TestServer::start(c).await.unwrap();
    let (viewer, operator) = (server.client_with(VIEWER_TOKEN).await, server.client_with(OPERATOR_TOKEN).await);

    // Twenty calls at once: the bucket holds ten, it refills at five a second.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let v = viewer.clone();
            tokio::spawn(async move { v.info().await })
        })
        .collect();
    let mut refused = Vec::new();
    let mut served = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => served += 1,
            Err(e) => refused.push(e),
        }
    }
    assert!((10..=12).contains(&served), "served {served} of 20 with a bucket of 10");
    for e in &refused {
        let delay = retry_delay(e).unwrap_or_else(|| panic!("RESOURCE_EXHAUSTED with RetryInfo: {e}"));
        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(1), "{delay:?}");
    }
    // Another caller is not affected.
    for _ in 0..8 {
        operator.info().await.unwrap();
    }
    // Waiting the delay is enough.
    tokio::time::sleep(retry_delay(&refused[0]).unwrap() + Duration::from_millis(50)).await;
    viewer.info().await.unwrap();
    // Health checks are never limited.
    for _ in 0..50 {
        assert_eq!(viewer.health("").await.unwrap(), strata_client::HealthStatus::Serving);
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_progress_and_alert_watchers_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    (c.max_calls_per_caller, c.max_alert_watchers) = (3, 4);
    let server = TestServer::start(c).await.unwrap();
    let viewer = server.client_with(VIEWER_TOKEN).await;

    // Three streams held open by one caller: a fourth call is refused at once, not queued.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(viewer.watch_alerts(false, None, None).await.unwrap());
    }
    let t = std::time::Instant::now();
    let e = viewer.info().await.unwrap_err();
    assert!(retry_delay(&e).is_some(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once");
    // Others are served, and the caller is again once a stream ends.
    let operator = server.client_with(OPERATOR_TOKEN).await;
    operator.info().await.unwrap();
    held.pop();
    let mut again = false;
    for _ in 0..50 {
        if viewer.info().await.is_ok() {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again, "a freed place is given back");

    // Four watchers on the instance in all: the fifth subscriber is refused.
    let admin = server.client_with(ADMIN_TOKEN).await;
    held.push(operator.watch_alerts(false, None, None).await.unwrap());
    held.push(admin.watch_alerts(false, None, None).await.unwrap());
    let e = admin.watch_alerts(false, None, None).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("max_alert_watchers"), "{e}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_call_past_the_default_deadline_is_stopped_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut c = config(dir.path());
    c.unary_deadline = Duration::from_millis(500);
    let server = TestServer::start(c).await.unwrap();
    let operator = server.client_with(OPERATOR_TOKEN).await;

    // Our write lock makes PauseJob wait (SQLite's busy timeout, 5 s) past the 500 ms deadline.
    let mut lock = crate::support::sqlite_sync(&path);
    diesel::sql_query("BEGIN IMMEDIATE").execute(&mut lock).unwrap();
    let t = std::time::Instant::now();
    let e = operator.pause_job("metrics-sample").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "stopped at the deadline, not after the busy timeout: {:?}",
        t.elapsed()
    );
    diesel::sql_query("COMMIT").execute(&mut lock).unwrap();
    // The stopped call paused nothing.
    let job = operator.job("metrics-sample").await.unwrap();
    assert!(job.spec.enabled, "{job:?}");
    // A client's own deadline is its own: a longer one is kept.
    diesel::sql_query("BEGIN IMMEDIATE").execute(&mut lock).unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        diesel::sql_query("COMMIT").execute(&mut lock).unwrap();
    });
    let patient = operator.clone().with_timeout(Duration::from_secs(10));
    patient.pause_job("metrics-sample").await.unwrap();
    release.await.unwrap();
    assert!(!operator.job("metrics-sample").await.unwrap().spec.enabled);
    server.stop().await.unwrap();
}
