//! TLS and mutual TLS on the gRPC port, with certificates from a throw-away CA (`openssl`): the SDK
//! and grpcurl over TLS, plaintext refused on the TLS port, client certificates mapped to roles and
//! refused at the handshake when missing or from another CA, certificates reloaded for new
//! connections (file change, and SIGHUP), and no listening beyond loopback without credentials.

use std::{path::Path, process::Command, time::Duration};

use strata_client::{Client, TlsOptions};
use strata_server::config::{CertRule, Config};
use strata_tests::{
    TestServer,
    pki::{Issued, Pki},
    server::{test_config, test_tokens},
};

use crate::support::grpcurl_result;

fn sqlite_config(dir: &Path) -> Config {
    test_config(format!("sqlite://{}", dir.join("strata.db").display()), Vec::new(), &dir.join("objects"))
}

fn with_tls(mut config: Config, server: &Issued) -> Config {
    config.tls_cert = Some(server.cert.clone());
    config.tls_key = Some(server.key.clone());
    config
}

fn trust(ca: &Path) -> TlsOptions {
    TlsOptions::from_files(Some(ca), None, None).unwrap()
}

fn identity(ca: &Path, who: &Issued) -> TlsOptions {
    TlsOptions::from_files(Some(ca), Some(&who.cert), Some(&who.key)).unwrap()
}

/// Connects and makes one call; Err(text) when either fails (a handshake refused shows in one or
/// the other, depending on when the client learns of it).
async fn info(url: &str, tls: &TlsOptions) -> Result<Client, String> {
    let client = Client::connect_with(url, tls).await.map_err(|e| format!("{e:?}"))?;
    client.info().await.map_err(|e| format!("{e:?}"))?;
    Ok(client)
}

/// The error of a connection or call that must fail.
async fn refused(url: &str, tls: &TlsOptions) -> String {
    match info(url, tls).await {
        Ok(_) => panic!("{url}: served, expected a refusal"),
        Err(e) => e,
    }
}

fn code<T>(r: Result<T, strata_client::Error>) -> Result<(), Option<tonic::Code>> {
    r.map(|_| ()).map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_the_sdk_and_grpcurl_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "main").unwrap();
    let other = Pki::new(&dir.path().join("other"), "other").unwrap();
    let server = TestServer::start(with_tls(sqlite_config(dir.path()), &pki.server("server").unwrap())).await.unwrap();
    let url = server.https_url();

    let client = info(&url, &trust(&pki.ca)).await.unwrap();
    assert_eq!(client.health("").await.unwrap(), strata_client::HealthStatus::Serving);
    // A server certificate from a CA the client does not trust, and plaintext on the TLS port.
    let err = refused(&url, &trust(&other.ca)).await;
    assert!(err.to_lowercase().contains("certificate") || err.contains("Connect"), "{err}");
    assert!(info(&server.url(), &TlsOptions::default()).await.is_err(), "plaintext must not be served");
    // TLS options on an http:// URL are refused before connecting.
    assert!(matches!(
        Client::connect_with(server.url(), &trust(&pki.ca)).await.err(),
        Some(strata_client::Error::Tls(_))
    ));

    let (ca, addr) = (pki.ca.display().to_string(), format!("localhost:{}", server.addr.port()));
    let got = tokio::task::spawn_blocking(move || {
        let list = grpcurl_result(&["-cacert", &ca, &addr, "list"])?;
        let call = grpcurl_result(&["-cacert", &ca, "-d", "{}", &addr, "strata.v1.AdminService/GetInfo"]);
        let plain = grpcurl_result(&["-plaintext", &addr, "list"]);
        let insecure_name = grpcurl_result(&["-cacert", &ca, &addr.replace("localhost", "127.0.0.2"), "list"]);
        Some((list, call?, plain?, insecure_name?))
    })
    .await
    .unwrap();
    if let Some((list, call, plain, wrong_host)) = got {
        let list = list.unwrap();
        assert!(list.lines().any(|l| l.trim() == "strata.v1.AdminService"), "{list}");
        let call: serde_json::Value = serde_json::from_str(&call.unwrap()).unwrap();
        assert_eq!(call["backend"], "DATABASE_BACKEND_SQLITE", "{call}");
        assert!(plain.is_err(), "grpcurl -plaintext on the TLS port must fail");
        // 127.0.0.2 is not a name the certificate carries (connection refused or a name mismatch).
        assert!(wrong_host.is_err());
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_maps_certificates_to_roles_and_refuses_the_rest_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"), "main").unwrap();
    let other = Pki::new(&dir.path().join("other"), "other").unwrap();
    let mut config = with_tls(sqlite_config(dir.path()), &pki.server("server").unwrap());
    config.tls_client_ca = Some(pki.ca.clone());
    config.tls_client_roles = vec![
        "ops:operator:cn=ops.internal".parse::<CertRule>().unwrap(),
        "billing:viewer:san=spiffe://corp/billing".parse().unwrap(),
    ];
    config.tokens = test_tokens();
    let server = TestServer::start(config).await.unwrap();
    let url = server.https_url();
    let ops = pki.client("ops", "ops.internal", &[]).unwrap();
    let billing = pki.client("billing", "billing-7f3a", &["DNS:billing.corp", "URI:spiffe://corp/billing"]).unwrap();
    let stranger = pki.client("stranger", "someone", &["DNS:someone.corp"]).unwrap();
    let forged = other.client("forged", "ops.internal", &[]).unwrap();

    // Refused at the handshake: no client certificate, or one from another CA (same CN).
    refused(&url, &trust(&pki.ca)).await;
    refused(&url, &identity(&pki.ca, &forged)).await;

    let c = info(&url, &identity(&pki.ca, &ops)).await.unwrap();
    code(c.record_snapshot().await).unwrap();
    let c = info(&url, &identity(&pki.ca, &billing)).await.unwrap();
    code(c.storage_metrics(None).await).unwrap();
    assert_eq!(code(c.record_snapshot().await), Err(Some(tonic::Code::PermissionDenied)));
    // A verified certificate no rule names: its calls need a token.
    let c = Client::connect_with(&url, &identity(&pki.ca, &stranger)).await.unwrap();
    assert_eq!(code(c.info().await), Err(Some(tonic::Code::Unauthenticated)));
    let c = c.with_token(strata_tests::server::OPERATOR_TOKEN).unwrap();
    code(c.record_snapshot().await).unwrap();

    // The CLI: --ca, --cert, --key.
    let cli = |args: Vec<String>| async move {
        use clap::Parser;
        let cli = strata_client::cli::Cli::try_parse_from(args).unwrap();
        let mut out = Vec::new();
        let r = strata_client::cli::run(cli, &mut out).await;
        r.map(|_| String::from_utf8(out).unwrap()).map_err(|e| e.to_string())
    };
    let argv = |extra: &[&Path]| {
        let mut a: Vec<String> = ["strata", "--json", "--url", url.as_str(), "--ca"].map(String::from).to_vec();
        a.push(pki.ca.display().to_string());
        for (flag, p) in ["--cert", "--key"].iter().zip(extra) {
            a.extend([flag.to_string(), p.display().to_string()]);
        }
        a.push("metrics".into());
        a
    };
    let out = cli(argv(&[&billing.cert, &billing.key])).await.unwrap();
    assert!(out.contains("\"backend\""), "{out}");
    cli(argv(&[])).await.expect_err("no client certificate: refused");

    let (ca, cert, key, addr) = (
        pki.ca.display().to_string(),
        billing.cert.display().to_string(),
        billing.key.display().to_string(),
        format!("localhost:{}", server.addr.port()),
    );
    let got = tokio::task::spawn_blocking(move || {
        let with_cert = grpcurl_result(&[
            "-cacert",
            &ca,
            "-cert",
            &cert,
            "-key",
            &key,
            "-d",
            "{}",
            &addr,
            "strata.v1.StorageService/GetStorageMetrics",
        ])?;
        let without = grpcurl_result(&["-cacert", &ca, &addr, "list"])?;
        Some((with_cert, without))
    })
    .await
    .unwrap();
    if let Some((with_cert, without)) = got {
        assert!(with_cert.unwrap().contains("DATABASE_BACKEND_SQLITE"));
        assert!(without.is_err(), "grpcurl without a client certificate must be refused");
    }
    server.stop().await.unwrap();
}

