//! The layering, the defaults and the file's checks.

use super::*;

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// `ConfigArgs` as `strata-server` parses `argv`; with `env` false the process environment is
/// left out, so a `STRATA_*` variable of whoever runs the tests changes nothing.
fn args_from(argv: &[&str], env: bool) -> ConfigArgs {
    let mut cmd = <ConfigArgs as clap::Args>::augment_args(clap::Command::new("strata-server"));
    if !env {
        cmd = cmd.mut_args(|a| a.env(Resettable::Reset));
    }
    let matches = cmd.try_get_matches_from(std::iter::once("strata-server").chain(argv.iter().copied())).unwrap();
    ConfigArgs::from_arg_matches(&matches).unwrap()
}

fn args(argv: &[&str]) -> ConfigArgs {
    args_from(argv, false)
}

fn write(dir: &tempfile::TempDir, toml: &str) -> String {
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn layers_apply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        r#"
        listen = "127.0.0.1:6000"
        pool_max_size = 4
        statement_timeout = "10s"
        [[tokens]]
        name = "ops"
        role = "operator"
        sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        "#,
    );
    // The flag wins over the file, the file over the default.
    let c = Config::load(&args(&["--config", &path, "--pool-max-size", "8"])).unwrap();
    assert_eq!(c.listen.port(), 6000);
    assert_eq!(c.pool_max_size, 8);
    assert_eq!(c.statement_timeout, Duration::from_secs(10));
    assert_eq!(c.pool_acquire_timeout, Duration::from_secs(5));
    assert_eq!(c.tokens.len(), 1);
    assert_eq!(c.tokens[0].role, Role::Operator);
    assert_eq!(c.database_url, "sqlite://./strata-data/strata.db");
}

/// One setting of each kind: duration, number, bool, list, URL (and the nested retention).
const EVERY_KIND: &str = r#"
    statement_timeout = "10s"
    pool_max_size = 4
    run_scheduler = false
    replica_urls = ["postgres://file-replica/app"]
    database_url = "postgres://file/app"
    backup_keep_weekly = 2
    connect_timeout = "7s"
"#;

/// Flags for the settings of [`EVERY_KIND`] but `connect_timeout`.
const EVERY_KIND_FLAGS: [&str; 14] = [
    "--statement-timeout",
    "40s",
    "--pool-max-size",
    "8",
    "--run-scheduler",
    "true",
    "--replica-url",
    "postgres://flag-a/app",
    "--replica-url=postgres://flag-b/app",
    "--database-url",
    "sqlite://flag.db",
    "--backup-keep-weekly",
    "3",
    "--always-sha256=true",
];

#[test]
fn every_kind_of_setting_layers_default_file_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, EVERY_KIND);
    let c = Config::load(&args(&["--config", &path])).unwrap();
    assert_eq!(c.statement_timeout, Duration::from_secs(10));
    assert_eq!(c.pool_max_size, 4);
    assert!(!c.run_scheduler);
    assert_eq!(c.replica_urls, ["postgres://file-replica/app"]);
    assert_eq!(c.database_url, "postgres://file/app");
    assert_eq!(c.backup_retention, BackupRetention { daily: 7, weekly: 2, monthly: 12 });
    // Not in the file: the defaults.
    assert_eq!((c.max_replica_lag, c.s3_concurrency, c.always_sha256), (Duration::from_secs(10), 4, false));
    assert_eq!(c.object_store_url, "file://./strata-data/objects");
    assert!(c.alert_email_to.is_empty() && c.alert_webhook_url.is_none());

    let argv: Vec<&str> = ["--config", path.as_str()].into_iter().chain(EVERY_KIND_FLAGS).collect();
    let c = Config::load(&args(&argv)).unwrap();
    assert_eq!(c.statement_timeout, Duration::from_secs(40));
    assert_eq!(c.pool_max_size, 8);
    assert!(c.run_scheduler);
    assert_eq!(c.replica_urls, ["postgres://flag-a/app", "postgres://flag-b/app"]);
    assert_eq!(c.database_url, "sqlite://flag.db");
    assert_eq!(c.backup_retention, BackupRetention { daily: 7, weekly: 3, monthly: 12 });
    assert!(c.always_sha256);
    assert_eq!(c.connect_timeout, Duration::from_secs(7));
}

/// Environment variables sit between the file and the flags. clap reads them from the process,
/// whose environment a test cannot change while others run, so the checks run in a child: this
/// test binary again, for `env_layer_in_child` only, started with the variables set.
#[test]
fn environment_sits_between_file_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, EVERY_KIND);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args(["config::tests::env_layer_in_child", "--exact", "--ignored"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STRATA_") {
            child.env_remove(name);
        }
    }
    let tokens = format!("a:viewer:{HASH},b:operator:{HASH}");
    child.env("CONFIG_TEST_CHILD", "1").envs([
        ("STRATA_CONFIG", path.as_str()),
        ("STRATA_STATEMENT_TIMEOUT", "20s"),
        ("STRATA_POOL_MAX_SIZE", "6"),
        ("STRATA_RUN_SCHEDULER", "true"),
        ("STRATA_REPLICA_URLS", "postgres://env-a/app,postgres://env-b/app"),
        ("STRATA_DATABASE_URL", "postgres://env/app"),
        ("STRATA_BACKUP_KEEP_WEEKLY", "5"),
        ("STRATA_ALWAYS_SHA256", "false"),
        ("STRATA_AUTH_TOKENS", tokens.as_str()),
    ]);
    let out = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "run by environment_sits_between_file_and_flags, which sets its environment"]
