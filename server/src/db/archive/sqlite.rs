//! SQLite's [`Dialect`]: the table's columns from `pragma_table_xinfo`, values compared as SQLite
//! compares them, documents built by `json_object`, and rows deleted by key. SQLite has a single
//! writer, so nothing is locked row by row and batches run one at a time.

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Nullable, Text},
};
use diesel_async::RunQueryDsl;

use super::{
    ColumnInfo, Count, Dialect, DueRows, TableSql, TimeKind,
    resolve::{Resolved, TableSpec, Unfit},
    sql_string,
};
use crate::db::{Result, SqliteConn, quote};

/// The JSON parameter every statement takes.
const P: &str = "?1";

/// A filter value must be one the column's type can take: SQLite compares a bound text with an
/// INTEGER or REAL column's affinity applied, so a value that is not a number there (`"1 OR 1=1"`)
/// would silently match nothing, every run. Other affinities (TEXT, BLOB, NUMERIC — where SQLite
/// keeps dates as text) take any text.
fn check_value(ty: &str, value: &str) -> std::result::Result<(), String> {
    // SQLite's affinity rules, in their order (https://sqlite.org/datatype3.html, 3.1).
    let t = ty.to_ascii_uppercase();
    let (integer, real) = if t.contains("INT") {
        (true, false)
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") || t.contains("BLOB") || t.is_empty() {
        (false, false)
    } else {
        (false, t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB"))
    };
    if !(integer || real) {
        return Ok(());
    }
    // What SQLite takes as a number: optional sign, digits with at most one point, an optional
    // exponent; surrounding spaces ignored. No hex, infinity or NaN.
    let v = value.trim();
    let (mantissa, exponent) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let unsigned = |s: &str| s.strip_prefix(['+', '-']).unwrap_or(s).to_owned();
    let m = unsigned(mantissa);
    let digits = m.chars().filter(char::is_ascii_digit).count();
    let number = digits > 0
        && m.chars().all(|c| c.is_ascii_digit() || c == '.')
        && m.matches('.').count() <= 1
        && exponent.is_none_or(|e| {
            let e = unsigned(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        });
    if number { Ok(()) } else { Err(format!("not a number ({} affinity)", if integer { "INTEGER" } else { "REAL" })) }
}

#[derive(QueryableByName)]
struct SqliteColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = BigInt)]
    hidden: i64,
}

/// One due row as the SQLite select returns it.
#[derive(Debug, Clone, QueryableByName)]
struct SqliteDueRow {
    /// The row as a JSON object.
    #[diesel(sql_type = Text)]
    doc: String,
    /// Its key as a JSON array.
    #[diesel(sql_type = Text)]
    key: String,
    /// Its time in Unix microseconds.
    #[diesel(sql_type = Nullable<BigInt>)]
    ts: Option<i64>,
}

