//! The `strata-server` binary's subcommands.

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata-server"))
}

#[test]
fn migrate_applies_once_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let run = || {
        let out = server().args(["--database-url", &url, "migrate"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let embedded = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite")).unwrap().count();
    assert_eq!(run().trim(), format!("applied {embedded} migration(s)"));
    assert_eq!(run().trim(), "applied 0 migration(s)");
}

#[test]
fn hash_token_prints_sha256() {
    let out = server().args(["hash-token", "test"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

#[test]
fn bad_settings_fail_with_a_clear_message() {
    let out = server().args(["--database-url", "mysql://x", "migrate"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unsupported database url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = server().args(["--auth-token", "ops:root:abc", "serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role"));
}

#[test]
fn help_lists_every_setting() {
    let out = server().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    // Every setting the server accepts, from its own argument definitions.
    let args = <strata_server::config::ConfigArgs as clap::Args>::augment_args(clap::Command::new("strata-server"));
    let flags: Vec<String> = args.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
    assert!(flags.len() > 30 && flags.contains(&"--run-scheduler".to_string()), "{flags:?}");
    for flag in &flags {
        assert!(help.contains(flag.as_str()), "{flag} missing from --help");
        assert!(doc.contains(&format!("`{flag}`")), "{flag} missing from docs/configuration.md");
    }
}

#[test]
fn docs_name_every_variable_and_key() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).unwrap();
    let args = <strata_server::config::ConfigArgs as clap::Args>::augment_args(clap::Command::new("strata-server"));
    for arg in args.get_arguments() {
        let id = arg.get_id().as_str();
        let env = arg.get_env().unwrap_or_else(|| panic!("{id} has no STRATA_* variable")).to_str().unwrap();
        assert!(
            env.starts_with("STRATA_") && doc.contains(&format!("`{env}`")),
            "{env} missing from docs/configuration.md"
        );
        // The TOML key is the id (`--config` names the file, `[[tokens]]` are tables).
        assert!(
            id == "config" || doc.contains(&format!("| `{id}` |")) || doc.contains(&format!("`[[{id}]]`")),
            "TOML key {id} missing from docs/configuration.md"
        );
    }
}

/// The layers through the real command line, subcommand included: a variable wins over the file,
/// a flag (here after the subcommand) over the variable.
#[test]
fn variables_and_flags_win_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("strata.toml");
    std::fs::write(&file, "database_url = \"mysql://from-the-file\"\n").unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("m.db").display());
    let migrate = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = server();
        cmd.env_remove("STRATA_DATABASE_URL").args(["--config", file.to_str().unwrap(), "migrate"]);
        if let Some(url) = env {
            cmd.env("STRATA_DATABASE_URL", url);
        }
        if let Some(url) = flag {
            cmd.args(["--database-url", url]);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, stderr) = migrate(None, None);
    assert!(!ok && stderr.contains("unsupported database url"), "{stderr}");
    let (ok, stderr) = migrate(Some(&sqlite), None);
    assert!(ok, "{stderr}");
    let (ok, stderr) = migrate(Some(&sqlite), Some("mysql://from-the-flag"));
    assert!(!ok && stderr.contains("unsupported database url"), "{stderr}");
    let (ok, stderr) = migrate(Some("mysql://from-the-variable"), Some(&sqlite));
    assert!(ok, "{stderr}");
}

/// A first SIGTERM drains for load balancers (`shutdown_delay`); a second one, an operator who
/// does not want to wait, ends that delay: the server drains and exits at once.
#[tokio::test]
async fn a_second_sigterm_skips_the_rest_of_the_shutdown_delay() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("strata.db").display());
    let objects = format!("file://{}", dir.path().join("objects").display());
    let mut server = strata_tests::process::ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", &db),
            ("STRATA_OBJECT_STORE_URL", &objects),
            // Far longer than the test waits for anything.
            ("STRATA_SHUTDOWN_DELAY", "10m"),
        ],
    );
    server.client().await;
    server.sigterm();
    // Still serving within the delay: the first signal alone does not stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.try_exit().is_none(), "exited on the first SIGTERM; its log:\n{}", server.log());
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}; its log:\n{}", server.log());
}

