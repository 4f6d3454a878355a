//! Storage figures of the application's database, as `db::stats` reads them and
//! `service::metrics` returns them.

use chrono::{DateTime, Utc};

/// Figures of one application table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableStats {
    /// Schema (`main` on SQLite).
    pub schema_name: String,
    /// Table name.
    pub table_name: String,
    /// Estimated rows (None: no statistics yet).
    pub rows: Option<i64>,
    /// Whether `rows` is exact (counted b-tree cells) rather than planner statistics.
    pub rows_exact: bool,
    /// Heap bytes.
    pub table_bytes: i64,
    /// Index bytes.
    pub index_bytes: i64,
    /// TOAST bytes.
    pub toast_bytes: i64,
    /// Whether the byte figures are estimates.
    pub sizes_estimated: bool,
    /// Dead rows.
    pub dead_rows: Option<i64>,
    /// Last vacuum.
    pub last_vacuum: Option<DateTime<Utc>>,
    /// Last analyze.
    pub last_analyze: Option<DateTime<Utc>>,
    /// Sequential scans.
    pub seq_scans: Option<i64>,
    /// Index scans.
    pub index_scans: Option<i64>,
}

impl TableStats {
    /// table + index + toast bytes.
    pub fn total_bytes(&self) -> i64 {
        self.table_bytes + self.index_bytes + self.toast_bytes
    }
}

/// Database-wide figures plus every table.
#[derive(Debug, Clone)]
pub struct DatabaseStats {
    /// Database name (file name on SQLite).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// Free bytes inside the file (SQLite).
    pub free_bytes: Option<i64>,
    /// Tables, largest first.
    pub tables: Vec<TableStats>,
    /// Notes on which figures are estimates.
    pub notes: Vec<String>,
}
