//! Pure planning: parsing cron expressions in a time zone, the next occurrence, and what a claim
//! of a due occurrence runs or records as missed. No I/O.

use std::{str::FromStr, time::Duration};

use chrono::{NaiveDateTime, Utc};
use chrono_tz::Tz;
use croner::{
    Cron,
    parser::{CronParser, Seconds},
};

use super::{Error, Result};

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

/// Parses a cron expression and a time zone; INVALID_ARGUMENT with the parser's reason.
pub fn parse_schedule(expr: &str, tz: &str) -> Result<(Cron, Tz)> {
    let cron = parser()
        .parse(expr.trim())
        .map_err(|e| Error::InvalidArgument(format!("schedule {expr:?} is not a cron expression: {e}")))?;
    let tz = Tz::from_str(if tz.is_empty() { "UTC" } else { tz })
        .map_err(|_| Error::InvalidArgument(format!("time_zone {tz:?} is not an IANA time zone name")))?;
    Ok((cron, tz))
}

/// The first occurrence strictly after `after` (UTC), or None when there is none.
pub fn next_after(cron: &Cron, tz: Tz, after: NaiveDateTime) -> Option<NaiveDateTime> {
    let local = after.and_utc().with_timezone(&tz);
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc).naive_utc())
}

/// What to do with a due occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    /// The occurrence to run now, if any.
    pub run: Option<NaiveDateTime>,
    /// Occurrences too old to run: (first, last, count).
    pub missed: Option<(NaiveDateTime, NaiveDateTime, u64)>,
    /// The job's next occurrence after this claim.
    pub next: Option<NaiveDateTime>,
}

/// Occurrences counted at most when reporting a gap (a seconds-cron over a long outage).
const MAX_COUNTED: u64 = 1_000_000;

/// Plans the claim of occurrence `due` at `now`: run it if it is at most `catch_up` old; else
/// record every occurrence older than that as missed and run the first recent one, if it is due.
pub fn plan_claim(cron: &Cron, tz: Tz, due: NaiveDateTime, now: NaiveDateTime, catch_up: Duration) -> ClaimPlan {
    let window = now - chrono::Duration::from_std(catch_up).unwrap_or(chrono::Duration::days(1));
    if due >= window {
        return ClaimPlan { run: Some(due), missed: None, next: next_after(cron, tz, due) };
    }
    let (mut last, mut count) = (due, 1u64);
    let mut next = next_after(cron, tz, due);
    while let Some(n) = next
        && n < window
    {
        last = n;
        count += 1;
        if count >= MAX_COUNTED {
            // Skip ahead without counting every one.
            next = next_after(cron, tz, window - chrono::Duration::microseconds(1));
            break;
        }
        next = next_after(cron, tz, n);
    }
    match next {
        Some(n) if n <= now => {
            ClaimPlan { run: Some(n), missed: Some((due, last, count)), next: next_after(cron, tz, n) }
        }
        other => ClaimPlan { run: None, missed: Some((due, last, count)), next: other },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn schedules_parse_with_and_without_seconds_and_reject_garbage() {
        assert!(parse_schedule("*/5 * * * *", "UTC").is_ok());
        assert!(parse_schedule("*/2 * * * * *", "").is_ok());
        assert!(parse_schedule("@daily", "Europe/Paris").is_ok());
        assert!(matches!(parse_schedule("61 * * * *", "UTC"), Err(Error::InvalidArgument(_))));
        assert!(matches!(parse_schedule("every day", "UTC"), Err(Error::InvalidArgument(_))));
        assert!(matches!(parse_schedule("* * * * *", "Mars/Olympus"), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn occurrences_follow_the_time_zone_across_dst() {
        // 02:00 daily in Paris: 01:00 UTC in winter, 00:00 UTC in summer (DST began 2026-03-29).
        let (c, tz) = parse_schedule("0 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(next_after(&c, tz, at("2026-03-27 12:00:00")), Some(at("2026-03-28 01:00:00")));
        assert_eq!(next_after(&c, tz, at("2026-03-29 12:00:00")), Some(at("2026-03-30 00:00:00")));
        let (c, tz) = parse_schedule("*/5 * * * *", "UTC").unwrap();
        assert_eq!(next_after(&c, tz, at("2026-01-01 00:00:00")), Some(at("2026-01-01 00:05:00")));
    }

    #[test]
    fn a_recent_occurrence_runs_and_old_ones_are_missed_once() {
        let (c, tz) = parse_schedule("* * * * *", "UTC").unwrap();
        let catch_up = Duration::from_secs(600);
        // 3 minutes late: run it; the next is one minute later.
        let p = plan_claim(&c, tz, at("2026-01-01 00:00:00"), at("2026-01-01 00:03:30"), catch_up);
        assert_eq!(
            p,
            ClaimPlan { run: Some(at("2026-01-01 00:00:00")), missed: None, next: Some(at("2026-01-01 00:01:00")) }
        );
        // An hour down: the 50 occurrences older than 10 minutes are missed, the first recent one runs.
        let p = plan_claim(&c, tz, at("2026-01-01 00:00:00"), at("2026-01-01 01:00:30"), catch_up);
        assert_eq!(p.missed, Some((at("2026-01-01 00:00:00"), at("2026-01-01 00:50:00"), 51)));
        assert_eq!(p.run, Some(at("2026-01-01 00:51:00")));
        assert_eq!(p.next, Some(at("2026-01-01 00:52:00")));
        // A daily job two days late: both missed, nothing recent to run.
        let (c, tz) = parse_schedule("0 2 * * *", "UTC").unwrap();
        let p = plan_claim(&c, tz, at("2026-01-01 02:00:00"), at("2026-01-03 05:00:00"), catch_up);
        assert_eq!(p.missed, Some((at("2026-01-01 02:00:00"), at("2026-01-03 02:00:00"), 3)));
        assert_eq!(p.run, None);
        assert_eq!(p.next, Some(at("2026-01-04 02:00:00")));
    }
}