impl Dialect for SqliteConn {
    async fn columns(&mut self, spec: &TableSpec<'_>, table: &str) -> Result<Vec<ColumnInfo>, Unfit> {
        // An unknown schema name is an error from SQLite, reported like a missing table.
        let exists = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {}.sqlite_schema WHERE type = 'table' AND name = ?",
            quote(spec.schema_name)
        ))
        .bind::<Text, _>(spec.table_name)
        .get_result::<Count>(self)
        .await
        .map(|r| r.n)
        .unwrap_or(0);
        if exists == 0 {
            return Err(Unfit::Invalid(format!("table {table} does not exist")));
        }
        let columns: Vec<ColumnInfo> =
            diesel::sql_query("SELECT name, type AS ty, hidden FROM pragma_table_xinfo(?, ?) ORDER BY cid")
                .bind::<Text, _>(spec.table_name)
                .bind::<Text, _>(spec.schema_name)
                .load::<SqliteColumn>(self)
                .await?
                .into_iter()
                // hidden: 1 for virtual-table hidden columns, 2/3 for generated columns.
                .map(|c| ColumnInfo { name: c.name, ty: c.ty, generated: c.hidden != 0 })
                .collect();
        if let Some(bad) = columns.iter().find(|c| c.name.contains('"')) {
            return Err(Unfit::Invalid(format!("column {:?}: names with '\"' cannot be archived on SQLite", bad.name)));
        }
        Ok(columns)
    }

    async fn partitioned(&mut self, _spec: &TableSpec<'_>) -> Result<bool, Unfit> {
        Ok(false)
    }

    fn time_kind(time: &ColumnInfo) -> Option<TimeKind> {
        // SQLite's type affinity rules: a declared type containing "INT" is an integer column.
        Some(if time.ty.to_ascii_uppercase().contains("INT") { TimeKind::UnixSeconds } else { TimeKind::Timestamp })
    }

    fn can_be_key(_column: &ColumnInfo) -> bool {
        true
    }

    /// SQLite accepts any value in any column (type affinity), so there is nothing to check.
    async fn check_value(&mut self, ty: &str, value: &str) -> std::result::Result<(), String> {
        check_value(ty, value)
    }

    fn before_cutoff(tc: &str, _time: &ColumnInfo, kind: TimeKind) -> String {
        match kind {
            TimeKind::UnixSeconds => format!("{tc} < json_extract({P}, '$.cutoff')"),
            TimeKind::Timestamp => format!("julianday({tc}) < julianday(json_extract({P}, '$.cutoff'))"),
        }
    }

    // A bound value has no affinity, so SQLite compares it with the column's affinity applied.
    fn filter_value(i: usize, _ty: &str) -> String {
        format!("json_extract({P}, '$.f[{i}][0]')")
    }

    fn filter_values(i: usize, _ty: &str) -> String {
        format!("SELECT value FROM json_each({P}, '$.f[{i}]')")
    }

    fn table_sql(r: Resolved<'_>) -> TableSql {
        table_sql(r)
    }

    async fn load_due(&mut self, _sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()> {
        let rows: Vec<SqliteDueRow> = diesel::sql_query(select).bind::<Text, _>(params).load(self).await?;
        let (Some(first), Some(last)) = (rows.as_slice().first(), rows.as_slice().last()) else { return Ok(()) };
        (out.first_key, out.last_key) = (first.key.clone(), last.key.clone());
        out.targets = format!("[{}]", rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>().join(","));
        for r in &rows {
            out.jsonl.extend_from_slice(r.doc.as_bytes());
            out.jsonl.push(b'\n');
        }
        out.min_ts = rows.iter().filter_map(|r| r.ts).min();
        out.max_ts = rows.iter().filter_map(|r| r.ts).max();
        out.count = rows.len();
        Ok(())
    }

    async fn delete_due(&mut self, sql: &TableSql, rows: &DueRows) -> Result<usize> {
        Ok(diesel::sql_query(&sql.delete_keys).bind::<Text, _>(&rows.targets).execute(self).await?)
    }
}

