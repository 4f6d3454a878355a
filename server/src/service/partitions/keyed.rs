//! EnsurePartitions and GetPartitionHealth for every kind of table: time ranges go to the parent
//! module; integer ranges (fixed width, made ahead of the largest key) and hash partitions (missing
//! remainders made, skew reported) are here.

use super::{Context, Error, Health, Interval, Kind, Partition, Result, Table, ddl_error};
use crate::{
    db::partitions::{self as store, Bound, DdlError, KeyedPartition, NewKeyed},
    model::partitions::IntKeyType,
};

/// Partitions one EnsurePartitions call creates at most on an integer-range or hash table: one
/// transaction holds the parent's lock while it creates them all.
const MAX_NEW: usize = 1000;

/// What EnsurePartitions was asked. Which fields apply depends on the table's kind, which
/// [`ensure_any`] checks once the table is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ensure {
    /// Period length (time ranges only).
    pub interval: Option<Interval>,
    /// Range width in keys, positive (integer ranges only).
    pub width: Option<i64>,
    /// Periods or ranges ahead (0–1000; for integer ranges 0 means the server's
    /// `partition_premake_ranges`).
    pub ahead: u32,
    /// Periods or ranges before the current one (0–1000).
    pub past: u32,
}

/// GetPartitionHealth of an integer-range table.
#[derive(Debug, Clone)]
pub struct RangeHealth {
    /// The table.
    pub table: Table,
    /// Ranges by lower bound, then the default partition.
    pub partitions: Vec<Partition>,
    /// Holes between consecutive ranges: (end of one, start of the next).
    pub gaps: Vec<(i64, i64)>,
    /// Exact rows in the default partition.
    pub default_rows: i64,
    /// The largest key (None: no rows).
    pub max_key: Option<i64>,
    /// Keys above the largest one that the ranges still cover (`i64::MAX` up to MAXVALUE).
    pub keys_ahead: i64,
}

/// GetPartitionHealth of a hash-partitioned table.
#[derive(Debug, Clone)]
pub struct HashHealth {
    /// The table.
    pub table: Table,
    /// Partitions by modulus and remainder.
    pub partitions: Vec<Partition>,
    /// The largest modulus in use (0: no partitions).
    pub modulus: i32,
    /// Remainders of `modulus` no partition covers (inserts hashing there fail).
    pub missing_remainders: Vec<i32>,
    /// Largest over mean of the planner's row estimates, each scaled by the partition's share of
    /// the hash space (1.0: even; 0.0: unknown, a partition was never analyzed).
    pub row_skew: f64,
    /// The same of total sizes.
    pub size_skew: f64,
}

/// GetPartitionHealth of a table of any kind.
#[derive(Debug, Clone)]
pub enum TableHealth {
    /// Time ranges.
    Time(Health),
    /// Integer ranges.
    IntegerRange(RangeHealth),
    /// Hash partitions.
    Hash(HashHealth),
}

impl TableHealth {
    /// Rows in the default partition (hash tables cannot have one).
    pub fn default_rows(&self) -> i64 {
        match self {
            TableHealth::Time(h) => h.default_rows,
            TableHealth::IntegerRange(h) => h.default_rows,
            TableHealth::Hash(_) => 0,
        }
    }
}

fn time_parent(t: &Table) -> super::Parent {
    t.time().expect("a time-range table")
}

