//! Restore benchmark on 1M chat-like rows with a jsonb column (≈ 500 B of English-like text, spread
//! over 24 months, half of them due): strata archives the due half, a tenth of the archived rows is
//! put back into the table, then strata's RestoreArchive of every segment is timed against `COPY …
//! FROM` of the same rows that are not in the table (CSV, through psql) into an identical copy of
//! the table in the same state.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use strata_client::archive::{ArchivePolicy, RunState, SegmentSelection};
use strata_tests::{PgCluster, S3Server, TestServer, server::test_config};

use crate::prose::Prose;

/// Writes `rows` chat rows (`id`, `room`, `author`, `sent_at`, `body`, `meta`) in COPY text format,
/// the same for the same `anchor`: spread over 24 months before it (63 s apart per 1M rows), oldest
/// first; bodies of about 450 B drawn word by word from a skewed vocabulary; a small jsonb document
/// per row (nested, with numbers, booleans and a non-ASCII key).
fn generate(rows: u64, anchor: chrono::DateTime<chrono::Utc>, out: &mut impl std::io::Write) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut text = Prose::new();
    let mut line = String::with_capacity(1024);
    for id in 1..=rows {
        line.clear();
        let sent_at = anchor - chrono::Duration::microseconds((63e12 * (rows - id) as f64 / rows as f64) as i64);
        let _ = write!(
            line,
            "{id}\t{}\tuser{}\t{}\t",
            id % 500,
            (id * 7919) % 10_000,
            sent_at.format("%Y-%m-%d %H:%M:%S%.6f+00")
        );
        let words = text.body(&mut line);
        let mut next = || text.next();
        let _ = writeln!(
            line,
            "\t{{\"lang\": \"en\", \"len\": {}, \"edited\": {}, \"score\": {}.{:03}, \"tags\": [\"t{}\", \"t{}\"], \"réactions\": {{\"up\": {}}}}}",
            words,
            next() % 7 == 0,
            next() % 100,
            next() % 1000,
            next() % 20,
            next() % 20,
            next() % 50
        );
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// Writes psql's standard input.
type Input<'a> = &'a dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>;

/// Runs `psql` on `url` with `args`, feeding it `input` when given.
fn psql(url: &str, args: &[&str], input: Option<Input<'_>>) -> anyhow::Result<()> {
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url])
        .args(args)
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .spawn()
        .context("psql")?;
    if let Some(write) = input {
        let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().context("stdin")?);
        write(&mut stdin)?;
        std::io::Write::flush(&mut stdin)?;
    }
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "psql {args:?} failed: {status}");
    Ok(())
}

async fn count(c: &mut AsyncPgConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(strata_tests::pg::count(c, sql).await)
}

/// The chat table `name`, loaded with the generated rows (identical for the same `anchor`).
async fn load(
    c: &mut AsyncPgConnection,
    url: &str,
    name: &str,
    rows: u64,
    anchor: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, room int NOT NULL, author text NOT NULL,
                              sent_at timestamptz NOT NULL, body text NOT NULL, meta jsonb);
         CREATE INDEX {name}_sent_at ON {name} (sent_at);"
    ))
    .await?;
    let (url, copy) = (url.to_owned(), format!("COPY {name} FROM STDIN"));
    tokio::task::spawn_blocking(move || psql(&url, &["-c", &copy], Some(&|mut w| generate(rows, anchor, &mut w))))
        .await??;
    c.batch_execute(&format!("VACUUM ANALYZE {name}")).await?;
    Ok(())
}

/// One round's tables: `chat_N` (strata's) and `base_N` (the COPY's), the same rows in the same
/// state; the CSV of the archived rows not in the table.
struct Round {
    table: String,
    base: String,
    csv: std::path::PathBuf,
    /// Rows archived.
    archived: i64,
    /// Of those, put back before the restore.
    present: i64,
}

