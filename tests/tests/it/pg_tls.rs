//! PostgreSQL as production runs it: `ssl = on` and `pg_hba.conf` taking TCP connections only with
//! TLS and SCRAM (primary, replica and replication). strata connects to both with
//! `sslmode=verify-full` and a password holding `+ @ : / %` (percent-encoded), serves reads from the
//! replica, and its backups (`pg_dump`, libpq reading the same URL) work; a server certificate from
//! another CA, and plaintext, are refused; a client certificate (`sslcert`, `sslkey`) logs in where
//! `pg_hba.conf` asks for one.

use std::time::Duration;

use strata_client::backup::BackupState;
use strata_tests::{PgCluster, TestServer, pg::bindir, pki::Pki, server::test_config};

const PASSWORD: &str = "p+a@s:s/w%rd x";

#[tokio::test(flavor = "multi_thread")]
async fn strata_and_its_backups_use_tls_with_verify_full_and_scram() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "pg").unwrap();
    let other = Pki::new(&dir.path().join("other"), "other").unwrap();
    // Named `localhost` only: 127.0.0.1 is an address the certificate does not name.
    let cert = pki.server_for("pg-server", &["DNS:localhost"]).unwrap();
    let (ca_pki, server_cert) = (pki.clone(), cert);
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start_secure(&ca_pki, &server_cert, PASSWORD))
        .await
        .unwrap()
        .unwrap();
    let db = cluster.create_database("pg_tls").await.unwrap();
    let verify = |ca: &std::path::Path| format!("sslmode=verify-full&sslrootcert={}", ca.display());
    let s3 = strata_tests::S3Server::start("strata-backups").unwrap();
    let mut config = test_config(
        cluster.tls_url(true, &db, &verify(&pki.ca)),
        vec![cluster.tls_url(false, &db, &verify(&pki.ca))],
        &dir.path().join("objects"),
    );
    config.object_store_url = s3.url();
    config.pg_bin_dir = Some(bindir());
    let server = TestServer::start(config.clone()).await.unwrap();
    let client = server.client().await;

    // Both nodes up over TLS; a write on the primary, reads served by the replica.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = client.info().await.unwrap();
        if info.nodes.iter().all(|n| n.healthy) && info.nodes.iter().any(|n| n.serving_reads) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "nodes not healthy over TLS: {:?}", info.nodes);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for probe in client.test_connection().await.unwrap() {
        assert!(probe.ok, "{probe:?}");
    }
    client.record_snapshot().await.unwrap();
    client.storage_metrics(None).await.unwrap();
    // The sessions are encrypted (asked of the server itself).
    let mut c = cluster.connect(&db).await.unwrap();
    let encrypted = strata_tests::pg::count(
        &mut c,
        "SELECT count(*)::int8 AS n FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
          WHERE s.ssl AND a.application_name = 'strata'",
    )
    .await;
    assert!(encrypted > 0, "no strata session uses TLS");

    // pg_dump reads the same URL (libpq: verify-full, the root certificate, the password).
    let backup = client.run_backup().await.unwrap();
    let backup = client.wait_backup(&backup.id, Duration::from_millis(50)).await.unwrap();
    assert_eq!(backup.state, BackupState::Succeeded, "{backup:?}");
    server.stop().await.unwrap();

    // A server certificate from another CA, and plaintext, are refused.
    for url in [cluster.tls_url(true, &db, &verify(&other.ca)), cluster.tls_url(true, &db, "sslmode=disable")] {
        let mut bad = config.clone();
        bad.database_url = url.clone();
        bad.replica_urls = vec![];
        bad.startup_timeout = Duration::from_secs(2);
        let err = TestServer::start(bad).await.err().unwrap_or_else(|| panic!("{url}: served"));
        let text = format!("{err:#}");
        assert!(text.contains("certificate") || text.contains("pg_hba") || text.contains("encryption"), "{text}");
    }

    // verify-ca checks the chain, not the name: served on 127.0.0.1, which verify-full refuses.
    let by_address = |mode: &str| {
        let mut c = config.clone();
        c.database_url = cluster
            .tls_url(true, &db, &format!("sslmode={mode}&sslrootcert={}", pki.ca.display()))
            .replace("@localhost:", "@127.0.0.1:");
        c.replica_urls = vec![];
        c.startup_timeout = Duration::from_secs(2);
        c
    };
    TestServer::start(by_address("verify-ca")).await.unwrap().stop().await.unwrap();
    let err = format!("{:#}", TestServer::start(by_address("verify-full")).await.err().expect("a name mismatch"));
    assert!(err.contains("certificate"), "{err}");

    // A client certificate instead of a password (`hostssl … cert` for the role certuser): served
    // with sslcert and sslkey, refused without them.
    let me = pki.client("certuser", "certuser", &[]).unwrap();
    let port = cluster.primary.port;
    let base = format!("postgres://certuser@localhost:{port}/{db}?{}", verify(&pki.ca));
    let mut with_cert = config.clone();
    with_cert.database_url = format!("{base}&sslcert={}&sslkey={}", me.cert.display(), me.key.display());
    with_cert.replica_urls = vec![];
    let server = TestServer::start(with_cert.clone()).await.unwrap();
    server.client().await.record_snapshot().await.unwrap();
    server.stop().await.unwrap();
    with_cert.database_url = base;
    with_cert.startup_timeout = Duration::from_secs(2);
    let err = format!("{:#}", TestServer::start(with_cert).await.err().expect("no client certificate: refused"));
    assert!(err.contains("certificate"), "{err}");
}