fn env_layer_in_child() {
    if std::env::var_os("CONFIG_TEST_CHILD").is_none() {
        return;
    }
    // The file comes from STRATA_CONFIG; every variable wins over it.
    let c = Config::load(&args_from(&[], true)).unwrap();
    assert_eq!(c.statement_timeout, Duration::from_secs(20));
    assert_eq!(c.pool_max_size, 6);
    assert!(c.run_scheduler);
    assert_eq!(c.replica_urls, ["postgres://env-a/app", "postgres://env-b/app"]);
    assert_eq!(c.database_url, "postgres://env/app");
    assert_eq!(c.backup_retention.weekly, 5);
    assert_eq!(
        c.tokens.iter().map(|t| (t.name.as_str(), t.role)).collect::<Vec<_>>(),
        [("a", Role::Viewer), ("b", Role::Operator)]
    );
    // No variable: the file's value.
    assert_eq!(c.connect_timeout, Duration::from_secs(7));

    // Every flag wins over its variable.
    let c = Config::load(&args_from(&EVERY_KIND_FLAGS, true)).unwrap();
    assert_eq!(c.statement_timeout, Duration::from_secs(40));
    assert_eq!(c.pool_max_size, 8);
    assert!(c.run_scheduler);
    assert_eq!(c.replica_urls, ["postgres://flag-a/app", "postgres://flag-b/app"]);
    assert_eq!(c.database_url, "sqlite://flag.db");
    assert_eq!(c.backup_retention.weekly, 3);
    assert!(c.always_sha256);
    assert_eq!(c.tokens.len(), 2);
}

/// The defaults as they were written out before each setting had one declaration.
#[test]
fn defaults_are_unchanged() {
    let c = Config::default();
    assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 50051)));
    assert_eq!(c.database_url, "sqlite://./strata-data/strata.db");
    assert!(c.replica_urls.is_empty());
    assert_eq!(c.object_store_url, "file://./strata-data/objects");
    assert_eq!(c.pool_max_size, 16);
    let secs = Duration::from_secs;
    assert_eq!(
        [
            c.pool_acquire_timeout,
            c.statement_timeout,
            c.connect_timeout,
            c.max_replica_lag,
            c.health_check_interval,
            c.shutdown_grace,
            c.scheduler_poll_interval,
            c.scheduler_catch_up,
            c.startup_timeout,
            c.upload_expiry,
            c.run_lease,
        ],
        [
            secs(5),
            secs(30),
            secs(3),
            secs(10),
            Duration::from_millis(500),
            secs(10),
            secs(1),
            secs(600),
            secs(60),
            secs(24 * 3600),
            secs(30)
        ]
    );
    assert!(c.run_scheduler && !c.always_sha256);
    assert_eq!((c.job_history, c.alert_history, c.alert_notify_attempts), (100, 1000, 8));
    assert_eq!((&c.alert_webhook_url, &c.alert_webhook_secret, &c.alert_smtp_url), (&None, &None, &None));
    assert_eq!(c.alert_email_from, "strata@localhost");
    assert!(c.alert_email_to.is_empty() && c.tokens.is_empty() && c.allowed_content_types.is_empty());
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!((c.s3_part_size, c.s3_concurrency, c.max_file_size), (8 << 20, 4, 10 << 30));
    assert_eq!(c.s3_storage_class, None);
    assert_eq!(c.backup_retention, BackupRetention { daily: 7, weekly: 4, monthly: 12 });
    assert_eq!(c.pg_bin_dir, None);
    assert_eq!(c.admin_listen, ListenAddr(Some(SocketAddr::from(([127, 0, 0, 1], 9464)))));
    assert_eq!(c.shutdown_delay, secs(5));
}

/// `off` or an empty value turns the admin listener off, in every layer.
#[test]
fn admin_listener_can_be_turned_off() {
    for off in ["off", ""] {
        assert_eq!(Config::load(&args(&["--admin-listen", off])).unwrap().admin_listen, ListenAddr(None));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "admin_listen = \"off\"\nshutdown_delay = \"0\"\n");
    let c = Config::load(&args(&["--config", &path])).unwrap();
    assert_eq!((c.admin_listen, c.shutdown_delay), (ListenAddr(None), Duration::ZERO));
    let c = Config::load(&args(&["--config", &path, "--admin-listen", "0.0.0.0:9000"])).unwrap();
    assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9000");
    let path = write(&dir, "admin_listen = \"localhost\"\n");
    let err = Config::load(&args(&["--config", &path])).unwrap_err().to_string();
    assert!(err.contains("expected IP:PORT or off"), "{err}");
}

