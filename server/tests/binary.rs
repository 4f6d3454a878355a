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
