//! `strata upload`, `strata download`, `strata files …` and `strata blobs …`.

use std::{fmt, io::Write, path::Path};

use clap::Subcommand;
use indicatif::ProgressState;

use super::output::{bytes, print_json, table, when};
use crate::{Client, types::UploadOptions};

/// `strata files …`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List files, newest first.
    Ls {
        /// Only this owner's files.
        #[arg(long)]
        owner: Option<String>,
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i32,
    },
    /// Show one file.
    Stat {
        /// File id.
        id: String,
    },
    /// Delete a file (operator).
    Rm {
        /// File id.
        id: String,
    },
    /// Compare the object store with the catalog (operator).
    Reconcile {
        /// Delete orphan objects older than the grace period and mark lost content.
        #[arg(long)]
        repair: bool,
        /// Orphans younger than this many seconds are kept.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        /// Follow the operation until it ends and print what it found (exit code 1 unless it
        /// succeeded); without it, print the operation's id and return.
        #[arg(long)]
        wait: bool,
    },
}

/// `strata blobs …`.
#[derive(Debug, Subcommand)]
pub enum BlobsCommand {
    /// Start moving a blob column into files; prints the migration id (operator).
    Migrate {
        /// Table holding the blobs.
        #[arg(long)]
        table: String,
        /// Schema of the table (default: public on PostgreSQL, main on SQLite).
        #[arg(long, default_value = "")]
        schema: String,
        /// Column holding the blobs.
        #[arg(long)]
        column: String,
        /// Unique key column.
        #[arg(long, default_value = "id")]
        key: String,
        /// Column receiving the file id.
        #[arg(long)]
        ref_column: String,
        /// The blob column holds raw bytes (bytea) instead of base64 text.
        #[arg(long)]
        bytea: bool,
        /// Rows per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: i32,
        /// Only count rows and bytes.
        #[arg(long)]
        dry_run: bool,
        /// Owner recorded on the created files.
        #[arg(long, default_value = "")]
        owner: String,
    },
    /// Progress of a migration.
    Status {
        /// Migration id.
        id: String,
    },
}

/// `strata upload`, with a progress bar on a terminal.
pub(super) async fn upload(
    client: &Client,
    file: &Path,
    opts: &UploadOptions,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let bar = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        // Sizes through the CLI's one formatter rather than indicatif's own.
        let size = |n: u64| bytes(i64::try_from(n).unwrap_or(i64::MAX));
        let style = indicatif::ProgressStyle::with_template("{bar:40} {sent}/{size} {rate} {eta}")
            .expect("valid template")
            .with_key("sent", move |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&size(s.pos()));
            })
            .with_key("size", move |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&size(s.len().unwrap_or(0)));
            })
            .with_key("rate", move |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = write!(w, "{}/s", size(s.per_sec() as u64));
            });
        let b = indicatif::ProgressBar::new(0);
        b.set_style(style);
        b
    };
    let b = bar.clone();
    let f = client
        .upload_path(file, opts, move |sent, total| {
            b.set_length(total);
            b.set_position(sent);
        })
        .await?;
    bar.finish_and_clear();
    if json {
        print_json(out, &f)?
    } else {
        print_file(out, &f)?
    }
    Ok(true)
}

/// `strata download`.
pub(super) async fn download(
    client: &Client,
    id: &str,
    output: &Path,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let f = client.download_to(id, output).await?;
    if json {
        print_json(out, &f)?;
    } else {
        writeln!(out, "{} → {} ({})", f.id, output.display(), bytes(f.size_bytes as i64))?;
    }
    Ok(true)
}

/// Runs one `strata files …` command.
pub(super) async fn run_files(
    client: &Client,
    cmd: FilesCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match cmd {
        FilesCommand::Ls { owner, prefix, limit } => {
            let page = client
                .list_files(&crate::types::FileQuery {
                    page_size: limit,
                    owner,
                    name_prefix: prefix,
                    ..Default::default()
                })
                .await?;
            if json {
                print_json(out, &page)?;
            } else {
                let mut t = table(&["id", "name", "size", "type", "owner", "created"]);
                for f in &page.files {
                    t.add_row(vec![
                        f.id.clone(),
                        f.name.clone(),
                        bytes(f.size_bytes as i64),
                        f.content_type.clone(),
                        f.owner.clone(),
                        when(f.created_at),
                    ]);
                }
                writeln!(out, "{t}")?;
            }
        }
        FilesCommand::Stat { id } => {
            let f = client.stat_file(&id).await?;
            if json { print_json(out, &f)? } else { print_file(out, &f)? }
        }
        FilesCommand::Reconcile { repair, grace_secs, wait } => {
            let op = client.start_reconcile(repair, std::time::Duration::from_secs(grace_secs)).await?;
            if !wait {
                return super::ops::started(out, &op, json);
            }
            let op = super::ops::follow(client, op, json, out).await?;
            // Page by page: a big store's findings are never held at once.
            let mut token = String::new();
            loop {
                let page = client.operation_items(&op.id, &token, 1000).await?;
                if json {
                    for i in &page.items {
                        writeln!(out, "{}", serde_json::to_string(i)?)?;
                    }
                } else {
                    super::ops::print_items(out, &page.items)?;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            return Ok(op.state == crate::operations::OperationState::Succeeded);
        }
        FilesCommand::Rm { id } => {
            let gone = client.delete_file(&id).await?;
            if json {
                print_json(out, &serde_json::json!({ "id": id, "content_deleted": gone }))?;
            } else {
                writeln!(out, "deleted {id}{}", if gone { " (content removed)" } else { " (content still shared)" })?;
            }
        }
    }
    Ok(true)
}

/// Runs one `strata blobs …` command.
pub(super) async fn run_blobs(
    client: &Client,
    cmd: BlobsCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    match cmd {
        BlobsCommand::Migrate { table, schema, column, key, ref_column, bytea, batch_size, dry_run, owner } => {
            let spec = crate::types::BlobMigrationSpec {
                schema_name: schema,
                table_name: table,
                key_column: key,
                blob_column: column,
                reference_column: ref_column,
                base64: !bytea,
                batch_size,
                dry_run,
                owner,
            };
            let r = client.start_blob_migration(&spec).await?;
            if json {
                print_json(out, &r)?;
            } else {
                writeln!(out, "{} row(s) hold {} of blobs", r.pending_rows, bytes(r.pending_bytes))?;
                if let Some(m) = r.migration {
                    writeln!(out, "migration {} started; follow it with `strata blobs status {}`", m.id, m.id)?;
                }
            }
        }
        BlobsCommand::Status { id } => {
            let m = client.blob_migration(&id).await?;
            if json {
                print_json(out, &m)?;
            } else {
                writeln!(
                    out,
                    "{} {}: {} row(s), {} moved{}",
                    m.id,
                    m.state,
                    m.rows_done,
                    bytes(m.bytes_done),
                    m.error.map(|e| format!(" — {e}")).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(true)
}

/// One file on one line: id, name, size, type and hashes.
fn print_file(out: &mut dyn Write, f: &crate::types::File) -> anyhow::Result<()> {
    writeln!(
        out,
        "{}  {}  {}  {}  blake3 {}{}",
        f.id,
        f.name,
        bytes(f.size_bytes as i64),
        f.content_type,
        f.blake3,
        f.sha256.as_ref().map(|s| format!("  sha256 {s}")).unwrap_or_default()
    )?;
    Ok(())
}
