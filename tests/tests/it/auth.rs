//! The auth matrix: every RPC in the descriptor × {no token, wrong, expired, revoked, viewer,
//! operator, admin, scoped}, against the role each declares in `proto/`; and the audit trail it
//! leaves.

use bytes::Bytes;
use std::{collections::HashMap, time::Duration};

use strata_client::{
    Client, Error, HealthStatus,
    alerts::{AlertMetric, AlertRule},
    archive::ArchivePolicy,
    partitions::PartitionInterval::Monthly,
    scheduler::{JobChanges, JobKind, JobSpec},
    tokens::{AuditQuery, Role as TokenRole},
    types::{FileQuery, GrowthQuery, UploadOptions},
};
use strata_server::{config::Role, grpc::methods::Methods};
use strata_tests::{
    TestServer,
    server::{ADMIN_TOKEN, VIEWER_TOKEN, test_config, test_tokens},
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
        ("CreateUpload", code(c.create_upload(&UploadOptions::default(), "a.txt", Some(1)).await)),
        ("Upload", code(c.upload_bytes(&UploadOptions::default(), "b.txt", Bytes::from_static(b"x")).await)),
        ("GetUploadStatus", code(c.upload_status(MISSING).await)),
        ("Download", code(c.download_bytes(MISSING, 0, 0).await)),
        ("StatFile", code(c.stat_file(MISSING).await)),
        ("ListFiles", code(c.list_files(&FileQuery::default()).await)),
        ("DeleteFile", code(c.delete_file(MISSING).await)),
        ("ReconcileObjects", code(c.reconcile_objects(false, std::time::Duration::from_secs(3600)).await)),
        ("StartBlobMigration", code(c.start_blob_migration(&Default::default()).await)),
        ("GetBlobMigration", code(c.blob_migration(MISSING).await)),
        ("CreatePolicy", code(c.create_policy(&ArchivePolicy::default()).await)),
        ("GetPolicy", code(c.policy(MISSING).await)),
        ("ListPolicies", code(c.list_policies().await)),
        ("UpdatePolicy", code(c.update_policy(&ArchivePolicy { id: MISSING.into(), ..Default::default() }, &[]).await)),
        ("DeletePolicy", code(c.delete_policy(MISSING).await)),
        ("PlanArchive", code(c.plan_archive(MISSING).await)),
        ("RunArchive", code(c.run_archive(MISSING).await)),
        ("GetRun", code(c.archive_run(MISSING).await)),
        ("ListRuns", code(c.list_archive_runs(None, 10).await)),
        ("CancelRun", code(c.cancel_archive_run(MISSING).await)),
        ("RestoreArchive", code(c.restore_archive(MISSING, &Default::default()).await)),
        ("ReadArchive", code(c.read_archive(MISSING, &Default::default(), |_, _| Ok(())).await)),
        ("ListSegments", code(c.list_segments(MISSING).await)),
        ("ApplyRetention", code(c.apply_retention(MISSING).await)),
        ("RunBackup", code(c.run_backup().await)),
        ("GetBackup", code(c.backup(MISSING).await)),
        ("ListBackups", code(c.list_backups(10).await)),
        ("EnsurePartitions", code(c.ensure_partitions("public", "t", Monthly, 1, 0).await)),
        ("GetPartitionHealth", code(c.partition_health("public", "t").await)),
        ("DropPartitions", code(c.drop_partitions("public", "t", std::time::Duration::from_secs(1), true).await)),
        ("RescueDefaultRows", code(c.rescue_default_rows("public", "t", Monthly, true).await)),
        ("ArchivePartitions", code(c.archive_partitions(MISSING).await)),
        ("RunMaintenance", code(c.run_maintenance(&["missing_table".into()], false, false).await)),
        ("GetRecommendations", code(c.recommendations(0, 0).await)),
        ("GetOperation", code(c.operation(MISSING).await)),
        ("ListOperations", code(c.list_operations(None, 10).await)),
        ("CancelOperation", code(c.cancel_operation(MISSING).await)),
        ("ListOperationItems", code(c.operation_items(MISSING, "", 10).await)),
        ("GetSchedulerStatus", code(c.scheduler_status().await)),
        ("StopScheduler", code(c.stop_scheduler().await)),
        ("StartScheduler", code(c.start_scheduler().await)),
        ("ListJobs", code(c.list_jobs().await)),
        ("GetJob", code(c.job(MISSING).await)),
        ("CreateJob", code(c.create_job(&bad_job()).await)),
        (
            "UpdateJob",
            code(c.update_job(MISSING, JobChanges { schedule: Some("@daily".into()), ..Default::default() }).await),
        ),
        ("DeleteJob", code(c.delete_job(MISSING).await)),
        ("PauseJob", code(c.pause_job(MISSING).await)),
        ("ResumeJob", code(c.resume_job(MISSING).await)),
        ("RunJobNow", code(c.run_job_now(MISSING).await)),
        ("ListJobRuns", code(c.list_job_runs(None, 10).await)),
        ("GetJobRun", code(c.job_run(MISSING).await)),
        (
            "CreateRule",
            code(c.create_rule(&AlertRule::new("auth-matrix", AlertMetric::DatabaseSize, None, None)).await),
        ),
        ("GetRule", code(c.rule(MISSING).await)),
        ("ListRules", code(c.list_rules().await)),
        (
            "UpdateRule",
            code(c.update_rule(&AlertRule::new(MISSING, AlertMetric::DatabaseSize, Some(1.0), None), &[]).await),
        ),
        ("DeleteRule", code(c.delete_rule(MISSING).await)),
        ("ListAlerts", code(c.list_alerts(&Default::default(), 10).await)),
        ("GetAlert", code(c.alert(MISSING).await)),
        ("AcknowledgeAlert", code(c.acknowledge_alert(MISSING, "").await)),
        ("ResolveAlert", code(c.resolve_alert(MISSING, "").await)),
        ("WatchAlerts", code(c.watch_alerts(false, None, None).await.map(|_| ()))),
        ("GetHealthReport", code(c.health_report().await)),
        ("CreateToken", code(c.create_token("auth-matrix", TokenRole::Viewer, &[], None).await)),
        ("GetToken", code(c.token(MISSING).await)),
        ("ListTokens", code(c.list_tokens(false, 10).await)),
        ("RevokeToken", code(c.revoke_token(MISSING).await)),
        ("ListAuditEvents", code(c.audit_events(&AuditQuery::default(), 10).await)),
    ]
}

