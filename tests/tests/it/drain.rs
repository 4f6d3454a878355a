//! The admin listener (`/livez`, `/readyz`), the drain for load balancers (health NOT_SERVING
//! first, calls still served for `shutdown_delay`, then the server stops) and the
//! `x-strata-instance` header, against a real server. `/readyz` while the primary is down:
//! routing.rs; SIGTERM of a process behind HAProxy: server/tests/fleet.rs.

use std::{path::Path, time::Duration};

use strata_client::{
    HealthStatus, INSTANCE_HEADER,
    pb::{
        self, admin_service_client::AdminServiceClient, alert_service_client::AlertServiceClient,
        file_service_client::FileServiceClient,
    },
};
use strata_server::config::{Config, ListenAddr};
use strata_tests::{
    TestServer,
    server::{OPERATOR_TOKEN, test_config, test_tokens},
};
use tonic::{Code, metadata::MetadataMap};

use crate::support::eventually;

fn sqlite_config(dir: &Path) -> Config {
    test_config(format!("sqlite://{}", dir.join("strata.db").display()), vec![], &dir.join("objects"))
}

/// GET `url`: the status code and the `x-strata-instance` header.
async fn get(url: &str) -> (u16, Option<String>) {
    let r = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (r.status().as_u16(), r.headers().get(INSTANCE_HEADER).map(|v| v.to_str().unwrap().to_owned()))
}

fn instance(m: &MetadataMap) -> Option<String> {
    m.get(INSTANCE_HEADER).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn livez_and_readyz_answer_200_with_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let me = server.client().await.scheduler_status().await.unwrap().this_instance;
    let admin = server.admin_url();
    assert_eq!(get(&format!("{admin}/livez")).await, (200, Some(me.clone())));
    assert_eq!(get(&format!("{admin}/readyz")).await, (200, Some(me.clone())));
    assert_eq!(get(&format!("{admin}/nothing-here")).await, (404, Some(me.clone())));
    assert_eq!(server.client().await.health("").await.unwrap(), HealthStatus::Serving);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_off_or_its_address_taken() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    config.admin_listen = ListenAddr(None);
    let server = TestServer::start(config).await.unwrap();
    assert_eq!(server.admin_addr, None);
    server.client().await.info().await.unwrap();
    server.stop().await.unwrap();

    // A taken address: start-up fails and says which setting.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = sqlite_config(dir.path());
    config.admin_listen = ListenAddr(Some(taken.local_addr().unwrap()));
    let err = format!("{:#}", TestServer::start(config).await.err().expect("the address is taken"));
    assert!(err.contains("admin_listen") && err.contains(&taken.local_addr().unwrap().to_string()), "{err}");
}

/// Shutdown begun: every health status NOT_SERVING and `/readyz` 503 at once, while calls (on an
/// open connection and on a new one) are still served for `shutdown_delay`; then the server stops.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_turns_not_serving_and_serves_on_for_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    // Long enough for the checks below on a loaded machine; the test waits for it once.
    config.shutdown_delay = Duration::from_secs(5);
    let server = TestServer::start(config).await.unwrap();
    let client = server.client().await;
    let admin = server.admin_url();
    assert_eq!(client.health("").await.unwrap(), HealthStatus::Serving);
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 200);

    server.shutdown_token().cancel();
    eventually("NOT_SERVING after shutdown began", Duration::from_secs(5), || {
        let c = client.clone();
        async move { (c.health("").await.ok()? == HealthStatus::NotServing).then_some(()) }
    })
    .await;
    for service in strata_server::grpc::SERVICE_NAMES {
        assert_eq!(client.health(service).await.unwrap(), HealthStatus::NotServing, "{service}");
    }
    assert_eq!(get(&format!("{admin}/readyz")).await.0, 503);
    assert_eq!(get(&format!("{admin}/livez")).await.0, 200);
    // Calls are still served, on the open connection and on a new one.
    client.info().await.expect("served during the shutdown delay");
    client.list_jobs().await.expect("served during the shutdown delay");
    server.client().await.info().await.expect("a new connection is served during the shutdown delay");

    let url = server.url();
    server.stop().await.unwrap();
    assert!(client.info().await.is_err(), "still answering after it stopped");
    let fresh = strata_client::Client::connect(url).await;
    assert!(fresh.is_err() || fresh.unwrap().info().await.is_err(), "a new connection is served after it stopped");
}

/// `x-strata-instance` on a success, on errors (from a service and from the auth layer: both
/// trailers-only responses) and on a stream, read as raw gRPC metadata.
#[tokio::test(flavor = "multi_thread")]
async fn every_response_names_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    config.tokens = test_tokens();
    let server = TestServer::start(config).await.unwrap();
    let me = server.client_with(OPERATOR_TOKEN).await.scheduler_status().await.unwrap().this_instance;
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {OPERATOR_TOKEN}").parse().unwrap();
    let with_token = move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    };

    let ok = AdminServiceClient::with_interceptor(channel.clone(), with_token.clone())
        .get_info(pb::GetInfoRequest {})
        .await
        .unwrap();
    assert_eq!(instance(ok.metadata()).as_deref(), Some(me.as_str()), "success");

    let not_found = FileServiceClient::with_interceptor(channel.clone(), with_token.clone())
        .stat_file(pb::StatFileRequest { file_id: "0190b1e2-0000-7000-8000-000000000000".into() })
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), Code::NotFound, "{not_found:?}");
    assert_eq!(instance(not_found.metadata()).as_deref(), Some(me.as_str()), "service error");

    let refused = AdminServiceClient::new(channel.clone()).get_info(pb::GetInfoRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(instance(refused.metadata()).as_deref(), Some(me.as_str()), "auth refusal");

    let stream = AlertServiceClient::with_interceptor(channel.clone(), with_token.clone())
        .watch_alerts(pb::WatchAlertsRequest { send_initial: true, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(instance(stream.metadata()).as_deref(), Some(me.as_str()), "stream");
    drop(stream);
    server.stop().await.unwrap();
}
