//! Tokens managed by API: lifecycle (create → use → expire), revocation reaching another instance,
//! scopes of file owners, bad input, and the CLI.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use strata_client::{
    Client,
    cli::{Cli, run},
    tokens::{AuditQuery, Role},
    types::{FileQuery, UploadOptions},
};
use strata_tests::{
    PgCluster, TestServer,
    server::{ADMIN_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, test_config, test_tokens},
};
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, strata_client::Error>) -> Code {
    r.expect_err("the call must fail").code().unwrap_or(Code::Unknown)
}

/// Polls `f` every 50 ms until it is true; panics after `bound`. Returns how long it took.
async fn until<F: AsyncFnMut() -> bool>(bound: Duration, what: &str, mut f: F) -> Duration {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

async fn sqlite_server(dir: &std::path::Path) -> TestServer {
    let mut config = test_config(format!("sqlite://{}", dir.join("s.db").display()), vec![], &dir.join("objects"));
    config.tokens = test_tokens();
    TestServer::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_created_used_and_expires_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(dir.path()).await;
    let admin = server.client_with(ADMIN_TOKEN).await;

    let (t, secret) = admin.create_token("ci-reader", Role::Viewer, &[], Some(Duration::from_secs(3))).await.unwrap();
    assert!(secret.starts_with(&format!("strata_{}_", t.id)), "{secret}");
    assert_eq!(secret.len(), "strata_".len() + 32 + 1 + 43);
    assert_eq!((t.name.as_str(), t.role, t.created_by.as_str()), ("ci-reader", Some(Role::Viewer), "test-admin"));
    assert!(t.expires_at.unwrap() > t.created_at.unwrap());
    assert!(t.last_used_at.is_none());

    // Used: it reads, it may not write, and its use is recorded.
    let reader = server.client_with(&secret).await;
    reader.info().await.unwrap();
    assert_eq!(code(reader.record_snapshot().await), Code::PermissionDenied);
    until(Duration::from_secs(10), "last use recorded", async || {
        admin.token(&t.id).await.unwrap().last_used_at.is_some()
    })
    .await;
    // The secret is nowhere in what the server answers.
    let listed = admin.list_tokens(false, 100).await.unwrap();
    assert!(listed.iter().any(|l| l.id == t.id));
    assert!(!format!("{listed:?}").contains(&secret[40..]));

    // Expired: refused, and listed only with --all.
    until(Duration::from_secs(30), "the token expires", async || {
        reader.info().await.err().is_some_and(|e| e.code() == Some(Code::Unauthenticated))
    })
    .await;
    let e = reader.info().await.unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(!admin.list_tokens(false, 100).await.unwrap().iter().any(|l| l.id == t.id));
    assert!(admin.list_tokens(true, 100).await.unwrap().iter().any(|l| l.id == t.id));

    // Bad input is refused and creates nothing; only admins manage tokens.
    let before = admin.list_tokens(true, 1000).await.unwrap().len();
    assert_eq!(code(admin.create_token("has space", Role::Viewer, &[], None).await), Code::InvalidArgument);
    assert_eq!(code(admin.create_token("", Role::Viewer, &[], None).await), Code::InvalidArgument);
    assert_eq!(code(admin.create_token("zero", Role::Viewer, &[], Some(Duration::ZERO)).await), Code::InvalidArgument);
    assert_eq!(code(admin.create_token("owner", Role::Viewer, &["".into()], None).await), Code::InvalidArgument);
    let operator = server.client_with(OPERATOR_TOKEN).await;
    assert_eq!(code(operator.create_token("mine", Role::Admin, &[], None).await), Code::PermissionDenied);
    assert_eq!(code(operator.list_tokens(false, 10).await), Code::PermissionDenied);
    assert_eq!(admin.list_tokens(true, 1000).await.unwrap().len(), before);
    assert_eq!(code(admin.revoke_token("0193a1b2c3d4e5f60718293a4b5c6d7e").await), Code::NotFound);
    assert_eq!(code(admin.token("nope").await), Code::NotFound);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_on_one_instance_is_refused_on_another() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database("tokens_fleet").await.unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = |dir: &std::path::Path| {
        let mut config = test_config(cluster.primary_url(&db), vec![cluster.replica_url(&db)], &dir.join("objects"));
        config.tokens = test_tokens();
        TestServer::start(config)
    };
    let a = start(a_dir.path()).await.unwrap();
    let b = start(b_dir.path()).await.unwrap();
    let admin_a = a.client_with(ADMIN_TOKEN).await;

    let (t, secret) = admin_a.create_token("app", Role::Operator, &[], None).await.unwrap();
    let on_b = b.client_with(&secret).await;
    // Used on B (and so cached there) before it is revoked on A.
    on_b.record_snapshot().await.unwrap();
    let revoked = admin_a.revoke_token(&t.id).await.unwrap();
    assert_eq!(revoked.revoked_by, "test-admin");
    assert!(revoked.revoked_at.is_some());
    // Revoking again changes nothing.
    assert_eq!(admin_a.revoke_token(&t.id).await.unwrap().revoked_at, revoked.revoked_at);
    let took = until(Duration::from_secs(30), "B refuses the revoked token", async || {
        on_b.info().await.err().is_some_and(|e| e.code() == Some(Code::Unauthenticated))
    })
    .await;
    println!("revocation on A refused on B after {took:?} (token_cache_ttl 2 s)");
    let e = on_b.record_snapshot().await.unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    // Both instances' records of it are in the one catalog.
    let events = admin_a.audit_events(&AuditQuery { caller: Some("app".into()), ..Default::default() }, 100).await;
    let events = events.unwrap();
    assert!(events.iter().any(|e| e.method.ends_with("/RecordSnapshot") && e.code == "OK"));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_sees_and_writes_only_its_owners_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(dir.path()).await;
    let admin = server.client_with(ADMIN_TOKEN).await;
    let (_, a_secret) = admin.create_token("tenant-a-app", Role::Operator, &["tenant-a".into()], None).await.unwrap();
    let (_, b_secret) = admin.create_token("tenant-b-app", Role::Operator, &["tenant-b".into()], None).await.unwrap();
    let (_, ab_secret) =
        admin.create_token("ab-app", Role::Viewer, &["tenant-a".into(), "tenant-b".into()], None).await.unwrap();
    let (a, b, ab) = (
        server.client_with(&a_secret).await,
        server.client_with(&b_secret).await,
        server.client_with(&ab_secret).await,
    );
    let operator = server.client_with(OPERATOR_TOKEN).await;

    // Uploads are stamped with the token's owner; naming another is refused.
    let opts = UploadOptions::default();
    let fa = a.upload_bytes(&opts, "a.txt", Bytes::from_static(b"for tenant a")).await.unwrap();
    assert_eq!(fa.owner, "tenant-a");
    let other = UploadOptions { owner: "tenant-b".into(), ..Default::default() };
    assert_eq!(code(a.upload_bytes(&other, "x.txt", Bytes::from_static(b"x")).await), Code::PermissionDenied);
    assert_eq!(code(a.create_upload(&other, "x.txt", Some(1)).await), Code::PermissionDenied);
    let fb = b.upload_bytes(&opts, "b.txt", Bytes::from_static(b"for tenant b")).await.unwrap();
    assert_eq!(fb.owner, "tenant-b");
    let unowned =
        operator.upload_bytes(&UploadOptions::default(), "c.txt", Bytes::from_static(b"nobody's")).await.unwrap();

    // B cannot see, read or delete A's file: it does not exist for B.
    assert_eq!(code(b.stat_file(&fa.id).await), Code::NotFound);
    assert_eq!(code(b.download_bytes(&fa.id, 0, 0).await), Code::NotFound);
    assert_eq!(code(b.delete_file(&fa.id).await), Code::NotFound);
    assert_eq!(code(b.stat_file(&unowned.id).await), Code::NotFound);
    let listed = b.list_files(&FileQuery::default()).await.unwrap();
    assert_eq!(listed.files.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(), [fb.id.as_str()]);
    let asked = b.list_files(&FileQuery { owner: Some("tenant-a".into()), ..Default::default() }).await.unwrap();
    assert!(asked.files.is_empty());
    // An upload of A's is not B's to continue or inspect.
    let pending = a.create_upload(&opts, "later.txt", Some(4)).await.unwrap();
    assert_eq!(code(b.upload_status(&pending).await), Code::NotFound);
    let chunks = futures::stream::iter([Bytes::from_static(b"b?!!")]);
    assert_eq!(code(b.resume_upload(&pending, 0, chunks).await), Code::NotFound);
    let done = a.resume_upload(&pending, 0, futures::stream::iter([Bytes::from_static(b"a!!!")])).await.unwrap();
    assert_eq!(done.owner, "tenant-a");

    // A token scoped to two owners sees both, must name one to upload (a viewer may not upload).
    let both = ab.list_files(&FileQuery::default()).await.unwrap();
    assert_eq!(both.files.len(), 3);
    assert_eq!(ab.download_bytes(&fa.id, 0, 0).await.unwrap(), b"for tenant a");
    assert_eq!(code(ab.upload_bytes(&opts, "v.txt", Bytes::from_static(b"v")).await), Code::PermissionDenied);

    // A scoped token may call the file methods and GetInfo, nothing else.
    a.info().await.unwrap();
    assert_eq!(code(a.list_policies().await), Code::PermissionDenied);
    assert_eq!(code(a.storage_metrics(None).await), Code::PermissionDenied);

    // What B was refused changed nothing; A still reads its file, and deletes it.
    assert_eq!(a.download_bytes(&fa.id, 0, 0).await.unwrap(), b"for tenant a");
    a.delete_file(&fa.id).await.unwrap();
    assert_eq!(code(a.stat_file(&fa.id).await), Code::NotFound);
    assert_eq!(operator.list_files(&FileQuery::default()).await.unwrap().files.len(), 3);
    server.stop().await.unwrap();
}

async fn strata(server: &TestServer, token: &str, args: &[&str]) -> (std::process::ExitCode, String) {
    let url = server.url();
    let mut argv = vec!["strata", "--url", &url, "--token", token];
    argv.extend_from_slice(args);
    let mut out = Vec::new();
    let code = run(Cli::try_parse_from(argv).unwrap(), &mut out).await.unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_lists_shows_and_revokes_tokens_and_reads_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let server = sqlite_server(dir.path()).await;
    let (code, out) =
        strata(&server, ADMIN_TOKEN, &["--json", "tokens", "create", "deployer", "--role", "operator", "--ttl", "1h"])
            .await;
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (id, secret) = (v["token"]["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned());
    assert_eq!(v["token"]["role"], "operator");

    let (_, out) = strata(&server, &secret, &["snapshot"]).await;
    assert!(out.starts_with("snapshot"), "{out}");
    let (_, out) = strata(&server, ADMIN_TOKEN, &["tokens", "ls"]).await;
    assert!(out.contains(&id) && out.contains("deployer") && out.contains("active"), "{out}");
    let (_, out) = strata(&server, ADMIN_TOKEN, &["tokens", "show", &id]).await;
    assert!(out.contains("created by") || out.contains("test-admin"), "{out}");
    let (_, out) = strata(&server, ADMIN_TOKEN, &["tokens", "revoke", &id]).await;
    assert!(out.contains("revoked by test-admin"), "{out}");
    let (_, out) = strata(&server, ADMIN_TOKEN, &["tokens", "ls", "--all"]).await;
    assert!(out.contains("revoked"), "{out}");
    let refused = Client::connect(server.url()).await.unwrap().with_token(&secret).unwrap().info().await;
    assert_eq!(refused.unwrap_err().code(), Some(Code::Unauthenticated));

    let (_, out) = strata(&server, ADMIN_TOKEN, &["audit", "ls", "--caller", "deployer"]).await;
    assert!(out.contains("StorageService/RecordSnapshot") && out.contains("OK"), "{out}");
    let (_, out) =
        strata(&server, ADMIN_TOKEN, &["--json", "audit", "ls", "--method", "/strata.v1.TokenService/RevokeToken"])
            .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["caller"], "test-admin");
    assert_eq!(v[0]["resource"], format!("id={id}"));
    assert_eq!(v[0]["auth_method"], "config_token");
    // Never a secret: not the created token's, not the bearer tokens of the calls.
    let (_, all) = strata(&server, ADMIN_TOKEN, &["--json", "audit", "ls", "--limit", "10000"]).await;
    assert!(all.contains("CreateToken") && !all.contains(&secret) && !all.contains(ADMIN_TOKEN), "{all}");
    // Only admins read it.
    let viewer = server.client_with(VIEWER_TOKEN).await;
    assert_eq!(viewer.audit_events(&AuditQuery::default(), 10).await.unwrap_err().code(), Some(Code::PermissionDenied));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_events_past_their_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let start = |retention: Duration| {
        let mut config =
            test_config(format!("sqlite://{}", dir.path().join("s.db").display()), vec![], &dir.path().join("objects"));
        config.tokens = test_tokens();
        config.audit_retention = retention;
        TestServer::start(config)
    };
    let server = start(Duration::from_secs(3600)).await.unwrap();
    let admin = server.client_with(ADMIN_TOKEN).await;
    admin.record_snapshot().await.unwrap();
    assert_eq!(code(server.client_with(VIEWER_TOKEN).await.record_snapshot().await), Code::PermissionDenied);
    let q = AuditQuery::default();
    until(Duration::from_secs(10), "both events stored", async || admin.audit_events(&q, 10).await.unwrap().len() == 2)
        .await;
    server.stop().await.unwrap();

    // Restarted with a retention of one second: the pruning that runs at start removes them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = start(Duration::from_secs(1)).await.unwrap();
    let admin = server.client_with(ADMIN_TOKEN).await;
    until(Duration::from_secs(30), "old events pruned", async || admin.audit_events(&q, 10).await.unwrap().is_empty())
        .await;
    server.stop().await.unwrap();
}