/// Creates the missing partitions of `t` as `e` asks, once `e` is checked against the table's
/// kind. Returns the created partitions and how many periods, ranges or remainders were already
/// covered.
pub async fn ensure_any(ctx: &Context, t: &Table, e: Ensure) -> Result<(Vec<Partition>, u32)> {
    let name = format!("{}.{}", t.schema, t.table);
    match t.kind {
        Kind::TimeRange(_) => {
            if e.width.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "width is for integer-range tables; {name} is partitioned by time range: give an interval"
                )));
            }
            let interval = e.interval.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "interval is required (daily or monthly): {name} is partitioned by time range"
                ))
            })?;
            super::ensure(ctx, &time_parent(t), interval, e.ahead, e.past).await
        }
        Kind::IntegerRange(key_type) => {
            if e.interval.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "interval is for time-range tables; {name} is partitioned by integer range: give a width"
                )));
            }
            let width = e.width.ok_or_else(|| {
                Error::InvalidArgument(format!("width is required: {name} is partitioned by integer range"))
            })?;
            let ahead = if e.ahead > 0 { e.ahead } else { ctx.config.partition_premake_ranges };
            ensure_ranges(ctx, t, key_type, width, ahead, e.past).await
        }
        Kind::Hash => {
            if e.interval.is_some() || e.width.is_some() || e.ahead > 0 || e.past > 0 {
                return Err(Error::InvalidArgument(format!(
                    "{name} is partitioned by hash: interval, width, premake and premake_past do not apply \
                     (EnsurePartitions creates its missing remainders)"
                )));
            }
            ensure_hash(ctx, t).await
        }
    }
}

/// Partitions, gaps, coverage and skew of `t`, as its kind has them.
pub async fn health_any(ctx: &Context, t: Table) -> Result<TableHealth> {
    Ok(match t.kind {
        Kind::TimeRange(_) => TableHealth::Time(super::health(ctx, time_parent(&t)).await?),
        Kind::IntegerRange(_) => TableHealth::IntegerRange(range_health(ctx, t).await?),
        Kind::Hash => TableHealth::Hash(hash_health(ctx, t).await?),
    })
}

/// The partitions of an integer-range or hash table as read, and as reported (sorted).
async fn keyed(ctx: &Context, t: &Table) -> Result<(Vec<KeyedPartition>, Vec<Partition>)> {
    let mut parts = store::keyed_partitions(&mut ctx.db.write().await?, t).await?;
    parts.sort_by_key(|p| match p.bound {
        // MINVALUE first; the default partition last.
        Bound::Range { lower, .. } => (0, lower.map_or(i128::MIN, i128::from), 0),
        Bound::Hash { modulus, remainder } => (0, i128::from(modulus), remainder),
        Bound::Default => (1, 0, 0),
    });
    let shown = parts.iter().cloned().map(partition).collect();
    Ok((parts, shown))
}

fn partition(k: KeyedPartition) -> Partition {
    let (start_key, end_key, hash) = match k.bound {
        Bound::Range { lower, upper } => (lower, upper, None),
        Bound::Hash { modulus, remainder } => (None, None, Some((modulus, remainder))),
        Bound::Default => (None, None, None),
    };
    Partition {
        name: k.name,
        start: None,
        end: None,
        size: k.size,
        estimated_rows: k.estimated_rows,
        is_default: k.bound == Bound::Default,
        start_key,
        end_key,
        hash,
    }
}

/// Creates `new` (one transaction) and returns them as the catalog now shows them.
async fn create(ctx: &Context, t: &Table, new: Vec<NewKeyed>) -> Result<Vec<Partition>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = new.iter().map(|n| n.name.clone()).collect();
    store::create_keyed(&mut ctx.db.write().await?, t, &new).await.map_err(|e| match e {
        // RescueDefaultRows moves time periods only: say what to do instead.
        DdlError::DefaultPartitionRows(msg) => Error::FailedPrecondition(format!(
            "{}: rows for this range are in the default partition; rescue them first (move them out of the \
             default partition by hand: RescueDefaultRows handles time ranges only) ({msg})",
            names.join(", ")
        )),
        e => ddl_error(&names.join(", "), e),
    })?;
    let (_, now) = keyed(ctx, t).await?;
    Ok(now.into_iter().filter(|x| names.contains(&x.name)).collect())
}

/// `<table><suffix>` within PostgreSQL's 63 bytes: the table's part is shortened (PostgreSQL
/// would cut the suffix, which tells the partitions apart).
fn partition_name(table: &str, suffix: &str) -> String {
    let mut end = table.len().min(63 - suffix.len());
    while !table.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &table[..end])
}

