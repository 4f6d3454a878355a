//! A fleet as it is deployed: three `strata-server` processes on one PostgreSQL catalog behind
//! HAProxy (HTTP/2 to clients and to the instances, round-robin per call, each instance checked on
//! its `/readyz`). One instance is stopped with SIGTERM, as an orchestrator does in a rolling
//! restart, while clients call through HAProxy at a steady rate: no call fails, because the
//! instance reports NOT_SERVING and keeps serving for its `shutdown_delay` before it drains.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use strata_client::{
    INSTANCE_HEADER,
    pb::{self, admin_service_client::AdminServiceClient, scheduler_service_client::SchedulerServiceClient},
};
use strata_tests::{
    PgCluster,
    haproxy::{Backend, Haproxy},
    process::ServerProcess,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// Concurrent callers, and the pause between one caller's calls.
const CALLERS: usize = 3;
const PERIOD: Duration = Duration::from_millis(5);
/// The stopped instance's `shutdown_delay`: ten of HAProxy's check intervals (200 ms).
const DELAY: &str = "2s";

/// One call through HAProxy: when it was sent and answered, and who answered (or the error).
struct Call {
    sent: Instant,
    answered: Instant,
    by: Result<String, String>,
}

/// Calls GetInfo and ListJobs (a catalog read) in turn every [`PERIOD`] until `stop`.
async fn caller(channel: Channel, first: usize, stop: CancellationToken) -> Vec<Call> {
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut scheduler = SchedulerServiceClient::new(channel);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = Vec::new();
    for i in first.. {
        tick.tick().await;
        if stop.is_cancelled() {
            break;
        }
        let sent = Instant::now();
        let metadata = if i % 2 == 0 {
            admin.get_info(pb::GetInfoRequest {}).await.map(|r| r.metadata().clone())
        } else {
            scheduler.list_jobs(pb::ListJobsRequest {}).await.map(|r| r.metadata().clone())
        };
        let by = match metadata {
            Ok(m) => m
                .get(INSTANCE_HEADER)
                .map(|v| v.to_str().unwrap().to_owned())
                .ok_or_else(|| format!("no {INSTANCE_HEADER} header")),
            Err(status) => Err(format!("{status:?}")),
        };
        calls.push(Call { sent, answered: Instant::now(), by });
    }
    calls
}

async fn connect(url: String) -> Channel {
    Endpoint::from_shared(url).unwrap().connect().await.expect("connect to haproxy")
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_of_an_instance_behind_haproxy_fails_no_call() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("fleet").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let db_url = cluster.primary_url(&db);
    let objects_url = format!("file://{}", objects.path().display());
    const VICTIM: usize = 1;
    let mut procs: Vec<ServerProcess> = (0..3)
        .map(|i| {
            let mut env = vec![
                ("STRATA_DATABASE_URL", db_url.as_str()),
                ("STRATA_OBJECT_STORE_URL", objects_url.as_str()),
                ("STRATA_RUN_SCHEDULER", "false"),
            ];
            if i == VICTIM {
                env.push(("STRATA_SHUTDOWN_DELAY", DELAY));
            }
            ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &env)
        })
        .collect();
    let mut ids = Vec::new();
    for p in &procs {
        ids.push(p.client().await.scheduler_status().await.unwrap().this_instance);
    }
    let victim = ids[VICTIM].clone();

    let backends: Vec<Backend> = procs.iter().map(|p| Backend { grpc: p.addr(), admin: p.admin_addr() }).collect();
    let proxy = Haproxy::start(&backends).await.unwrap();
    // Every instance answers through the proxy before the load starts.
    let channel = connect(proxy.url()).await;
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < ids.len() {
        assert!(Instant::now() < deadline, "through haproxy only {seen:?} answered of {ids:?}");
        if let Ok(r) = AdminServiceClient::new(channel.clone()).get_info(pb::GetInfoRequest {}).await
            && let Some(v) = r.metadata().get(INSTANCE_HEADER)
        {
            seen.insert(v.to_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stop = CancellationToken::new();
    let mut callers = Vec::new();
    for n in 0..CALLERS {
        let channel = connect(proxy.url()).await;
        callers.push(tokio::spawn(caller(channel, n, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sigterm_at = Instant::now();
    procs[VICTIM].sigterm();
    let status = procs[VICTIM].wait_exit(Duration::from_secs(60)).await;
    let exited_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut calls = Vec::new();
    for c in callers {
        calls.extend(c.await.unwrap());
    }

    let failed: Vec<&String> = calls.iter().filter_map(|c| c.by.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed, the first: {:?}\nthe stopped instance's log:\n{}",
        failed.len(),
        calls.len(),
        &failed[..failed.len().min(5)],
        procs[VICTIM].log()
    );
    assert!(status.success(), "the stopped instance exited with {status}; its log:\n{}", procs[VICTIM].log());
    let mut by_instance = BTreeMap::<&str, usize>::new();
    for c in &calls {
        *by_instance.entry(c.by.as_deref().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert!(by_instance.get(id.as_str()).is_some_and(|n| *n > 0), "{id} answered no call: {by_instance:?}");
    }
    assert_eq!(by_instance.len(), ids.len(), "answered by unknown instances: {by_instance:?}");
    // Calls sent once it had exited went to the others (and there were some).
    let after_exit: Vec<&Call> = calls.iter().filter(|c| c.sent > exited_at).collect();
    assert!(!after_exit.is_empty(), "no call was sent after the instance exited");
    assert!(
        after_exit.iter().all(|c| c.by.as_deref().unwrap() != victim),
        "the stopped instance answered a call sent after it exited"
    );

    let last = calls.iter().filter(|c| c.by.as_deref().unwrap() == victim).max_by_key(|c| c.sent).unwrap();
    println!(
        "{} calls, by instance {by_instance:?}; the stopped instance's last call was sent {:?} and answered {:?} \
         after SIGTERM; it exited {:?} after SIGTERM (shutdown_delay {DELAY})",
        calls.len(),
        last.sent.saturating_duration_since(sigterm_at),
        last.answered.saturating_duration_since(sigterm_at),
        exited_at - sigterm_at,
    );
    drop(proxy);
}