/// Replaces `to`'s certificate and key with `from`'s, each in one rename (a reload never sees a
/// half-written file).
fn install(from: &Issued, to: &Issued) {
    for (src, dst) in [(&from.key, &to.key), (&from.cert, &to.cert)] {
        let tmp = dst.with_extension("new");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

/// Waits until a new connection trusting `ca` is served (the reload happened), for at most 15 s.
async fn until_served(url: &str, ca: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match info(url, &trust(ca)).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("the new certificate was not served: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_reloaded_for_new_connections_on_change_and_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two, three) = (
        Pki::new(&dir.path().join("one"), "one").unwrap(),
        Pki::new(&dir.path().join("two"), "two").unwrap(),
        Pki::new(&dir.path().join("three"), "three").unwrap(),
    );
    let live = Issued { cert: dir.path().join("live.crt"), key: dir.path().join("live.key") };
    install(&one.server("server").unwrap(), &live);
    let server = TestServer::start(with_tls(sqlite_config(dir.path()), &live)).await.unwrap();
    let url = server.https_url();
    let before = info(&url, &trust(&one.ca)).await.unwrap();

    // A changed file: seen within the watch interval.
    install(&two.server("server").unwrap(), &live);
    until_served(&url, &two.ca).await;
    refused(&url, &trust(&one.ca)).await;
    // The connection made before keeps working.
    before.info().await.unwrap();

    // SIGHUP: the files change but keep their modification times, so only the signal reloads.
    let stamps: Vec<_> =
        [&live.cert, &live.key].iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    install(&three.server("server").unwrap(), &live);
    for (p, t) in [&live.cert, &live.key].iter().zip(stamps) {
        std::fs::File::options().write(true).open(p).unwrap().set_modified(t).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    info(&url, &trust(&two.ca)).await.expect("unchanged modification times: no reload without the signal");
    // To this process: the server's watcher has installed its SIGHUP handler, so it is not fatal.
    let pid = std::process::id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    until_served(&url, &three.ca).await;

    // A broken file: the reload fails and the previous certificate stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    info(&url, &trust(&three.ca)).await.expect("a failed reload keeps the certificate");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn listening_beyond_loopback_needs_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_config(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    let err = TestServer::start(config.clone()).await.err().expect("no credentials: refused").to_string();
    assert!(err.contains("without credentials") && err.contains("auth tokens"), "{err}");
    config.tokens = test_tokens();
    let server = TestServer::start(config).await.unwrap();
    let c = Client::connect(format!("http://127.0.0.1:{}", server.addr.port())).await.unwrap();
    assert_eq!(code(c.info().await), Err(Some(tonic::Code::Unauthenticated)));
    server.stop().await.unwrap();
}