async fn ensure_ranges(
    ctx: &Context,
    t: &Table,
    key_type: IntKeyType,
    width: i64,
    ahead: u32,
    past: u32,
) -> Result<(Vec<Partition>, u32)> {
    let (existing, _) = keyed(ctx, t).await?;
    let bounds: Vec<Bound> = existing.iter().map(|p| p.bound).collect();
    // Through the parent on the primary: the newest rows may not have reached a replica.
    let max = store::max_key(&mut ctx.db.write().await?, t).await?;
    let (new, skipped) = plan_ranges(&t.table, key_type, &bounds, base_key(max, &bounds), width, ahead, past)?;
    Ok((create(ctx, t, new).await?, skipped))
}

/// Where ranges are counted from: the largest key; in an empty table the lowest range's lower
/// bound (rows will start there), else 0.
fn base_key(max: Option<i64>, bounds: &[Bound]) -> i64 {
    max.or_else(|| {
        bounds
            .iter()
            .filter_map(|b| match b {
                Bound::Range { lower, .. } => *lower,
                _ => None,
            })
            .min()
    })
    .unwrap_or(0)
}

/// The ranges `[k × width, (k + 1) × width)` from `past` before the one holding `base` through
/// `ahead` beyond it, less those an existing range overlaps (counted as skipped).
fn plan_ranges(
    table: &str,
    key_type: IntKeyType,
    existing: &[Bound],
    base: i64,
    width: i64,
    ahead: u32,
    past: u32,
) -> Result<(Vec<NewKeyed>, u32)> {
    let (min, max) = key_type.limits();
    let w = i128::from(width);
    let k = i128::from(base).div_euclid(w);
    let mut new = Vec::new();
    let mut skipped = 0;
    for i in (k - i128::from(past))..=(k + i128::from(ahead)) {
        let (from, to) = (i * w, (i + 1) * w);
        let (Ok(from), Ok(to)) = (i64::try_from(from), i64::try_from(to)) else {
            return Err(out_of_type(from, to, key_type));
        };
        if from < min || to > max {
            return Err(out_of_type(from.into(), to.into(), key_type));
        }
        let overlaps = existing.iter().any(|b| match *b {
            Bound::Range { lower, upper } => lower.is_none_or(|l| l < to) && upper.is_none_or(|u| u > from),
            _ => false,
        });
        if overlaps {
            skipped += 1;
        } else {
            let suffix = if from < 0 { format!("_pm{}", from.unsigned_abs()) } else { format!("_p{from}") };
            new.push(NewKeyed {
                name: partition_name(table, &suffix),
                bound: Bound::Range { lower: Some(from), upper: Some(to) },
            });
        }
    }
    Ok((new, skipped))
}

fn out_of_type(from: i128, to: i128, key_type: IntKeyType) -> Error {
    let (min, max) = key_type.limits();
    Error::FailedPrecondition(format!(
        "the range [{from}, {to}) passes the limits of the key's type {key_type} ({min} to {max}); \
         nothing was created (create the last range up to MAXVALUE by hand)"
    ))
}

async fn ensure_hash(ctx: &Context, t: &Table) -> Result<(Vec<Partition>, u32)> {
    let (existing, _) = keyed(ctx, t).await?;
    let hashes = hash_bounds(&existing);
    let Some(modulus) = hashes.iter().map(|(m, _)| *m).max() else {
        return Err(Error::FailedPrecondition(format!(
            "{}.{} has no partitions yet: create the first with the modulus to use \
             (CREATE TABLE … PARTITION OF … FOR VALUES WITH (MODULUS m, REMAINDER 0))",
            t.schema, t.table
        )));
    };
    let missing = missing_remainders(&hashes, modulus);
    if missing.len() > MAX_NEW {
        return Err(Error::FailedPrecondition(format!(
            "{} remainders of modulus {modulus} are missing, more than the {MAX_NEW} one call creates",
            missing.len()
        )));
    }
    let skipped = u32::try_from(modulus).unwrap_or(0).saturating_sub(missing.len() as u32);
    // Every modulus in use divides the largest (PostgreSQL's rule), so partitions of the largest
    // may fill any hole.
    let new = missing
        .into_iter()
        .map(|r| NewKeyed {
            name: partition_name(&t.table, &format!("_h{r}")),
            bound: Bound::Hash { modulus, remainder: r },
        })
        .collect();
    Ok((create(ctx, t, new).await?, skipped))
}