/// Prepares round `n` (untimed): two tables of the same rows; strata archives the due half of one,
/// a tenth of the archived rows goes back into it, the other is brought to the same rows, and the
/// rows to load are written as CSV.
#[expect(clippy::too_many_arguments, reason = "a benchmark's settings")]
async fn prepare(
    c: &mut AsyncPgConnection,
    client: &strata_client::Client,
    url: &str,
    dir: &std::path::Path,
    n: usize,
    rows: u64,
    anchor: chrono::DateTime<chrono::Utc>,
    batch_size: i32,
) -> anyhow::Result<Round> {
    let (table, base, ids) = (format!("chat_{n}"), format!("base_{n}"), format!("archived_{n}"));
    load(c, url, &table, rows, anchor).await?;
    load(c, url, &base, rows, anchor).await?;
    client
        .create_policy(&ArchivePolicy {
            name: table.clone(),
            table_name: table.clone(),
            time_column: "sent_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(365 * 86_400),
            batch_size,
            ..Default::default()
        })
        .await?;
    let r = client.run_archive(&table).await?;
    let r = client.wait_archive_run(&r.id, Duration::from_millis(50)).await?;
    anyhow::ensure!(r.state == RunState::Succeeded, "archive run ended {:?}: {}", r.state, r.error);
    c.batch_execute(&format!(
        "CREATE TABLE {ids} AS SELECT b.id FROM {base} b WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = b.id);"
    ))
    .await?;
    let archived = count(c, &format!("SELECT count(*)::int8 AS n FROM {ids}")).await?;
    anyhow::ensure!(archived == r.rows_done, "{archived} rows gone, {} archived", r.rows_done);
    let present = count(c, &format!("SELECT count(*)::int8 AS n FROM {ids} WHERE id % 10 = 3")).await?;
    let csv = dir.join(format!("{ids}.csv"));
    let out = format!(
        "\\copy (SELECT b.* FROM {base} b JOIN {ids} a ON a.id = b.id WHERE a.id % 10 <> 3 ORDER BY b.id) TO '{}' WITH (FORMAT csv)",
        csv.display()
    );
    let url2 = url.to_owned();
    tokio::task::spawn_blocking(move || psql(&url2, &["-c", &out], None)).await??;
    c.batch_execute(&format!(
        "INSERT INTO {table} SELECT b.* FROM {base} b JOIN {ids} a ON a.id = b.id WHERE a.id % 10 = 3 ORDER BY b.id;
         DELETE FROM {base} b USING {ids} a WHERE a.id = b.id AND a.id % 10 <> 3;
         DROP TABLE {ids};"
    ))
    .await?;
    c.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    c.batch_execute(&format!("VACUUM ANALYZE {base}")).await?;
    c.batch_execute("CHECKPOINT").await?;
    Ok(Round { table, base, csv, archived, present })
}

/// strata's restore of every segment of `table`'s policy: (seconds, rows inserted, rows skipped).
async fn strata_restore(client: &strata_client::Client, table: &str) -> anyhow::Result<(f64, i64, i64)> {
    let t = Instant::now();
    let r = client.restore_archive(table, &SegmentSelection::default()).await?;
    let r = client.wait_archive_run(&r.id, Duration::from_millis(20)).await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(r.state == RunState::Succeeded, "restore ended {:?}: {}", r.state, r.error);
    Ok((secs, r.rows_done, r.rows_skipped))
}