/// A job the server refuses (no such policy): authorized calls change nothing.
fn bad_job() -> JobSpec {
    JobSpec::new("auth-matrix", JobKind::Archive, "@daily").target(MISSING)
}

/// A well-formed id that names nothing: authorized calls answer NOT_FOUND.
const MISSING: &str = "0190b1e2-0000-7000-8000-000000000000";

/// Whether a call got past authentication and authorization.
fn allowed(code: Option<Code>) -> bool {
    !matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied))
}

/// Each method's declared role and whether scoped tokens may call it, by method name.
fn declared() -> HashMap<String, (String, Role, bool, bool)> {
    let methods = Methods::load().unwrap();
    let mut by_name = HashMap::new();
    for (path, rule) in methods.iter() {
        let name = path.rsplit('/').next().unwrap().to_owned();
        let old = by_name.insert(name.clone(), (path.to_owned(), rule.role, rule.scoped, rule.mutates));
        assert!(old.is_none(), "two methods named {name}: the matrix goes by name");
    }
    by_name
}

/// The newest audit event's id (0: none).
async fn last_event(admin: &Client) -> i64 {
    admin.audit_events(&AuditQuery::default(), 1).await.unwrap().first().map_or(0, |e| e.id)
}

/// Audit events of `caller` after event `after`, by method path: waits until their number stops
/// growing (failed and refused calls are written after their answer).
async fn events_of(admin: &Client, caller: &str, after: i64) -> HashMap<String, Vec<String>> {
    let q = AuditQuery { caller: Some(caller.into()), ..Default::default() };
    let mut last = usize::MAX;
    loop {
        let mut events = admin.audit_events(&q, 10_000).await.unwrap();
        events.retain(|e| e.id > after);
        if events.len() == last {
            let mut by_method: HashMap<String, Vec<String>> = HashMap::new();
            for e in events {
                by_method.entry(e.method.clone()).or_default().push(format!("{} {}", e.code, e.resource));
            }
            return by_method;
        }
        last = events.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_by_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(format!("sqlite://{}", dir.path().join("s.db").display()), vec![], dir.path());
    config.tokens = test_tokens();
    // Revocations take effect at once here (the fleet test covers the cache).
    config.token_cache_ttl = Duration::ZERO;
    let server = TestServer::start(config).await.unwrap();
    let declared = declared();
    let admin = server.client_with(ADMIN_TOKEN).await;

    // API tokens: an operator, an operator scoped to one owner, one that expires, one revoked.
    let (_, operator_api) = admin.create_token("matrix-operator", TokenRole::Operator, &[], None).await.unwrap();
    let (_, scoped) =
        admin.create_token("matrix-scoped", TokenRole::Operator, &["tenant-a".into()], None).await.unwrap();
    let (_, expiring) =
        admin.create_token("matrix-expiring", TokenRole::Admin, &[], Some(Duration::from_secs(1))).await.unwrap();
    let (revoked, revoked_secret) = admin.create_token("matrix-revoked", TokenRole::Admin, &[], None).await.unwrap();
    assert!(server.client_with(&revoked_secret).await.info().await.is_ok());
    admin.revoke_token(&revoked.id).await.unwrap();
    let expired = server.client_with(&expiring).await;
    let t = std::time::Instant::now();
    while expired.info().await.is_ok() {
        assert!(t.elapsed() < Duration::from_secs(30), "the 1 s token still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let refused_all = |who: &str, calls: Vec<(&'static str, Option<Code>)>| {
        for (rpc, code) in calls {
            assert_eq!(code, Some(Code::Unauthenticated), "{who} calling {rpc}");
        }
    };
    refused_all("no token", call_all(&server.client().await).await);
    refused_all("a wrong token", call_all(&server.client_with("not-a-real-token").await).await);
    refused_all(
        "a made-up API token",
        call_all(&server.client_with("strata_0193a1b2c3d4e5f60718293a4b5c6d7e_nope").await).await,
    );
    refused_all("an expired token", call_all(&expired).await);
    refused_all("a revoked token", call_all(&server.client_with(&revoked_secret).await).await);

    // (who, caller name in records, role, scoped)
    let principals = [
        (VIEWER_TOKEN.to_owned(), "test-viewer", Role::Viewer, false),
        (operator_api, "matrix-operator", Role::Operator, false),
        (ADMIN_TOKEN.to_owned(), "test-admin", Role::Admin, false),
        (scoped, "matrix-scoped", Role::Operator, true),
    ];
    for (token, name, role, is_scoped) in &principals {
        let before = last_event(&admin).await;
        let calls = call_all(&server.client_with(token).await).await;
        for (rpc, code) in &calls {
            let (_, needed, scoped_ok, _) = &declared[*rpc];
            let may = role >= needed && (!is_scoped || *scoped_ok);
            if may {
                assert!(allowed(*code), "{name} calling {rpc}: {code:?}");
            } else {
                assert_eq!(*code, Some(Code::PermissionDenied), "{name} calling {rpc}");
            }
        }
        // Every method in the descriptor is in the matrix.
        let listed: Vec<&str> = calls.iter().map(|(n, _)| *n).collect();
        for m in declared.keys() {
            assert!(listed.contains(&m.as_str()), "{m} missing from the auth matrix");
        }
        // The audit trail: one event per mutating call made, and one per refused call, each
        // naming the caller; nothing for the reads it was allowed.
        let events = events_of(&admin, name, before).await;
        for (rpc, code) in &calls {
            let (path, _, _, mutates) = &declared[*rpc];
            let recorded = events.get(path).map(Vec::len).unwrap_or(0);
            let refused = *code == Some(Code::PermissionDenied);
            let expected = usize::from(*mutates || refused);
            assert_eq!(recorded, expected, "{name} calling {rpc} ({code:?}): events {:?}", events.get(path));
        }
    }
    // A refused or failed call names its resource and outcome.
    let viewer_events = events_of(&admin, "test-viewer", 0).await;
    assert_eq!(viewer_events["/strata.v1.SchedulerService/PauseJob"], [format!("PERMISSION_DENIED name={MISSING}")]);
    let admin_events = events_of(&admin, "test-admin", 0).await;
    assert_eq!(admin_events["/strata.v1.SchedulerService/PauseJob"], [format!("NOT_FOUND name={MISSING}")]);
    assert!(admin_events["/strata.v1.TokenService/CreateToken"].contains(&"OK name=auth-matrix".to_owned()));
    // Anonymous refusals are recorded too, as `-`.
    let anonymous = admin.audit_events(&AuditQuery { caller: Some("-".into()), ..Default::default() }, 10_000).await;
    assert!(anonymous.unwrap().len() >= 5 * declared.len(), "every refused call of the five refused callers");
    // Health needs no token.
    assert_eq!(server.client().await.health("").await.unwrap(), HealthStatus::Serving);
    // The viewer's and the scoped token's refused writes changed nothing: the operator's and the
    // admin's snapshots exist, no other.
    let page = server.client_with(VIEWER_TOKEN).await.list_snapshots(10, "").await.unwrap();
    assert_eq!(page.snapshots.len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn without_tokens_loopback_is_admin() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::sqlite(dir.path()).await.unwrap();
    for (rpc, code) in call_all(&server.client().await).await {
        assert!(allowed(code), "loopback calling {rpc}: {code:?}");
    }
    let info = server.client().await.info().await.unwrap();
    assert!(info.config.unwrap().loopback_only);
}