fn hash_bounds(parts: &[KeyedPartition]) -> Vec<(i32, i32)> {
    parts
        .iter()
        .filter_map(|p| match p.bound {
            Bound::Hash { modulus, remainder } => Some((modulus, remainder)),
            _ => None,
        })
        .collect()
}

/// Remainders of `modulus` that no partition `(m, r)` covers: a row hashing to `x` modulo
/// `modulus` goes to the partition with `x mod m = r`.
fn missing_remainders(hashes: &[(i32, i32)], modulus: i32) -> Vec<i32> {
    (0..modulus).filter(|x| !hashes.iter().any(|(m, r)| *m > 0 && x % m == *r)).collect()
}

/// Largest over mean of `(modulus, value)`, each value scaled by its modulus (a partition of
/// modulus 2 should hold twice what one of modulus 4 holds): 1.0 is even; 0.0 with no values.
fn skew(values: &[(i32, f64)]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let loads: Vec<f64> = values.iter().map(|(m, v)| v * f64::from(*m)).collect();
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    if mean <= 0.0 {
        return 1.0;
    }
    loads.iter().copied().fold(0.0, f64::max) / mean
}

async fn range_health(ctx: &Context, t: Table) -> Result<RangeHealth> {
    let (parts, partitions) = keyed(ctx, &t).await?;
    let ranges: Vec<(Option<i64>, Option<i64>)> = parts
        .iter()
        .filter_map(|p| match p.bound {
            Bound::Range { lower, upper } => Some((lower, upper)),
            _ => None,
        })
        .collect();
    let gaps = ranges
        .windows(2)
        .filter_map(|w| match (w[0].1, w[1].0) {
            (Some(e), Some(s)) if e < s => Some((e, s)),
            _ => None,
        })
        .collect();
    let default_rows = match parts.iter().find(|p| p.bound == Bound::Default) {
        // As long as the default partition is big: its own session and timeout.
        Some(d) => {
            let mut conn = ctx.db.long_work(ctx.config.maintenance_timeout).await?;
            store::count_partition(&mut conn, &t.schema, &d.name).await?
        }
        None => 0,
    };
    let max_key = store::max_key(&mut ctx.db.write().await?, &t).await?;
    let bounds: Vec<Bound> = parts.iter().map(|p| p.bound).collect();
    Ok(RangeHealth {
        keys_ahead: keys_ahead(&ranges, max_key, base_key(max_key, &bounds)),
        table: t,
        partitions,
        gaps,
        default_rows,
        max_key,
    })
}

/// Keys from the first unused one (after `max`, else `base`) up to the newest range's upper bound.
fn keys_ahead(ranges: &[(Option<i64>, Option<i64>)], max: Option<i64>, base: i64) -> i64 {
    if ranges.iter().any(|(_, upper)| upper.is_none()) {
        return i64::MAX;
    }
    let Some(newest) = ranges.iter().filter_map(|(_, upper)| *upper).max() else { return 0 };
    let next = max.map_or(i128::from(base), |m| i128::from(m) + 1);
    i64::try_from((i128::from(newest) - next).max(0)).unwrap_or(i64::MAX)
}

