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
    pg::count,
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

/// Rows in the table plus rows in committed segments: the original count when every row is in
/// exactly one of them (a duplicate adds one, a loss takes one away).
async fn hot_plus_archived(c: &mut diesel_async::AsyncPgConnection) -> i64 {
    count(c, "SELECT count(*)::int8 AS n FROM chat").await
        + count(
            c,
            "SELECT coalesce(sum(row_count), 0)::int8 AS n FROM strata.archive_segments WHERE state = 'committed'",
        )
        .await
}

/// An archival run started through HAProxy; the instance running it is SIGKILLed mid-batch; the
/// run started again through HAProxy (another instance, once the lease lapsed) finishes the
/// table: every row exactly once, in the table or in a committed segment.
#[tokio::test(flavor = "multi_thread")]
async fn archival_through_haproxy_survives_its_instance_killed() {
    use diesel_async::SimpleAsyncConnection;
    let cluster = PgCluster::shared();
    let db = cluster.create_database("fleetarch").await.unwrap();
    let objects = tempfile::tempdir().unwrap();
    let mut c = cluster.connect(&db).await.unwrap();
    const ROWS: i64 = 20_000;
    c.batch_execute(&format!(
        "CREATE TABLE chat (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, body text);
         INSERT INTO chat SELECT i, now() - interval '400 days' + make_interval(secs => i), 'message ' || i || repeat(' lorem', i % 40)
           FROM generate_series(1, {ROWS}) i;"
    ))
    .await
    .unwrap();
    let db_url = cluster.primary_url(&db);
    let objects_url = format!("file://{}", objects.path().display());
    let env = [
        ("STRATA_DATABASE_URL", db_url.as_str()),
        ("STRATA_OBJECT_STORE_URL", objects_url.as_str()),
        ("STRATA_RUN_SCHEDULER", "false"),
        ("STRATA_RUN_LEASE", "1s"),
    ];
    let mut procs: Vec<ServerProcess> =
        (0..3).map(|_| ServerProcess::spawn(env!("CARGO_BIN_EXE_strata-server"), &env)).collect();
    let mut ids = Vec::new();
    for p in &procs {
        ids.push(p.client().await.scheduler_status().await.unwrap().this_instance);
    }
    let backends: Vec<Backend> = procs.iter().map(|p| Backend { grpc: p.addr(), admin: p.admin_addr() }).collect();
    let proxy = Haproxy::start(&backends).await.unwrap();
    let client = strata_client::Client::connect(proxy.url()).await.unwrap();
    client
        .create_policy(&strata_client::archive::ArchivePolicy {
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

    // Started through HAProxy: the answer names the instance running it.
    let mut archive = pb::archive_service_client::ArchiveServiceClient::new(connect(proxy.url()).await);
    let started = archive.run_archive(pb::RunArchiveRequest { policy: "chat".into() }).await.unwrap();
    let runner = started.metadata().get(INSTANCE_HEADER).unwrap().to_str().unwrap().to_owned();
    let run_id = started.into_inner().run.unwrap().id;
    let victim = ids.iter().position(|i| *i == runner).expect("one of ours ran it");
    // Mid-batch: some segments committed, the run still going.
    let t0 = Instant::now();
    loop {
        let r = client.archive_run(&run_id).await.unwrap();
        assert_eq!(r.state, strata_client::archive::RunState::Running, "finished before the kill: {r:?}");
        if r.rows_done >= 400 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the run never got going: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    procs[victim].kill9();
    assert_eq!(hot_plus_archived(&mut c).await, ROWS, "after the kill");

    // Run again through HAProxy: refused as busy until the dead run's lease lapses, then another
    // instance takes the policy and finishes.
    let run = loop {
        match client.run_archive("chat").await {
            Ok(r) => break r,
            Err(e) if e.to_string().contains("busy") || e.code() == Some(tonic::Code::Unavailable) => {
                assert!(t0.elapsed() < Duration::from_secs(120), "never runnable again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let run = client.wait_archive_run(&run.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(run.state, strata_client::archive::RunState::Succeeded, "{run:?}");
    assert_eq!(hot_plus_archived(&mut c).await, ROWS, "every row exactly once");
    assert_eq!(
        count(&mut c, "SELECT count(*)::int8 AS n FROM chat WHERE created_at < now() - interval '30 days'").await,
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*)::int8 AS n FROM strata.archive_segments WHERE state <> 'committed'").await,
        0,
        "the killed run's pending segment was cleaned up"
    );
    let killed = client.archive_run(&run_id).await.unwrap();
    assert_eq!(killed.state, strata_client::archive::RunState::Failed, "{killed:?}");
    drop(proxy);
}

/// When HAProxy answers a call itself — here 503, since the only instance is not there — the
/// client gets a gRPC status it understands (UNAVAILABLE, with HAProxy's reason), not HAProxy's
/// HTML page read as a garbled message ("invalid compression flag").
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_own_errors_reach_clients_as_grpc_statuses() {
    // Ports nobody listens on: the check fails and no server is up.
    let gone = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (grpc, admin) =
        (std::net::TcpListener::bind("127.0.0.1:0").unwrap(), std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let backend =
        Backend { grpc: gone(grpc.local_addr().unwrap().port()), admin: gone(admin.local_addr().unwrap().port()) };
    drop((grpc, admin));
    let proxy = Haproxy::start(&[backend]).await.unwrap();
    let mut admin = AdminServiceClient::new(connect(proxy.url()).await);
    let e = admin.get_info(pb::GetInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("HAProxy 503"), "{e:?}");
    // The same through the SDK (whose uploads and downloads retry UNAVAILABLE).
    let client = strata_client::Client::connect(proxy.url()).await.unwrap();
    let e = client.info().await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e:?}");
}

/// Waits until `log()` holds `needle` (at most 10 s); the log, or a panic with it.
async fn until_logged(log: impl Fn() -> String, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{needle:?} not logged; the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Behind HAProxy with `send-proxy-v2`, an instance that trusts it sees each client's own address
/// (here a client on 127.0.0.7, whose rejected call the instance logs and audits with that address,
/// not HAProxy's, as it audits its snapshot taken with a token); the trusted proxy's connections
/// without a header, and a header from a peer that is not trusted, are refused.
#[tokio::test(flavor = "multi_thread")]
async fn behind_haproxy_the_proxy_protocol_gives_the_client_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (db, objects) = (
        format!("sqlite://{}", dir.path().join("strata.db").display()),
        format!("file://{}", dir.path().join("o").display()),
    );
    let token = format!("ops:admin:{}", strata_server::grpc::auth::hash_token("proxy-test-secret"));
    let server = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", db.as_str()),
            ("STRATA_OBJECT_STORE_URL", objects.as_str()),
            ("STRATA_AUTH_TOKENS", token.as_str()),
            ("STRATA_TRUSTED_PROXIES", "127.0.0.1"),
            ("RUST_LOG", "info"),
        ],
    );
    let proxy =
        Haproxy::start_proxy_protocol(&[Backend { grpc: server.addr(), admin: server.admin_addr() }]).await.unwrap();
    // Through HAProxy (with a token) once the instance is up.
    let client = strata_client::Client::connect(proxy.url()).await.unwrap().with_token("proxy-test-secret").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.info().await {
        assert!(Instant::now() < deadline, "no answer through HAProxy: {e}; the log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A client on 127.0.0.7 calls without a token: rejected, and logged with its own address.
    let body = dir.path().join("getinfo.bin");
    std::fs::write(&body, [0u8; 5]).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--interface", "127.0.0.7", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("{}/strata.v1.AdminService/GetInfo", proxy.url()))
        .status()
        .unwrap();
    assert!(out.success(), "curl through HAProxy: {out}");
    let log = until_logged(|| server.log(), "peer=Some(127.0.0.7:").await;
    let line = log.lines().find(|l| l.contains("peer=Some(127.0.0.7:")).unwrap();
    assert!(line.contains("request rejected") && line.contains("via=Some(127.0.0.1:"), "{line}");
    // The same client takes a snapshot (a mutating call) with the token.
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--interface", "127.0.0.7", "--http2-prior-knowledge"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "authorization: Bearer proxy-test-secret", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("{}/strata.v1.StorageService/RecordSnapshot", proxy.url()))
        .status()
        .unwrap();
    assert!(out.success(), "curl through HAProxy: {out}");
    // Both are in the audit trail with the client's address and HAProxy's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = client.audit_events(&Default::default(), 100).await.unwrap();
        let from_7: Vec<_> = events.into_iter().filter(|e| e.client_address.starts_with("127.0.0.7:")).collect();
        if from_7.len() >= 2 || Instant::now() > deadline {
            break from_7;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seen: BTreeSet<_> = events
        .iter()
        .map(|e| (e.method.as_str(), e.caller.as_str(), e.auth_method.as_str(), e.code.as_str()))
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            ("/strata.v1.AdminService/GetInfo", "-", "none", "UNAUTHENTICATED"),
            ("/strata.v1.StorageService/RecordSnapshot", "ops", "config_token", "OK"),
        ]),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.proxy_address.starts_with("127.0.0.1:")), "{events:?}");

    // Straight to the instance from the trusted proxy's address, without a header: refused.
    let direct = strata_client::Client::connect(server.url()).await;
    assert!(direct.is_err() || direct.unwrap().info().await.is_err(), "a trusted peer must send a PROXY header");
    until_logged(|| server.log(), "PROXY header: missing").await;

    // A PROXY header (LOCAL) from 127.0.0.9, which is not trusted: the connection is closed.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(server.addr()).await.unwrap();
    tcp.write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the connection must be closed: {read:?}");
    until_logged(|| server.log(), "not in trusted_proxies").await;
    // The proxied client still works.
    client.info().await.unwrap();
}
