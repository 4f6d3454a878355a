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
