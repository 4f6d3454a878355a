//! Read routing and health against node failures, on a cluster of this test's own (stopping the
//! shared one would disturb the other tests).

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use strata_client::{
    HealthStatus,
    types::{NodeRole, RoutingState},
};
use strata_tests::{
    PgCluster, TestServer,
    haproxy::{Backend, Haproxy},
};

use crate::support::eventually;

/// The HTTP status of GET `url`.
async fn status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}")).status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn replica_and_primary_loss_and_recovery() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap().expect("own cluster");
    let db = cluster.create_database("routing").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A password in the URL must never be shown (trust auth ignores it).
    let mut config = strata_tests::server::test_config(
        cluster.primary_url(&db).replace("postgres@", "postgres:s3cret-pw@"),
        vec![cluster.replica_url(&db).replace("postgres@", "postgres:s3cret-pw@")],
        dir.path(),
    );
    config.max_replica_lag = Duration::from_secs(1);
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    client.record_snapshot().await.unwrap();

    // Normal: the replica serves reads.
    let info = eventually("replica serving reads", Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.info().await.ok().filter(|i| i.routing_state == RoutingState::Normal) }
    })
    .await;
    assert_eq!(info.nodes.len(), 2);
    let replica = info.nodes.iter().find(|n| n.role == NodeRole::Replica).unwrap();
    assert!(replica.healthy && replica.serving_reads);
    assert!(replica.replication_lag.is_some());
    for n in &info.nodes {
        assert!(!n.address.contains("s3cret"), "password leaked: {}", n.address);
        assert!(n.address.contains("***"));
    }
    // Replication is asynchronous: wait until the replica has replayed the catalog and the snapshot.
    eventually("snapshot on the replica", Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.list_snapshots(10, "").await.ok().filter(|p| p.snapshots.len() == 1) }
    })
    .await;
    let before = client.info().await.unwrap().replica_fallbacks;
    client.list_snapshots(10, "").await.unwrap();
    assert_eq!(client.info().await.unwrap().replica_fallbacks, before, "read went to the replica");

    // A lagging replica is skipped for reads: pause replay on it, write on the primary.
    let mut on_replica = diesel_async::AsyncPgConnection::establish(&cluster.replica_url(&db)).await.unwrap();
    on_replica.batch_execute("SELECT pg_wal_replay_pause()").await.unwrap();
    client.record_snapshot().await.unwrap();
    let info = eventually("lagging replica skipped", Duration::from_secs(15), || {
        let c = client.clone();
        async move {
            c.record_snapshot().await.ok()?;
            c.info().await.ok().filter(|i| i.routing_state == RoutingState::Degraded)
        }
    })
    .await;
    let replica = info.nodes.iter().find(|n| n.role == NodeRole::Replica).unwrap();
    assert!(replica.healthy && !replica.serving_reads, "{replica:?}");
    assert!(replica.replication_lag.unwrap() > Duration::from_secs(1));
    // Reads now come from the primary, which has every snapshot.
    let on_primary = client.list_snapshots(100, "").await.unwrap().snapshots.len();
    assert!(on_primary >= 3, "{on_primary}");
    assert!(client.info().await.unwrap().replica_fallbacks > info.replica_fallbacks);
    on_replica.batch_execute("SELECT pg_wal_replay_resume()").await.unwrap();
    eventually("caught-up replica serving again", Duration::from_secs(15), || {
        let c = client.clone();
        async move { c.info().await.ok().filter(|i| i.routing_state == RoutingState::Normal) }
    })
    .await;

    let probes = client.test_connection().await.unwrap();
    assert_eq!(probes.len(), 2);
    assert!(probes.iter().all(|p| p.ok && p.round_trip.is_some()), "{probes:?}");

    // Replica down: reads keep working through the primary; GetInfo says degraded; still SERVING.
    cluster.stop_replica().unwrap();
    let info = eventually("degraded routing", Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.info().await.ok().filter(|i| i.routing_state == RoutingState::Degraded) }
    })
    .await;
    let replica = info.nodes.iter().find(|n| n.role == NodeRole::Replica).unwrap();
    assert!(!replica.healthy && !replica.serving_reads && !replica.last_error.is_empty());
    let fallbacks = info.replica_fallbacks;
    for _ in 0..3 {
        let page = client.list_snapshots(100, "").await.expect("reads survive the replica's loss");
        assert!(page.snapshots.len() >= 3);
    }
    assert!(client.info().await.unwrap().replica_fallbacks >= fallbacks + 3);
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving);
    let probes = client.test_connection().await.unwrap();
    assert!(probes.iter().any(|p| p.role == NodeRole::Replica && !p.ok));

    // Replica back: reads return to it.
    cluster.start_replica().unwrap();
    eventually("normal routing", Duration::from_secs(15), || {
        let c = client.clone();
        async move { c.info().await.ok().filter(|i| i.routing_state == RoutingState::Normal) }
    })
    .await;
    let settled = client.info().await.unwrap().replica_fallbacks;
    client.list_snapshots(10, "").await.unwrap();
    assert_eq!(client.info().await.unwrap().replica_fallbacks, settled, "reads are back on the replica");

    // Primary down: NOT_SERVING (the whole server and each service) and `/readyz` 503; back by
    // itself when it returns.
    assert_eq!(client.health("strata.v1.StorageService").await.unwrap(), HealthStatus::Serving);
    let readyz = format!("{}/readyz", server.admin_url());
    assert_eq!(status(&readyz).await, 200);
    let stopped = Instant::now();
    cluster.stop_primary().unwrap();
    eventually("NOT_SERVING", Duration::from_secs(10), || {
        let c = client.clone();
        async move { (c.health("").await.ok()? == HealthStatus::NotServing).then_some(()) }
    })
    .await;
    let took = stopped.elapsed();
    eprintln!("NOT_SERVING {took:?} after the primary stopped");
    assert_eq!(client.health("strata.v1.StorageService").await.unwrap(), HealthStatus::NotServing);
    assert_eq!(client.health("strata.v1.AdminService").await.unwrap(), HealthStatus::NotServing);
    assert_eq!(status(&readyz).await, 503);
    assert_eq!(status(&format!("{}/livez", server.admin_url())).await, 200);
    assert_eq!(client.info().await.unwrap().routing_state, RoutingState::PrimaryDown);
    let err = client.record_snapshot().await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");

    cluster.start_primary().unwrap();
    eventually("SERVING again", Duration::from_secs(15), || {
        let c = client.clone();
        async move { (c.health("").await.ok()? == HealthStatus::Serving).then_some(()) }
    })
    .await;
    assert_eq!(status(&readyz).await, 200);
    // Writes work again on fresh connections.
    eventually("writes after recovery", Duration::from_secs(10), || {
        let c = client.clone();
        async move { c.record_snapshot().await.ok() }
    })
    .await;
    server.stop().await.unwrap();
    drop(cluster);
}

