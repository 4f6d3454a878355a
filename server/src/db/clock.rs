//! The database's clock, as this instance reads it.
//!
//! Several strata instances share one catalog; a lease, a due time or an expiry written by one is
//! compared by another. If each compared with its own wall clock, an instance whose clock runs
//! ahead would take over live runs and run the 02:00 job early. So every such decision uses the
//! database's time: each health probe of the primary (every `health_check_interval`, 500 ms by
//! default) reads `clock_timestamp()` and this process's monotonic clock at the same moment, and
//! [`Clock::now`] is that reading advanced by the monotonic time since. The process's wall clock is
//! never consulted, so stepping or faking it changes nothing; the error is the probe's half round
//! trip plus the monotonic clock's drift over one probe interval (microseconds on a LAN).
//!
//! On SQLite the "database" is a file this process opens, and SQLite's `'now'` is this process's
//! wall clock: every instance sharing the file runs on the same host, so they share that clock
//! too, and the clock reads it directly.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use chrono::{DateTime, NaiveDateTime, Utc};

/// The database's time: anchored on the primary's clock by each probe, advanced by the monotonic
/// clock in between (see the module documentation).
#[derive(Debug)]
pub(crate) struct Clock {
    /// Follow the process's wall clock (SQLite: the database's clock is this process's).
    local: bool,
    /// The database's time read at a monotonic instant; None until the first probe succeeds.
    anchor: Mutex<Option<(DateTime<Utc>, Instant)>>,
    /// The latest time handed out, in microseconds: a new anchor a little behind the previous
    /// extrapolation (a slower probe round trip) must not make time run backwards.
    last: AtomicI64,
}

impl Clock {
    /// A clock following the database server's (PostgreSQL).
    pub(crate) fn database() -> Self {
        Self { local: false, anchor: Mutex::new(None), last: AtomicI64::new(i64::MIN) }
    }

    /// A clock following this process's wall clock (SQLite).
    pub(crate) fn local() -> Self {
        Self { local: true, anchor: Mutex::new(None), last: AtomicI64::new(i64::MIN) }
    }

    /// Records that the database read `db_time` at `at` (the middle of the query's round trip).
    pub(crate) fn anchor(&self, db_time: DateTime<Utc>, at: Instant) {
        let mut a = self.anchor.lock().expect("clock lock");
        let first = a.is_none();
        *a = Some((db_time, at));
        drop(a);
        if first {
            // Times handed out before (the process's wall clock, nothing shared yet) must not
            // hold this clock ahead of the database's afterwards, as the never-backwards rule
            // would for as long as this host's clock is ahead.
            self.last.store(i64::MIN, Ordering::Relaxed);
            let ahead = Utc::now() - db_time;
            if ahead.num_milliseconds().abs() >= 1000 {
                tracing::warn!(
                    ahead_ms = ahead.num_milliseconds(),
                    "this host's clock differs from the database's; strata follows the database's"
                );
            }
        }
    }

    /// Whether the database's time is known (always on SQLite; on PostgreSQL after the first
    /// successful probe of the primary).
    pub(crate) fn synced(&self) -> bool {
        self.local || self.anchor.lock().expect("clock lock").is_some()
    }

    /// The database's time now, at microsecond precision (what PostgreSQL stores, so values read
    /// back compare equal), never earlier than a time this clock returned before.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let t = match *self.anchor.lock().expect("clock lock") {
            _ if self.local => Utc::now(),
            Some((db, at)) => db + at.elapsed(),
            // Only before the primary ever answered (`Db::wait_ready` waits for it before the server
            // starts): nothing is shared with other instances yet.
            None => Utc::now(),
        };
        let micros = t.timestamp_micros();
        let prev = self.last.fetch_max(micros, Ordering::Relaxed);
        DateTime::from_timestamp_micros(micros.max(prev)).unwrap_or(t)
    }

    /// [`Clock::now`] as the catalog's timestamp type.
    pub(crate) fn now_naive(&self) -> NaiveDateTime {
        self.now().naive_utc()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reading_before_the_first_anchor_does_not_hold_it_ahead() {
        let c = Clock::database();
        // Before the first probe: the process's clock, here far ahead of the database's.
        let early = c.now();
        let db = early - chrono::Duration::seconds(120);
        c.anchor(db, Instant::now());
        assert!((c.now() - db).num_milliseconds().abs() < 1000, "{} vs {db}", c.now());
    }

    #[test]
    fn follows_the_anchor_not_the_wall_clock() {
        let c = Clock::database();
        let db = Utc::now() + chrono::Duration::seconds(3600);
        c.anchor(db, Instant::now());
        let t = c.now();
        assert!((t - db).num_milliseconds().abs() < 1000, "{t} vs {db}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.now() - t >= chrono::Duration::milliseconds(20));
    }

    #[test]
    fn never_runs_backwards() {
        let c = Clock::database();
        let db = Utc::now();
        c.anchor(db, Instant::now());
        let t = c.now();
        // A later probe whose reading is a little behind the extrapolation.
        c.anchor(db - chrono::Duration::milliseconds(5), Instant::now());
        assert!(c.now() >= t);
    }

    #[test]
    fn has_microsecond_precision() {
        let c = Clock::local();
        assert_eq!(c.now().timestamp_subsec_nanos() % 1000, 0);
        assert!(c.synced());
        assert!(!Clock::database().synced());
    }
}
