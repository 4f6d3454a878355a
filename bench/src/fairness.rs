//! Fair sharing of the embedded database during archival: an application that inserts one row every
//! 5 ms into its own table of the SQLite file strata archives from (its own connection, busy timeout
//! 10 s) while a run archives 300k due rows of that table. The run's pause between batches switched
//! off (the run as it was, the baseline) vs the default, on identical fresh copies of the table,
//! several rounds in alternating order: the application's insert latencies during each run, and the
//! run's own rows/s.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use diesel::{Connection, RunQueryDsl, SqliteConnection, connection::SimpleConnection, sql_types::Text};
use strata_client::archive::{ArchivePolicy, RunState};
use strata_tests::{TestServer, server::test_config};

use crate::{ms, percentile, prose::Prose};

/// The application's pace: one insert every 5 ms.
const PACE: Duration = Duration::from_millis(5);

/// The application's busy timeout (SQLite's default busy handler: retries after 1, 2, 5, 10, 15,
/// 20, 25, 25, 25, 50, 50 and then every 100 ms).
const APP_BUSY_TIMEOUT_MS: u32 = 10_000;

/// Targets, on the default setting: the application's insert latency during a run, and the run's
/// rows/s against the same run with the pause off.
const P99_TARGET: Duration = Duration::from_millis(50);
const MAX_TARGET: Duration = Duration::from_millis(250);
const RATE_TARGET: f64 = 0.5;

/// The two treatments: today's unpaused run (the baseline) and the default setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Treatment {
    PauseOff,
    Default,
}

impl Treatment {
    fn name(self) -> &'static str {
        match self {
            Self::PauseOff => "pause off",
            Self::Default => "default",
        }
    }
}

/// Settings to try instead of the defaults (`--sleep-coef`, `--batch-target-ms`), to explore.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    pub(crate) sleep_coef: Option<f64>,
    pub(crate) batch_target_ms: Option<u64>,
}

/// One insert of the application: when it began and how long it took.
#[derive(Debug, Clone, Copy)]
struct Sample {
    start: Instant,
    took: Duration,
    ok: bool,
}

impl Sample {
    fn end(&self) -> Instant {
        self.start + self.took
    }
}

/// What one treatment measured.
struct Measured {
    run_secs: f64,
    rows: i64,
    segments: i64,
    longest_txn: Duration,
    /// Inserts that began during the run: their latencies.
    during: Vec<Duration>,
    /// Inserts that completed during the run.
    completed: usize,
    /// Inserts that failed (busy timeout).
    failed: usize,
    /// Latencies of the inserts before the run.
    before: Vec<Duration>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.run_secs
    }
}