/// Primary failover: the database URL names both nodes (libpq's several hosts with
/// `target_session_attrs=read-write`); once the primary is stopped and the replica promoted,
/// writes go to the new primary, health says which server that is, and what was written before is
/// still there. The client talks only to HAProxy in front of the server, as deployed: while the
/// server has no primary its `/readyz` fails and HAProxy answers UNAVAILABLE itself, until the
/// server is ready again on the new primary.
#[tokio::test(flavor = "multi_thread")]
async fn writes_follow_a_promoted_replica() {
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await.unwrap().expect("own cluster");
    let db = cluster.create_database("failover").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = cluster.failover_url(&db);
    let server = TestServer::start(strata_tests::server::test_config(url, Vec::new(), &dir.path().join("objects")))
        .await
        .unwrap();
    let proxy = Haproxy::start(&[Backend { grpc: server.addr, admin: server.admin_addr.expect("admin listener") }])
        .await
        .unwrap();
    proxy.wait_for_instances(1, Duration::from_secs(30)).await.unwrap();
    let c = strata_client::Client::connect(proxy.url()).await.unwrap();
    let opts = strata_client::types::UploadOptions { owner: "o".into(), ..Default::default() };
    let before = c.upload_bytes(&opts, "before", bytes::Bytes::from_static(b"written before")).await.unwrap();
    let info = c.info().await.unwrap();
    let primary = info.nodes.iter().find(|n| n.role == NodeRole::Primary).unwrap();
    let first = primary.server_address.clone();
    assert!(primary.healthy && !first.is_empty(), "{primary:?}");

    // The old primary goes away; the replica is promoted.
    tokio::task::block_in_place(|| {
        cluster.stop_primary().unwrap();
        cluster.promote_replica().unwrap();
    });
    let t0 = Instant::now();
    let after = eventually("a write on the new primary", Duration::from_secs(60), || {
        let (c, opts) = (c.clone(), opts.clone());
        async move { c.upload_bytes(&opts, "after", bytes::Bytes::from_static(b"written after")).await.ok() }
    })
    .await;
    eprintln!(
        "writes resumed {:?} after the promotion; haproxy took the server out of rotation {} time(s)",
        t0.elapsed(),
        proxy.log().lines().filter(|l| l.starts_with("Server ") && l.contains(" is DOWN")).count()
    );
    let node = eventually("health naming the new primary", Duration::from_secs(30), || {
        let c = c.clone();
        let first = first.clone();
        async move {
            let info = c.info().await.ok()?;
            let p = info.nodes.into_iter().find(|n| n.role == NodeRole::Primary)?;
            (p.healthy && !p.server_address.is_empty() && p.server_address != first).then_some(p)
        }
    })
    .await;
    assert!(
        cluster.replica_url(&db).contains(&format!("127.0.0.1:{}", node.server_address.rsplit(':').next().unwrap()))
    );
    assert_eq!(c.download_bytes(&before.id, 0, 0).await.unwrap(), b"written before");
    assert_eq!(c.download_bytes(&after.id, 0, 0).await.unwrap(), b"written after");
    drop(proxy);
    server.stop().await.unwrap();
}
