//! The auth matrix: every RPC × {no token, viewer, operator}.

use strata_client::{Client, Error, HealthStatus, types::GrowthQuery};
use strata_tests::{
    TestServer,
    server::{OPERATOR_TOKEN, VIEWER_TOKEN, test_config, test_tokens},
};
use tonic::Code;

/// Calls every strata RPC once; returns (name, result code).
async fn call_all(c: &Client) -> Vec<(&'static str, Option<Code>)> {
    fn code<T>(r: Result<T, Error>) -> Option<Code> {
        match r {
            Ok(_) => None,
            Err(e) => Some(e.code().unwrap_or(Code::Unknown)),
        }
    }
    vec![
        ("GetInfo", code(c.info().await)),
        ("TestConnection", code(c.test_connection().await)),
        ("GetStorageMetrics", code(c.storage_metrics(None).await)),
        ("RecordSnapshot", code(c.record_snapshot().await)),
        ("ListSnapshots", code(c.list_snapshots(10, "").await)),
        ("GetGrowth", code(c.growth(GrowthQuery::default()).await)),
    ]
}

const OPERATOR_ONLY: &[&str] = &["RecordSnapshot"];

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_by_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(format!("sqlite://{}", dir.path().join("s.db").display()), vec![], dir.path());
    config.tokens = test_tokens();
    let server = TestServer::start(config).await.unwrap();

    let anonymous = call_all(&server.client().await).await;
    assert!(anonymous.iter().all(|(_, c)| *c == Some(Code::Unauthenticated)), "{anonymous:?}");
    let wrong = call_all(&server.client_with("not-a-real-token").await).await;
    assert!(wrong.iter().all(|(_, c)| *c == Some(Code::Unauthenticated)), "{wrong:?}");

    for (rpc, code) in call_all(&server.client_with(VIEWER_TOKEN).await).await {
        let expected = if OPERATOR_ONLY.contains(&rpc) { Some(Code::PermissionDenied) } else { None };
        assert_eq!(code, expected, "viewer calling {rpc}");
    }
    for (rpc, code) in call_all(&server.client_with(OPERATOR_TOKEN).await).await {
        assert_eq!(code, None, "operator calling {rpc}");
    }
    // Health needs no token.
    assert_eq!(server.client().await.health("").await.unwrap(), HealthStatus::Serving);
    // The viewer's denied write changed nothing: exactly the operator's one snapshot exists.
    let page = server.client_with(VIEWER_TOKEN).await.list_snapshots(10, "").await.unwrap();
    assert_eq!(page.snapshots.len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tokens_loopback_is_operator() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    for (rpc, code) in call_all(&server.client().await).await {
        assert_eq!(code, None, "loopback calling {rpc}");
    }
    let info = server.client().await.info().await.unwrap();
    assert!(info.config.unwrap().loopback_only);
}
