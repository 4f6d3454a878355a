//! Partition kinds and the resolved partitioned table (see the parent module for why they live
//! here): `db/` builds a [`Parent`] from PostgreSQL's catalog and every partition statement takes
//! one; `service/` decides what to create, drop or rescue.

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

use super::text_enum;

text_enum! {
    /// The SQL type of a partition key strata manages, spelled as PostgreSQL's `format_type` prints
    /// it (the spelling GetPartitionHealth reports).
    pub enum KeyType ("partition key type") {
        /// `timestamptz`.
        TimestampTz = "timestamp with time zone",
        /// `timestamp`.
        Timestamp = "timestamp without time zone",
        /// `date`.
        Date = "date",
    }
}

text_enum! {
    /// The SQL type of an integer range-partition key, spelled as `format_type` prints it.
    pub enum IntKeyType ("integer partition key type") {
        /// `smallint`.
        SmallInt = "smallint",
        /// `integer`.
        Integer = "integer",
        /// `bigint`.
        BigInt = "bigint",
    }
}

impl IntKeyType {
    /// The smallest and the largest value of the type: no range bound may pass them.
    pub fn limits(self) -> (i64, i64) {
        match self {
            IntKeyType::SmallInt => (i16::MIN.into(), i16::MAX.into()),
            IntKeyType::Integer => (i32::MIN.into(), i32::MAX.into()),
            IntKeyType::BigInt => (i64::MIN, i64::MAX),
        }
    }
}

/// How a table strata handles is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// By range of one time column: every upkeep call applies.
    TimeRange(KeyType),
    /// By range of one integer column, in ranges of a fixed width.
    IntegerRange(IntKeyType),
    /// By hash of one or more columns or expressions (`FOR VALUES WITH (modulus m, remainder r)`).
    Hash,
}

impl Kind {
    /// As messages name it ("… is partitioned by hash").
    pub fn describe(self) -> &'static str {
        match self {
            Kind::TimeRange(_) => "time range",
            Kind::IntegerRange(_) => "integer range",
            Kind::Hash => "hash",
        }
    }
}

/// A partitioned table of any kind strata handles, as found in the catalog. Every identifier was
/// read from the catalog; `db/` quotes them where it spells a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Partition key: the column of a range key; a hash key as PostgreSQL prints it
    /// (`user_id, lower(email)`), shown only.
    pub key: String,
    /// The key's SQL type as PostgreSQL prints it (a hash key's types joined by ", ").
    pub key_type: String,
    /// How it is partitioned.
    pub kind: Kind,
}

impl Table {
    /// The time-range view of the table that the time-only calls take; None for other kinds.
    pub fn time(&self) -> Option<Parent> {
        match self.kind {
            Kind::TimeRange(key_type) => {
                Some(Parent { schema: self.schema.clone(), table: self.table.clone(), key: self.key.clone(), key_type })
            }
            Kind::IntegerRange(_) | Kind::Hash => None,
        }
    }
}

/// A table range-partitioned on one time column, as found in the catalog. Every identifier was
/// read from the catalog; `db/` quotes them where it spells a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Partition key column.
    pub key: String,
    /// Its SQL type.
    pub key_type: KeyType,
}

/// Length of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// One UTC day.
    Daily,
    /// One UTC calendar month.
    Monthly,
}

impl Interval {
    /// The first day of the period holding `t`.
    pub(crate) fn start_of(self, t: DateTime<Utc>) -> NaiveDate {
        let d = t.date_naive();
        match self {
            Interval::Daily => d,
            Interval::Monthly => d.with_day(1).expect("day 1 exists"),
        }
    }
    /// The start of the period after the one starting on `d`.
    pub(crate) fn next(self, d: NaiveDate) -> NaiveDate {
        match self {
            Interval::Daily => d.succ_opt().expect("in range"),
            Interval::Monthly => d + Months::new(1),
        }
    }
    /// The start of the period before the one starting on `d`.
    pub(crate) fn prev(self, d: NaiveDate) -> NaiveDate {
        match self {
            Interval::Daily => d.pred_opt().expect("in range"),
            Interval::Monthly => d - Months::new(1),
        }
    }
    /// The partition-name suffix of the period starting on `d`.
    pub(crate) fn suffix(self, d: NaiveDate) -> String {
        match self {
            Interval::Daily => d.format("%Y%m%d").to_string(),
            Interval::Monthly => d.format("%Y%m").to_string(),
        }
    }
}