/// A request id sent as `x-request-id` comes back in the response headers and names the call's
/// log lines and those of the background work it started (an archive run, in a span of its own);
/// a call without one gets a new id, different each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_names_the_calls_log_lines_and_its_background_work() {
    use std::time::Duration;

    use diesel::{Connection as _, connection::SimpleConnection as _};
    use strata_client::{
        archive::ArchivePolicy,
        pb::{self, admin_service_client::AdminServiceClient, archive_service_client::ArchiveServiceClient},
    };

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.db");
    let mut app = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    app.batch_execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, created_at TEXT, body TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
         INSERT INTO t SELECT i, datetime('now', '-400 days'), 'row ' || i FROM s;",
    )
    .unwrap();
    drop(app);
    let db = format!("sqlite://{}", path.display());
    let objects = format!("file://{}", dir.path().join("objects").display());
    let server = strata_tests::process::ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", &db),
            ("STRATA_OBJECT_STORE_URL", &objects),
            ("STRATA_LOG_FORMAT", "json"),
            ("STRATA_LOG", "info,strata_server::grpc::observe=debug"),
        ],
    );
    let client = server.client().await;
    let policy = ArchivePolicy {
        name: "t".into(),
        table_name: "t".into(),
        time_column: "created_at".into(),
        key_columns: vec!["id".into()],
        archive_after: Duration::from_secs(30 * 86_400),
        batch_size: 50,
        ..Default::default()
    };
    client.create_policy(&policy).await.unwrap();

    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut req = tonic::Request::new(pb::RunArchiveRequest { policy: "t".into() });
    req.metadata_mut().insert("x-request-id", "req-7f3a-archive".parse().unwrap());
    let answer = ArchiveServiceClient::new(channel.clone()).run_archive(req).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "req-7f3a-archive");
    let run = answer.into_inner().run.unwrap();
    client.wait_archive_run(&run.id, Duration::from_millis(20)).await.unwrap();

    // Without an id, or with one unfit for logs: a new one each time.
    let mut ids = Vec::new();
    for sent in [None, Some("bad id with spaces")] {
        let mut req = tonic::Request::new(pb::GetInfoRequest {});
        if let Some(s) = sent {
            req.metadata_mut().insert("x-request-id", s.parse().unwrap());
        }
        let answer = AdminServiceClient::new(channel.clone()).get_info(req).await.unwrap();
        let id = answer.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);

    // The call's line and the run's lines (started, ended) all carry the id.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = server.log();
        let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let with_id = |message: &str| {
            lines.iter().any(|l| {
                l["message"] == message && l["spans"].to_string().contains("\"request_id\":\"req-7f3a-archive\"")
            })
        };
        if with_id("call finished") && with_id("run started") && with_id("run ended") {
            let call =
                lines.iter().find(|l| l["message"] == "call finished" && l["span"]["request_id"] == "req-7f3a-archive");
            let span = &call.expect("the call's line")["span"];
            assert_eq!(span["rpc.method"], "RunArchive");
            assert_eq!(span["rpc.service"], "strata.v1.ArchiveService");
            assert_eq!(span["caller"], "loopback");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "log lines without the request id:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With `otlp_endpoint`, every call's span reaches an OTLP/gRPC receiver (the collector's
/// TraceService, served here): named `service/method`, of kind SERVER, with the RPC attributes,
/// the caller and the request id, joined to the caller's trace by its `traceparent`.
#[tokio::test(flavor = "multi_thread")]
async fn traces_reach_an_otlp_receiver_with_the_calls_names_and_attributes() {
    use std::time::Duration;

    use opentelemetry_proto::tonic::{
        collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
        common::v1::{AnyValue, KeyValue, any_value::Value},
        trace::v1::span::SpanKind,
    };
    use strata_client::pb::{self, admin_service_client::AdminServiceClient};

    struct Receiver(tokio::sync::mpsc::UnboundedSender<ExportTraceServiceRequest>);
    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let _ = self.0.send(req.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }
    fn text(v: &Option<AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        }
    }
    fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
        attrs.iter().find(|a| a.key == key).map(|a| text(&a.value))
    }

    let port = strata_tests::pg::free_port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve(([127, 0, 0, 1], port).into()),
    );
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("strata.db").display());
    let objects = format!("file://{}", dir.path().join("objects").display());
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = strata_tests::process::ServerProcess::spawn(
        env!("CARGO_BIN_EXE_strata-server"),
        &[
            ("STRATA_DATABASE_URL", &db),
            ("STRATA_OBJECT_STORE_URL", &objects),
            ("STRATA_OTLP_ENDPOINT", &endpoint),
            // Batches leave within 100 ms rather than the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    server.client().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut req = tonic::Request::new(pb::GetInfoRequest {});
    req.metadata_mut().insert("x-request-id", "otlp-req-1".parse().unwrap());
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent}-01").parse().unwrap());
    AdminServiceClient::new(channel).get_info(req).await.unwrap();

    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let batch = rx.recv().await.expect("the receiver runs");
            for rs in batch.resource_spans {
                let service = rs.resource.as_ref().and_then(|r| attr(&r.attributes, "service.name"));
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        if attr(&span.attributes, "request_id").as_deref() == Some("otlp-req-1") {
                            return (service, span);
                        }
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("no span with the request id reached the receiver; the server's log:\n{}", server.log())
    });
    let (service, span) = found;
    assert_eq!(service.as_deref(), Some("strata"));
    assert_eq!(span.name, "strata.v1.AdminService/GetInfo");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex::encode(&span.trace_id), trace_id, "joined to the caller's trace");
    assert_eq!(hex::encode(&span.parent_span_id), parent);
    for (key, want) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "strata.v1.AdminService"),
        ("rpc.method", "GetInfo"),
        ("caller", "loopback"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(attr(&span.attributes, key).as_deref(), Some(want), "{key} in {:?}", span.attributes);
    }
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
}
