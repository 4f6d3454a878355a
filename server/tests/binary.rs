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
