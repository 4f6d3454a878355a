//! The auth matrix: every RPC × {no token, viewer, operator}.

use bytes::Bytes;
use strata_client::{
    Client, Error, HealthStatus,
    alerts::{AlertMetric, AlertRule},
    archive::ArchivePolicy,
    partitions::PartitionInterval::Monthly,
    scheduler::{JobChanges, JobKind, JobSpec},
    types::{FileQuery, GrowthQuery, UploadOptions},
};
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

const OPERATOR_ONLY: &[&str] = &[
    "RecordSnapshot",
    "CreateUpload",
    "Upload",
    "GetUploadStatus",
    "DeleteFile",
    "ReconcileObjects",
    "StartBlobMigration",
    "CreatePolicy",
    "UpdatePolicy",
    "DeletePolicy",
    "RunArchive",
    "CancelRun",
    "RestoreArchive",
    "ReadArchive",
    "ApplyRetention",
    "RunBackup",
    "EnsurePartitions",
    "DropPartitions",
    "RescueDefaultRows",
    "ArchivePartitions",
    "RunMaintenance",
    "CancelOperation",
    "StartScheduler",
    "StopScheduler",
    "CreateJob",
    "UpdateJob",
    "DeleteJob",
    "PauseJob",
    "ResumeJob",
    "RunJobNow",
    "CreateRule",
    "UpdateRule",
    "DeleteRule",
    "AcknowledgeAlert",
    "ResolveAlert",
];

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
        if OPERATOR_ONLY.contains(&rpc) {
            assert_eq!(code, Some(Code::PermissionDenied), "viewer calling {rpc}");
        } else {
            assert!(allowed(code), "viewer calling {rpc}: {code:?}");
        }
    }
    for (rpc, code) in call_all(&server.client_with(OPERATOR_TOKEN).await).await {
        assert!(allowed(code), "operator calling {rpc}: {code:?}");
    }
    // Health needs no token.
    assert_eq!(server.client().await.health("").await.unwrap(), HealthStatus::Serving);
    // Every RPC of every service is in the matrix.
    let listed: Vec<&str> = call_all(&server.client().await).await.into_iter().map(|(n, _)| n).collect();
    let descriptor =
        <prost_types::FileDescriptorSet as prost::Message>::decode(strata_client::pb::FILE_DESCRIPTOR_SET).unwrap();
    for svc in descriptor.file.iter().flat_map(|f| &f.service) {
        for m in &svc.method {
            assert!(listed.contains(&m.name()), "{} missing from the auth matrix", m.name());
        }
    }
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
        assert!(allowed(code), "loopback calling {rpc}: {code:?}");
    }
    let info = server.client().await.info().await.unwrap();
    assert!(info.config.unwrap().loopback_only);
}