#[test]
fn rejects_unknown_keys_and_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "listne = \"127.0.0.1:1\"\n");
    let err = Config::load(&args(&["--config", &path])).unwrap_err();
    assert!(err.to_string().contains("listne"), "{err}");
    assert!("ops:root:abc".parse::<TokenSpec>().unwrap_err().contains("unknown role"));
    assert!("ops:viewer:abc".parse::<TokenSpec>().unwrap_err().contains("64 hex"));
    let ok: TokenSpec = "ops:viewer:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08".parse().unwrap();
    assert_eq!(ok.sha256, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
}

#[test]
fn example_file_parses_to_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../strata.example.toml");
    let c = Config::load(&args(&["--config", path.to_str().unwrap()])).unwrap();
    let d = Config::default();
    assert_eq!((c.listen, c.pool_max_size, c.statement_timeout), (d.listen, d.pool_max_size, d.statement_timeout));
    assert_eq!(c.scheduler_poll_interval, d.scheduler_poll_interval);
    // Every setting, not only those above.
    assert_eq!(format!("{c:?}"), format!("{d:?}"));
}

/// Every setting's key is read from the file by `Config` or `BackupRetention`: a value no
/// setting accepts is refused as a value, not ignored.
#[test]
fn every_setting_is_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    assert!(toml_keys().len() > 30 && toml_keys().contains(&"backup_keep_daily"), "{:?}", toml_keys());
    for key in toml_keys() {
        let path = write(&dir, &format!("{key} = {{ nonsense = 1 }}\n"));
        let err = Config::load(&args(&["--config", &path])).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("unknown field"), "{key}: {err}");
    }
}

#[test]
fn zero_pool_is_rejected() {
    let err = Config::load(&args(&["--pool-max-size", "0"])).unwrap_err();
    assert!(err.to_string().contains("pool_max_size"));
}

#[test]
fn trusted_proxy_networks() {
    let net: ProxyNet = "10.1.0.0/16".parse().unwrap();
    assert!(net.contains("10.1.2.3".parse().unwrap()));
    assert!(!net.contains("10.2.0.1".parse().unwrap()));
    assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()), "IPv4-mapped peers");
    let one: ProxyNet = "127.0.0.1".parse().unwrap();
    assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
    let v6: ProxyNet = "fd00::/8".parse().unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
    assert!("0.0.0.0/0".parse::<ProxyNet>().unwrap().contains("192.0.2.1".parse().unwrap()));
    for bad in ["10.0.0.0/33", "host", "10.0.0.0/x", "::/129"] {
        assert!(bad.parse::<ProxyNet>().is_err(), "{bad}");
    }
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let db = file("db", "postgres://strata:p+a@s:s%2Fw%25rd@db:5432/app\n");
    let replicas = file("replicas", "# replicas\npostgres://r:1@r1/app\n\n  postgres://r:2@r2/app  \n");
    let objects = file("objects", "s3://KEY:SE%2BCRET@bucket/prefix\n");
    let secret = file("secret", "webhook-secret\n");
    let smtp = file("smtp", "smtps://u:p@mail:465");
    let tokens = file("tokens", &format!("# ops\nops:operator:{HASH}\nci:viewer:{HASH}\n"));
    let c = Config::load(&args(&[
        "--database-url-file",
        &db,
        "--replica-urls-file",
        &replicas,
        "--object-store-url-file",
        &objects,
        "--alert-webhook-secret-file",
        &secret,
        "--alert-smtp-url-file",
        &smtp,
        "--tokens-file",
        &tokens,
        "--auth-token",
        &format!("cli:viewer:{HASH}"),
    ]))
    .unwrap();
    // As written, trailing newline removed: the URL's percent-encoding is decoded where it is used.
    assert_eq!(c.database_url, "postgres://strata:p+a@s:s%2Fw%25rd@db:5432/app");
    assert_eq!(c.replica_urls, ["postgres://r:1@r1/app", "postgres://r:2@r2/app"]);
    assert_eq!(c.object_store_url, "s3://KEY:SE%2BCRET@bucket/prefix");
    assert_eq!(c.alert_webhook_secret.as_deref(), Some("webhook-secret"));
    assert_eq!(c.alert_smtp_url.as_deref(), Some("smtps://u:p@mail:465"));
    assert_eq!(c.tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["cli", "ops", "ci"]);

    let bad = file("bad-tokens", &format!("ops:operator:{HASH}\nnot a token\n"));
    let err = Config::load(&args(&["--tokens-file", &bad])).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    let empty = file("empty", "\n");
    assert!(Config::load(&args(&["--database-url-file", &empty])).unwrap_err().to_string().contains("empty"));
    let missing = dir.path().join("missing").display().to_string();
    assert!(Config::load(&args(&["--database-url-file", &missing])).is_err());
}