/// The statements of a run: documents and keys built by SQLite's JSON functions, rows found again
/// by key.
fn table_sql(r: Resolved<'_>) -> TableSql {
    let Resolved { spec, columns, time_kind, keys, due, .. } = r;
    let t = format!("{}.{}", quote(spec.schema_name), quote(spec.table_name));
    let tc = format!("t.{}", quote(spec.time_column));
    let p = P;
    let key_cols = keys.iter().map(|k| format!("t.{}", quote(&k.name))).collect::<Vec<_>>().join(", ");
    let key_tuple = format!("({key_cols})");
    let after = format!(
        "({})",
        (0..keys.len()).map(|i| format!("json_extract({p}, '$.after[{i}]')")).collect::<Vec<_>>().join(", ")
    );
    let ts = match time_kind {
        TimeKind::UnixSeconds => format!("({tc} * 1000000)"),
        TimeKind::Timestamp => format!("CAST(round((julianday({tc}) - 2440587.5) * 86400000000.0) AS INTEGER)"),
    };
    // JSON cannot hold BLOBs: they become {"$blob": hex}. REALs are printed with 17 significant
    // digits so they round-trip exactly (SQLite's own JSON rendering keeps 15).
    let doc = format!(
        "json_object({})",
        columns
            .iter()
            .map(|col| {
                let v = format!("t.{}", quote(&col.name));
                format!(
                    "{}, CASE typeof({v}) WHEN 'blob' THEN json_object('$blob', hex({v})) \
                     WHEN 'real' THEN json(printf('%!.17g', {v})) ELSE {v} END",
                    sql_string(&col.name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let select = |extra: &str| {
        format!(
            "SELECT {doc} AS doc, json_array({key_cols}) AS key, {ts} AS ts
               FROM {t} t WHERE {due}{extra} ORDER BY {key_cols} LIMIT json_extract({p}, '$.limit')"
        )
    };
    // JSON paths are SQL string literals: a column named `it's` must not end the literal (names
    // with `"` were refused by `columns`, so the quoted path member is well formed).
    let path = |name: &str, member: &str| sql_string(&format!("$.\"{name}\"{member}"));
    let field = |src: &str, name: &str| format!("json_extract({src}, {})", path(name, ""));
    let decode = |src: &str, name: &str| {
        format!(
            "CASE json_type({src}, {}) WHEN 'object' THEN unhex(json_extract({src}, {})) ELSE {} END",
            path(name, ""),
            path(name, ".\"$blob\""),
            field(src, name)
        )
    };
    let insert_cols: Vec<&ColumnInfo> = columns.iter().filter(|c| !c.generated).collect();
    let key_match = keys
        .iter()
        .map(|k| format!("x.{} = {}", quote(&k.name), decode("r.value", &k.name)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let key_of = (0..keys.len()).map(|i| format!("json_extract(value, '$[{i}]')")).collect::<Vec<_>>().join(", ");
    let dk = keys.iter().map(|k| quote(&k.name)).collect::<Vec<_>>().join(", ");
    TableSql {
        time_kind,
        select_first: select(""),
        select_after: select(&format!(" AND {key_tuple} > {after}")),
        select_between: None,
        last_due_key: None,
        delete_keys: format!("DELETE FROM {t} WHERE ({dk}) IN (SELECT {key_of} FROM json_each({p}))"),
        purge: format!(
            "DELETE FROM {t} WHERE ({dk}) IN (SELECT {key_cols} FROM {t} t WHERE {due} ORDER BY {key_cols}
              LIMIT json_extract({p}, '$.limit'))"
        ),
        plan: format!(
            "SELECT count(*) AS rows, COALESCE(sum(length({doc})), 0) AS bytes, min({ts}) AS min_ts,
                    max({ts}) AS max_ts FROM {t} t WHERE {due}"
        ),
        restore: format!(
            "INSERT INTO {t} ({cols}) SELECT {vals} FROM json_each({p}) r
              WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE {key_match}) ON CONFLICT DO NOTHING",
            cols = insert_cols.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", "),
            vals = insert_cols.iter().map(|c| decode("r.value", &c.name)).collect::<Vec<_>>().join(", "),
        ),
        doc: None,
        columns,
    }
}

#[cfg(test)]
mod tests {
    use super::check_value;

    #[test]
    fn filter_values_must_fit_integer_and_real_columns() {
        for (ty, ok) in [
            ("INTEGER", &["1", " -42 ", "+7", "1.5", "1e3", "2E-2", ".5"][..]),
            ("REAL", &["0.1", "-3", "6.02e23"][..]),
            ("TEXT", &["1 OR 1=1", "anything"][..]),
            ("DATETIME", &["2024-01-01 00:00:00"][..]),
            ("", &["x"][..]),
            ("BLOB", &["x"][..]),
        ] {
            for v in ok {
                assert_eq!(check_value(ty, v), Ok(()), "{ty} {v:?}");
            }
        }
        for (ty, bad) in [
            ("INTEGER", &["1 OR 1=1", "", "abc", "0x10", "1.2.3", "1e", "e5", "inf", "NaN", "--1"][..]),
            ("BIGINT", &["12abc"][..]),
            ("DOUBLE PRECISION", &["1;DROP TABLE x"][..]),
            ("FLOAT", &["infinity"][..]),
        ] {
            for v in bad {
                assert!(check_value(ty, v).is_err(), "{ty} {v:?}");
            }
        }
    }
}
