//! `strata tokens …` (admin).

use std::io::Write;

use clap::Subcommand;

use super::output::{print_json, table, when};
use crate::{Client, tokens::Role};

/// `strata tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print its secret (shown only now).
    Create {
        /// A name for people and the audit trail.
        name: String,
        /// The role it grants.
        #[arg(long, value_enum)]
        role: Role,
        /// Limit it to the files of this owner (repeat for more); its uploads are stamped with it.
        #[arg(long = "owner")]
        owners: Vec<String>,
        /// How long it works (e.g. `90d`, `12h`); default: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// List tokens, newest first.
    Ls {
        /// Also revoked and expired ones.
        #[arg(long)]
        all: bool,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One token.
    Show {
        /// Token id.
        id: String,
    },
    /// Revoke a token (every instance refuses it within seconds).
    Revoke {
        /// Token id.
        id: String,
    },
}

fn role(r: Option<Role>) -> String {
    r.map(|r| format!("{r:?}").to_lowercase()).unwrap_or_else(|| "unknown".into())
}

fn state(t: &crate::tokens::Token) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if t.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
        "expired"
    } else {
        "active"
    }
}

/// Runs one `strata tokens …` command.
pub(super) async fn run(client: &Client, cmd: TokensCommand, json: bool, out: &mut dyn Write) -> anyhow::Result<bool> {
    match cmd {
        TokensCommand::Create { name, role: r, owners, ttl } => {
            let (t, secret) = client.create_token(&name, r, &owners, ttl).await?;
            if json {
                print_json(out, &serde_json::json!({ "token": t, "secret": secret }))?;
            } else {
                writeln!(out, "token {} ({}, {}) created; its secret, shown only now:", t.id, t.name, role(t.role))?;
                writeln!(out, "{secret}")?;
            }
        }
        TokensCommand::Ls { all, limit } => {
            let list = client.list_tokens(all, limit).await?;
            if json {
                print_json(out, &list)?;
            } else {
                let mut tab = table(&["id", "name", "role", "owners", "state", "created by", "expires", "last used"]);
                for t in &list {
                    tab.add_row(vec![
                        t.id.clone(),
                        t.name.clone(),
                        role(t.role),
                        t.owners.join(","),
                        state(t).into(),
                        t.created_by.clone(),
                        when(t.expires_at),
                        when(t.last_used_at),
                    ]);
                }
                writeln!(out, "{tab}")?;
            }
        }
        TokensCommand::Show { id } => {
            let t = client.token(&id).await?;
            if json {
                print_json(out, &t)?;
            } else {
                show(&t, out)?;
            }
        }
        TokensCommand::Revoke { id } => {
            let t = client.revoke_token(&id).await?;
            if json {
                print_json(out, &t)?;
            } else {
                writeln!(out, "token {} ({}) revoked by {} at {}", t.id, t.name, t.revoked_by, when(t.revoked_at))?;
            }
        }
    }
    Ok(true)
}

fn show(t: &crate::tokens::Token, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "id:         {}", t.id)?;
    writeln!(out, "name:       {}", t.name)?;
    writeln!(out, "role:       {}", role(t.role))?;
    writeln!(out, "owners:     {}", if t.owners.is_empty() { "(any)".into() } else { t.owners.join(", ") })?;
    writeln!(out, "state:      {}", state(t))?;
    writeln!(out, "created:    {} by {}", when(t.created_at), t.created_by)?;
    writeln!(out, "expires:    {}", if t.expires_at.is_none() { "never".into() } else { when(t.expires_at) })?;
    writeln!(out, "last used:  {}", when(t.last_used_at))?;
    if t.revoked_at.is_some() {
        writeln!(out, "revoked:    {} by {}", when(t.revoked_at), t.revoked_by)?;
    }
    Ok(())
}

/// `strata audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recorded calls, newest first (admin).
    Ls {
        /// Only this caller (token name, certificate rule, `loopback`, `-`).
        #[arg(long)]
        caller: Option<String>,
        /// Only this method (full name, e.g. `/strata.v1.ArchiveService/RunArchive`).
        #[arg(long)]
        method: Option<String>,
        /// Only events of the last this long (e.g. `1h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// Runs one `strata audit …` command.
pub(super) async fn run_audit(
    client: &Client,
    cmd: AuditCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let AuditCommand::Ls { caller, method, since, limit } = cmd;
    let since = since.map(|d| chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    let q = crate::tokens::AuditQuery { caller, method, since, until: None };
    let events = client.audit_events(&q, limit).await?;
    if json {
        print_json(out, &events)?;
    } else {
        let mut tab = table(&["time", "caller", "auth", "client", "method", "resource", "code"]);
        for e in events {
            let client = if e.proxy_address.is_empty() {
                e.client_address
            } else {
                format!("{} via {}", e.client_address, e.proxy_address)
            };
            tab.add_row(vec![
                when(e.time),
                e.caller,
                e.auth_method,
                client,
                e.method.trim_start_matches("/strata.v1.").to_owned(),
                e.resource,
                e.code,
            ]);
        }
        writeln!(out, "{tab}")?;
    }
    Ok(true)
}