/// The baseline: `\copy base FROM 'csv' (FORMAT csv)` through psql: seconds.
async fn copy_from(url: &str, base: &str, csv: &std::path::Path) -> anyhow::Result<f64> {
    let cmd = format!("\\copy {base} FROM '{}' WITH (FORMAT csv)", csv.display());
    let url = url.to_owned();
    let t = Instant::now();
    tokio::task::spawn_blocking(move || psql(&url, &["-c", &cmd], None)).await??;
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the restore benchmark: `rounds` rounds on fresh copies, strata and the baseline in
/// alternating order; the median ratio is judged.
pub(crate) async fn run(rows: u64, batch_size: i32, rounds: usize) -> anyhow::Result<()> {
    println!("starting PostgreSQL …");
    let cluster = tokio::task::spawn_blocking(PgCluster::start).await??;
    let db = cluster.create_database("bench_restore").await?;
    // On two cores the replica's WAL replay would compete with whatever is measured.
    cluster.stop_replica()?;
    let mut c = cluster.connect(&db).await?;
    let url = cluster.primary_url(&db);
    // Each round loads two tables of 1M rows: with the default max_wal_size the WAL kept between
    // checkpoints takes more disk than the tables.
    c.batch_execute("ALTER SYSTEM SET max_wal_size = '256MB'").await?;
    c.batch_execute("ALTER SYSTEM SET min_wal_size = '64MB'").await?;
    c.batch_execute("SELECT pg_reload_conf()").await?;
    // The stopped replica's slot would keep every WAL segment written from now on (GBs per round).
    c.batch_execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active").await?;
    let anchor = chrono::Utc::now();
    let dir = tempfile::tempdir()?;
    let s3 = S3Server::start("bench-restore")?;
    let mut config = test_config(url.clone(), vec![], dir.path());
    config.object_store_url = s3.url();
    config.statement_timeout = Duration::from_secs(300);
    let server = TestServer::start(config).await?;
    let client = server.client().await;

    let mut ratios = Vec::new();
    for n in 0..rounds {
        let t = Instant::now();
        let round = prepare(&mut c, &client, &url, dir.path(), n, rows, anchor, batch_size).await?;
        println!("round {}: prepared in {:.1}s", n + 1, t.elapsed().as_secs_f64());
        let (mut strata, mut copy) = (None, None);
        for step in 0..2 {
            if (n + step) % 2 == 0 {
                strata = Some(strata_restore(&client, &round.table).await?);
            } else {
                copy = Some(copy_from(&url, &round.base, &round.csv).await?);
            }
        }
        let ((secs, inserted, skipped), copy_secs) = (strata.expect("ran"), copy.expect("ran"));
        anyhow::ensure!(
            (inserted, skipped) == (round.archived - round.present, round.present),
            "strata inserted {inserted} and skipped {skipped} of {} archived rows, {} of them present",
            round.archived,
            round.present
        );
        // Both tables now hold every generated row, as it was.
        let (t, b) = (&round.table, &round.base);
        let differ = count(
            &mut c,
            &format!(
                "SELECT count(*)::int8 AS n FROM {t} a FULL JOIN {b} b ON b.id = a.id
                  WHERE a.id IS NULL OR b.id IS NULL OR row_to_json(a)::text <> row_to_json(b)::text"
            ),
        )
        .await?;
        anyhow::ensure!(differ == 0, "{differ} rows differ between the restored table and the baseline's");
        anyhow::ensure!(count(&mut c, &format!("SELECT count(*)::int8 AS n FROM {t}")).await? == rows as i64);
        let (strata_rate, copy_rate) = (inserted as f64 / secs, inserted as f64 / copy_secs);
        let ratio = strata_rate / copy_rate;
        println!(
            "round {}: {} archived rows, {} of them present · strata restore {secs:.2} s ({strata_rate:.0} rows/s inserted, {:.0} rows/s read) · baseline COPY FROM csv {copy_secs:.2} s ({copy_rate:.0} rows/s) → {ratio:.2}{}",
            n + 1,
            round.archived,
            round.present,
            round.archived as f64 / secs,
            if n % 2 == 0 { " (strata first)" } else { " (baseline first)" },
        );
        ratios.push(ratio);
        c.batch_execute(&format!("DROP TABLE {t}, {b}")).await?;
        std::fs::remove_file(&round.csv)?;
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "ratio strata restore / COPY FROM (baseline), rows/s: median {median:.2} over {rounds} rounds (target ≥ 0.70) {}",
        if median >= 0.7 { "PASS" } else { "FAIL" }
    );
    server.stop().await?;
    Ok(())
}