async fn hash_health(ctx: &Context, t: Table) -> Result<HashHealth> {
    let (parts, partitions) = keyed(ctx, &t).await?;
    let hashes = hash_bounds(&parts);
    let modulus = hashes.iter().map(|(m, _)| *m).max().unwrap_or(0);
    let analyzed = parts.iter().all(|p| p.estimated_rows >= 0);
    let values = |f: fn(&KeyedPartition) -> f64| -> Vec<(i32, f64)> {
        parts
            .iter()
            .filter_map(|p| match p.bound {
                Bound::Hash { modulus, .. } => Some((modulus, f(p))),
                _ => None,
            })
            .collect()
    };
    Ok(HashHealth {
        missing_remainders: missing_remainders(&hashes, modulus),
        row_skew: if analyzed { skew(&values(|p| p.estimated_rows as f64)) } else { 0.0 },
        size_skew: skew(&values(|p| p.size as f64)),
        modulus,
        table: t,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(lower: i64, upper: i64) -> Bound {
        Bound::Range { lower: Some(lower), upper: Some(upper) }
    }

    fn planned(new: &[NewKeyed]) -> Vec<(&str, Bound)> {
        new.iter().map(|n| (n.name.as_str(), n.bound)).collect()
    }

    #[test]
    fn ranges_are_aligned_on_the_width_and_skip_what_exists() {
        let (new, skipped) = plan_ranges("items", IntKeyType::BigInt, &[range(0, 1000)], 999, 1000, 2, 0).unwrap();
        assert_eq!(planned(&new), [("items_p1000", range(1000, 2000)), ("items_p2000", range(2000, 3000))]);
        assert_eq!(skipped, 1);
        // Below zero, and partly overlapped by a range of another width.
        let (new, skipped) = plan_ranges("t", IntKeyType::Integer, &[range(-150, -50)], -1, 100, 0, 2).unwrap();
        assert_eq!(planned(&new), [("t_pm300", range(-300, -200))]);
        assert_eq!(skipped, 2);
        // MINVALUE / MAXVALUE ranges cover everything on their side.
        let open = [Bound::Range { lower: None, upper: Some(0) }, Bound::Range { lower: Some(500), upper: None }];
        let (new, skipped) = plan_ranges("t", IntKeyType::Integer, &open, 0, 250, 3, 1).unwrap();
        assert_eq!(planned(&new), [("t_p0", range(0, 250)), ("t_p250", range(250, 500))]);
        assert_eq!(skipped, 3);
    }

    #[test]
    fn ranges_past_the_key_type_are_refused() {
        let e = plan_ranges("t", IntKeyType::SmallInt, &[], 32_000, 1000, 1, 0).unwrap_err();
        assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("smallint")), "{e:?}");
        assert!(plan_ranges("t", IntKeyType::BigInt, &[], i64::MAX - 1, i64::MAX / 2, 1, 0).is_err());
    }

    #[test]
    fn names_stay_within_63_bytes() {
        let long = "é".repeat(26) + "x"; // 53 bytes
        let n = partition_name(&long, "_pm9223372036854775808");
        assert!(n.len() <= 63 && n.ends_with("_pm9223372036854775808"), "{n}");
        assert_eq!(partition_name("items", "_h3"), "items_h3");
    }

    #[test]
    fn empty_tables_count_from_the_lowest_range_or_zero() {
        assert_eq!(base_key(Some(7), &[range(100, 200)]), 7);
        assert_eq!(base_key(None, &[range(100, 200), range(-5, 0)]), -5);
        assert_eq!(base_key(None, &[Bound::Default]), 0);
    }

    #[test]
    fn keys_ahead_count_from_the_first_unused_key() {
        let r = [(Some(0), Some(1000)), (Some(1000), Some(3000))];
        assert_eq!(keys_ahead(&r, Some(999), 0), 2000);
        assert_eq!(keys_ahead(&r, Some(5000), 0), 0);
        assert_eq!(keys_ahead(&r, None, 0), 3000);
        assert_eq!(keys_ahead(&[(Some(0), None)], Some(1), 0), i64::MAX);
        assert_eq!(keys_ahead(&[], Some(1), 0), 0);
    }

    #[test]
    fn missing_remainders_and_skew_follow_every_modulus() {
        assert_eq!(missing_remainders(&[(4, 0), (4, 1), (4, 2)], 4), [3]);
        // Modulus 2 remainder 0 covers 0 and 2 of modulus 4.
        assert_eq!(missing_remainders(&[(2, 0), (4, 1)], 4), [3]);
        assert!(missing_remainders(&[(2, 0), (4, 1), (4, 3)], 4).is_empty());
        assert_eq!(skew(&[(4, 100.0), (4, 100.0), (4, 100.0), (4, 100.0)]), 1.0);
        assert_eq!(skew(&[(2, 200.0), (4, 100.0), (4, 100.0)]), 1.0);
        assert_eq!(skew(&[(2, 300.0), (2, 100.0)]), 1.5);
        assert_eq!(skew(&[(4, 0.0), (4, 0.0)]), 1.0);
        assert_eq!(skew(&[]), 0.0);
    }
}