/// Writes the application's table into a new SQLite file: `rows` chat rows spread over 24 months,
/// oldest first, so that half of them are older than a year.
fn make_template(path: &Path, rows: u64) -> anyhow::Result<()> {
    let mut c = SqliteConnection::establish(&path.display().to_string())?;
    c.batch_execute(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE chat (id INTEGER PRIMARY KEY, room INTEGER NOT NULL, author TEXT NOT NULL,
                            sent_at TEXT NOT NULL, body TEXT NOT NULL);",
    )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let span = 730 * 86_400i64;
    let mut text = Prose::new();
    let mut json = String::new();
    c.transaction(|c| {
        let mut id = 1u64;
        while id <= rows {
            json.clear();
            json.push('[');
            let last = (id + 9_999).min(rows);
            for i in id..=last {
                if i > id {
                    json.push(',');
                }
                let sent = now - span * (rows - i) as i64 / rows as i64;
                json.push_str(&format!("[{i},{},\"user{}\",{sent},\"", i % 500, i * 7919 % 10_000));
                text.body(&mut json);
                json.push_str("\"]");
            }
            json.push(']');
            diesel::sql_query(
                "INSERT INTO chat (id, room, author, sent_at, body)
                 SELECT value ->> 0, value ->> 1, value ->> 2, datetime(value ->> 3, 'unixepoch'), value ->> 4
                   FROM json_each(?1)",
            )
            .bind::<Text, _>(&json)
            .execute(c)?;
            id = last + 1;
        }
        Ok::<_, diesel::result::Error>(())
    })?;
    // Back to one file (the WAL checkpointed into it), so a copy is the whole database.
    c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// The application: one insert every [`PACE`] on its own connection until `stop`; every insert's
/// start and latency.
fn application(db: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<Sample>> {
    let mut c = SqliteConnection::establish(&db.display().to_string())?;
    c.batch_execute(&format!("PRAGMA busy_timeout = {APP_BUSY_TIMEOUT_MS};"))?;
    let mut samples = Vec::with_capacity(4096);
    let mut next = Instant::now();
    let mut text = Prose::new();
    let mut body = String::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        // The next insert is due PACE after this one began, or at once when this one took longer.
        next = Instant::now().max(next) + PACE;
        body.clear();
        text.body(&mut body);
        let start = Instant::now();
        let r =
            diesel::sql_query("INSERT INTO chat (room, author, sent_at, body) VALUES (7, 'app', datetime('now'), ?1)")
                .bind::<Text, _>(&body)
                .execute(&mut c);
        samples.push(Sample { start, took: start.elapsed(), ok: r.is_ok() });
    }
    Ok(samples)
}

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(db: &Path) -> anyhow::Result<i64> {
    let mut c = SqliteConnection::establish(&db.display().to_string())?;
    Ok(diesel::sql_query("SELECT count(*) AS n FROM chat").get_result::<N>(&mut c)?.n)
}

/// One run of `treatment` on a fresh copy of the template, the application inserting throughout.
async fn measure(
    template: &Path,
    dir: &Path,
    rows: u64,
    batch_size: i32,
    treatment: Treatment,
    tuning: Tuning,
) -> anyhow::Result<Measured> {
    std::fs::create_dir_all(dir)?;
    let db = dir.join("app.db");
    std::fs::copy(template, &db)?;
    let config = test_config(format!("sqlite://{}", db.display()), vec![], &dir.join("objects"));
    let mut config = config;
    match treatment {
        // The run as it was: batches of batch_size, back to back.
        Treatment::PauseOff => (config.sqlite_sleep_coef, config.sqlite_batch_target) = (0.0, Duration::ZERO),
        Treatment::Default => {
            if let Some(coef) = tuning.sleep_coef {
                config.sqlite_sleep_coef = coef;
            }
            if let Some(ms) = tuning.batch_target_ms {
                config.sqlite_batch_target = Duration::from_millis(ms);
            }
        }
    }
    let server = TestServer::start(config).await?;
    let client = server.client().await;
    client
        .create_policy(&ArchivePolicy {
            name: "chat".into(),
            table_name: "chat".into(),
            time_column: "sent_at".into(),
            key_columns: vec!["id".into()],
            archive_after: Duration::from_secs(365 * 86_400),
            batch_size,
            ..Default::default()
        })
        .await?;
    let due = client.plan_archive("chat").await?.rows;
    anyhow::ensure!((due - rows as i64 / 2).abs() <= 2, "{due} rows due of {rows}");

    let stop = Arc::new(AtomicBool::new(false));
    let app = std::thread::spawn({
        let (db, stop) = (db.clone(), stop.clone());
        move || application(db, stop)
    });
    // The application's inserts on their own first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    let r = client.run_archive("chat").await?;
    let r = client.wait_archive_run(&r.id, Duration::from_millis(5)).await?;
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let samples =
        tokio::task::spawn_blocking(move || app.join()).await?.map_err(|_| anyhow::anyhow!("app panicked"))??;
    anyhow::ensure!(r.state == RunState::Succeeded, "run ended {:?}: {}", r.state, r.error);

    // Nothing lost or doubled: the table holds what was not archived plus every application insert,
    // the segments every archived row once.
    let inserted = samples.iter().filter(|s| s.ok).count() as i64;
    let left = count(&db)?;
    anyhow::ensure!(
        left == rows as i64 - r.rows_done + inserted && r.rows_done == due,
        "{left} rows left, {} archived, {inserted} inserted, of {rows}",
        r.rows_done
    );
    let in_segments: i64 = client.list_segments("chat").await?.iter().map(|s| s.row_count).sum();
    anyhow::ensure!(in_segments == r.rows_done, "{in_segments} rows in segments, {} archived", r.rows_done);
    server.stop().await?;
    std::fs::remove_dir_all(dir)?;

    let window = |t: Instant| t >= began && t <= ended;
    Ok(Measured {
        run_secs: (ended - began).as_secs_f64(),
        rows: r.rows_done,
        segments: r.segments_done,
        longest_txn: r.longest_transaction,
        during: samples.iter().filter(|s| window(s.start)).map(|s| s.took).collect(),
        completed: samples.iter().filter(|s| s.ok && window(s.end())).count(),
        failed: samples.iter().filter(|s| !s.ok).count(),
        before: samples.iter().filter(|s| s.end() < began).map(|s| s.took).collect(),
    })
}

/// How many latencies fall in each of a few ranges.
fn histogram(latencies: &[Duration]) -> String {
    let bounds = [5, 25, 50, 100, 250];
    let mut counts = [0usize; 6];
    for l in latencies {
        counts[bounds.iter().take_while(|&&b| l.as_millis() >= b).count()] += 1;
    }
    let mut out = format!("< 5 ms: {}", counts[0]);
    for (i, b) in bounds.iter().enumerate() {
        let upto = bounds.get(i + 1).map_or(String::new(), |u| format!("–{u}"));
        out.push_str(&format!(", {b}{upto} ms: {}", counts[i + 1]));
    }
    out
}

fn print(round: usize, t: Treatment, m: &mut Measured) {
    let expected = m.run_secs / PACE.as_secs_f64();
    println!(
        "  round {round} {:<9}: run {:.2} s, {} rows ({:.0} rows/s, {} segments, longest transaction {:.3} s); \
         application during the run: {} began, {} completed (of ≈ {expected:.0} at its pace), {} failed, \
         latency p50 {:.2} ms p99 {:.1} ms max {:.1} ms, {} (before the run: p50 {:.2} ms max {:.1} ms)",
        t.name(),
        m.run_secs,
        m.rows,
        m.rate(),
        m.segments,
        m.longest_txn.as_secs_f64(),
        m.during.len(),
        m.completed,
        m.failed,
        ms(percentile(&mut m.during, 0.5)),
        ms(percentile(&mut m.during, 0.99)),
        ms(percentile(&mut m.during, 1.0)),
        histogram(&m.during),
        ms(percentile(&mut m.before, 0.5)),
        ms(percentile(&mut m.before, 1.0)),
    );
}

/// Runs `rounds` rounds, each measuring both treatments on fresh copies of the same table (the
/// order alternating from round to round), and judges the default setting against the targets.
pub(crate) async fn run(rows: u64, batch_size: i32, rounds: usize, tuning: Tuning) -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("strata-bench-").tempdir_in(".")?;
    let template = work.path().join("template.db");
    let t = Instant::now();
    let (path, n) = (template.clone(), rows);
    tokio::task::spawn_blocking(move || make_template(&path, n)).await?.context("template")?;
    println!(
        "{rows} chat rows ({:.0} MiB of SQLite) written in {:.1} s; the application inserts one row every {} ms",
        std::fs::metadata(&template)?.len() as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64(),
        PACE.as_millis()
    );
    let (mut p99s, mut maxes, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let order = if round % 2 == 1 {
            [Treatment::PauseOff, Treatment::Default]
        } else {
            [Treatment::Default, Treatment::PauseOff]
        };
        let (mut off, mut on) = (None, None);
        for t in order {
            let dir = work.path().join(format!("round-{round}-{}", t.name().replace(' ', "-")));
            let mut m = measure(&template, &dir, rows, batch_size, t, tuning).await?;
            print(round, t, &mut m);
            match t {
                Treatment::PauseOff => off = Some(m),
                Treatment::Default => on = Some(m),
            }
        }
        let (off, mut on) = (off.expect("measured"), on.expect("measured"));
        let ratio = on.rate() / off.rate();
        println!("  round {round}: rows/s default / pause off = {ratio:.2}");
        p99s.push(percentile(&mut on.during, 0.99));
        maxes.push(percentile(&mut on.during, 1.0));
        ratios.push(ratio);
    }
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let worst_p99 = *p99s.iter().max().expect("a round");
    let worst_max = *maxes.iter().max().expect("a round");
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!(
        "application insert p99 during a run, default: worst of {rounds} rounds {:.1} ms (target ≤ {} ms) {}",
        ms(worst_p99),
        P99_TARGET.as_millis(),
        pass(worst_p99 <= P99_TARGET)
    );
    println!(
        "application insert max during a run, default: worst of {rounds} rounds {:.1} ms (target ≤ {} ms) {}",
        ms(worst_max),
        MAX_TARGET.as_millis(),
        pass(worst_max <= MAX_TARGET)
    );
    println!(
        "run rows/s default / pause off: median {median:.2} over {rounds} rounds (target ≥ {RATE_TARGET:.2}) {}",
        pass(median >= RATE_TARGET)
    );
    Ok(())
}
