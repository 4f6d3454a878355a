//! The PostgreSQL row → JSON encoder of archive batches: strata writes each row's document itself,
//! byte for byte what `row_to_json` writes, from the binary values the select returns.
//!
//! Tuned with profiles (see docs/benchmarks.md): one pass per row, no allocation per value, text
//! escaped 32 bytes at a time. Change it only with the archive benchmark at hand.

use diesel::{QueryableByName, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{ColumnInfo, Count, DueRows, TableSql, sql_string};
use crate::db::{Error, Result, quote};

/// How strata writes a PostgreSQL row as the JSON `row_to_json` would, byte for byte, while
/// PostgreSQL escapes none of the text and builds no JSON it does not have to: `row_to_json` escapes
/// strings one character at a time (`escape_json` was 9 % of all CPU during an archive run). Every
/// column arrives as its own result column in the binary protocol: text raw (escaped here),
/// integers and booleans in binary (written here), every other type as `to_json(column)`,
/// PostgreSQL's own JSON for it. The row's time and location arrive in binary too.
#[derive(Debug, Clone)]
pub(super) struct DocPlan {
    /// Per column in table order: `"name":` and how its value arrives.
    columns: Vec<(String, Render)>,
    /// Positions of the key columns among `columns`.
    keys: Vec<usize>,
    /// Counts the table's columns, to notice one added during a run (it would be missing from the
    /// documents).
    count_columns: String,
    /// A partitioned table: each row also says which partition it lies in (`tableoid`).
    partitioned: bool,
}

/// How one column's value arrives from the select and becomes JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// Text as stored; written as a JSON string.
    Text,
    /// A binary `smallint`/`integer`/`bigint`; written as a number.
    Int,
    /// A binary `boolean`.
    Bool,
    /// `to_json(column)::text`: already JSON.
    Json,
}

impl Render {
    fn of(ty: &str) -> Self {
        match ty {
            "text" => Render::Text,
            t if t.starts_with("character varying") => Render::Text,
            "smallint" | "integer" | "bigint" => Render::Int,
            "boolean" => Render::Bool,
            _ => Render::Json,
        }
    }
}

impl DocPlan {
    /// The select's leading result columns: the table's columns in order, then the row's time and
    /// its location (with its partition on a partitioned table).
    pub(super) fn select_list(columns: &[ColumnInfo], time: &str, partitioned: bool) -> String {
        let mut list: Vec<String> = columns
            .iter()
            .map(|c| match Render::of(&c.ty) {
                Render::Json => format!("to_json(t.{})::text", quote(&c.name)),
                _ => format!("t.{}", quote(&c.name)),
            })
            .collect();
        list.push(format!("t.{}", quote(time)));
        list.push("t.ctid".into());
        if partitioned {
            list.push("t.tableoid".into());
        }
        list.join(", ")
    }

    pub(super) fn new(columns: &[ColumnInfo], keys: &[ColumnInfo], table: &str, partitioned: bool) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|c| (format!("{}:", serde_json::Value::from(c.name.as_str())), Render::of(&c.ty)))
                .collect(),
            keys: keys.iter().filter_map(|k| columns.iter().position(|c| c.name == k.name)).collect(),
            count_columns: format!(
                "SELECT count(*)::int8 AS n FROM pg_attribute
                  WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped",
                sql_string(table)
            ),
            partitioned,
        }
    }

    /// Appends the row's document, identical to `row_to_json(t)::text`, to `out`.
    fn document(&self, row: &PgRawRow, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        let extra = 2 + usize::from(self.partitioned);
        if row.fields.len() != self.columns.len() + extra {
            return Err(format!(
                "the select returned {} values for the table's {} columns",
                row.fields.len().saturating_sub(extra),
                self.columns.len()
            ));
        }
        out.push(b'{');
        for (i, (prefix, render)) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(prefix.as_bytes());
            render_value(*render, row.field(i), out)?;
        }
        out.push(b'}');
        Ok(())
    }

    /// The row's key as `json_build_array(keys…)::text` writes it.
    fn key(&self, row: &PgRawRow) -> std::result::Result<String, String> {
        let mut out = vec![b'['];
        for (n, &i) in self.keys.iter().enumerate() {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            render_value(self.columns[i].1, row.field(i), &mut out)?;
        }
        out.push(b']');
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    /// The row's time in Unix microseconds (None for NULL and ±infinity), from its binary value.
    fn time(&self, row: &PgRawRow) -> std::result::Result<Option<i64>, String> {
        const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
        let (oid, value) = row.typed(self.columns.len());
        let Some(v) = value else { return Ok(None) };
        Ok(match (oid, v.len()) {
            // timestamptz and timestamp: microseconds since 2000-01-01 (a timestamp without time
            // zone counts as UTC, as `extract(epoch …)` does).
            (1184 | 1114, 8) => match i64::from_be_bytes(v.try_into().expect("8 bytes")) {
                i64::MAX | i64::MIN => None,
                us => us.checked_add(PG_EPOCH_MICROS),
            },
            // date: days since 2000-01-01.
            (1082, 4) => match i32::from_be_bytes(v.try_into().expect("4 bytes")) {
                i32::MAX | i32::MIN => None,
                d => Some(i64::from(d) * 86_400_000_000 + PG_EPOCH_MICROS),
            },
            // Unix seconds.
            (20 | 23 | 21, _) => int_value(v)?.checked_mul(1_000_000),
            _ => return Err(format!("time column arrived as type oid {oid} ({} bytes)", v.len())),
        })
    }

    /// The row's `ctid` as `tid` text, from its binary value (block number, line pointer).
    fn location(&self, row: &PgRawRow, out: &mut String) -> std::result::Result<(), String> {
        match row.field(self.columns.len() + 1) {
            Some(v) if v.len() == 6 => {
                let block = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
                let item = u16::from_be_bytes(v[4..].try_into().expect("2 bytes"));
                use std::fmt::Write as _;
                let _ = write!(out, "\"({block},{item})\"");
                Ok(())
            }
            _ => Err("the row's ctid did not arrive".into()),
        }
    }

    /// The partition a row of a partitioned table lies in: its `tableoid`, from its binary value.
    fn partition(&self, row: &PgRawRow) -> std::result::Result<u32, String> {
        match row.field(self.columns.len() + 2) {
            Some(v) if v.len() == 4 => Ok(u32::from_be_bytes(v.try_into().expect("4 bytes"))),
            _ => Err("the row's tableoid did not arrive".into()),
        }
    }
}

/// A big-endian binary integer of 2, 4 or 8 bytes.
fn int_value(v: &[u8]) -> std::result::Result<i64, String> {
    Ok(match v.len() {
        2 => i64::from(i16::from_be_bytes(v.try_into().expect("2 bytes"))),
        4 => i64::from(i32::from_be_bytes(v.try_into().expect("4 bytes"))),
        8 => i64::from_be_bytes(v.try_into().expect("8 bytes")),
        n => return Err(format!("an integer of {n} bytes")),
    })
}

fn render_value(render: Render, value: Option<&[u8]>, out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let Some(v) = value else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    match render {
        Render::Text => push_json_string(out, v),
        Render::Json => out.extend_from_slice(v),
        Render::Int => out.extend_from_slice(itoa::Buffer::new().format(int_value(v)?).as_bytes()),
        Render::Bool => out.extend_from_slice(if v == [0] { b"false" } else { b"true" }),
    }
    Ok(())
}

/// Appends `s` as a JSON string escaped exactly as PostgreSQL's `escape_json` does (and
/// serde_json): `"`, `\` and the control characters, as `\b \f \n \r \t` or `\u00xx`. Text in
/// archived rows rarely needs any of that, so it is checked 32 bytes at a time (a loop the compiler
/// turns into vector instructions) and copied in runs.
fn push_json_string(out: &mut Vec<u8>, s: &[u8]) {
    const WIDE: usize = 32;
    let special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
    out.reserve(s.len() + 2);
    out.push(b'"');
    let (mut start, mut i) = (0, 0);
    while i < s.len() {
        if let Some(w) = s.get(i..i + WIDE)
            && !w.iter().fold(false, |any, &b| any | special(b))
        {
            i += WIDE;
            continue;
        }
        let b = s[i];
        i += 1;
        if !special(b) {
            continue;
        }
        out.extend_from_slice(&s[start..i - 1]);
        start = i;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// A row of the PostgreSQL select, as the binary values it arrived with.
struct PgRawRow {
    /// All values, back to back.
    bytes: Vec<u8>,
    /// Per value: its type oid and its range in `bytes`, or None for NULL.
    fields: Vec<(u32, Option<(u32, u32)>)>,
}

impl PgRawRow {
    fn field(&self, i: usize) -> Option<&[u8]> {
        self.typed(i).1
    }

    fn typed(&self, i: usize) -> (u32, Option<&[u8]>) {
        let Some(&(oid, range)) = self.fields.get(i) else { return (0, None) };
        (oid, range.map(|(start, end)| &self.bytes[start as usize..end as usize]))
    }
}

impl QueryableByName<diesel::pg::Pg> for PgRawRow {
    fn build<'a>(row: &impl diesel::row::NamedRow<'a, diesel::pg::Pg>) -> diesel::deserialize::Result<Self> {
        use diesel::row::{Field, Row};
        let n = row.field_count();
        let mut out = PgRawRow { bytes: Vec::with_capacity(1024), fields: Vec::with_capacity(n) };
        for i in 0..n {
            let field = Row::get(row, i).ok_or("a result column went missing")?;
            match field.value() {
                None => out.fields.push((0, None)),
                Some(v) => {
                    let start = u32::try_from(out.bytes.len())?;
                    out.bytes.extend_from_slice(v.as_bytes());
                    out.fields.push((v.get_oid().get(), Some((start, u32::try_from(out.bytes.len())?))));
                }
            }
        }
        Ok(out)
    }
}

/// Reads a batch's due rows on PostgreSQL and writes their documents (JSON Lines), keys, times and
/// locations into `out`. The loop over the rows stays beside the encoder it calls for every row.
pub(super) async fn load_due(
    c: &mut AsyncPgConnection,
    sql: &TableSql,
    select: &str,
    params: &str,
    out: &mut DueRows,
) -> Result<()> {
    let plan = sql.doc.as_ref().ok_or_else(|| Error::Unsupported("no document plan for PostgreSQL".into()))?;
    let rows: Vec<PgRawRow> = diesel::sql_query(select).bind::<Text, _>(params).load(c).await?;
    let (Some(first), Some(last)) = (rows.as_slice().first(), rows.as_slice().last()) else { return Ok(()) };
    // The rows are locked, and with them the table against ALTER TABLE: what the catalog says
    // now holds until this transaction ends.
    let n = diesel::sql_query(&plan.count_columns).get_result::<Count>(c).await?.n;
    if n as usize != plan.columns.len() {
        return Err(Error::Unsupported(format!(
            "the table now has {n} columns, not the {} this run started with: run again",
            plan.columns.len()
        )));
    }
    out.first_key = plan.key(first).map_err(Error::Unsupported)?;
    out.last_key = plan.key(last).map_err(Error::Unsupported)?;
    let row_bytes: usize = rows.iter().map(|r| r.bytes.len() + r.bytes.len() / 16 + 64).sum();
    out.jsonl.reserve(row_bytes);
    if !plan.partitioned {
        out.targets.reserve(rows.len() * 16 + 2);
        out.targets.push('{');
    }
    for r in &rows {
        plan.document(r, &mut out.jsonl).map_err(Error::Unsupported)?;
        out.jsonl.push(b'\n');
        if let Some(ts) = plan.time(r).map_err(Error::Unsupported)? {
            out.min_ts = Some(out.min_ts.map_or(ts, |m| m.min(ts)));
            out.max_ts = Some(out.max_ts.map_or(ts, |m| m.max(ts)));
        }
        let targets = if plan.partitioned {
            // A batch along the key touches few partitions: a short list, searched from its end.
            let oid = plan.partition(r).map_err(Error::Unsupported)?;
            let at = match out.by_partition.iter().rposition(|(o, _)| *o == oid) {
                Some(at) => at,
                None => {
                    out.by_partition.push((oid, String::from("{")));
                    out.by_partition.len() - 1
                }
            };
            &mut out.by_partition[at].1
        } else {
            &mut out.targets
        };
        if targets.len() > 1 {
            targets.push(',');
        }
        plan.location(r, targets).map_err(Error::Unsupported)?;
    }
    if plan.partitioned {
        out.by_partition.iter_mut().for_each(|(_, t)| t.push('}'));
    } else {
        out.targets.push('}');
    }
    out.count = rows.len();
    // Text arrives in the database's encoding converted to UTF-8 by the server; checked once
    // over the whole batch, not per value.
    std::str::from_utf8(&out.jsonl).map_err(|e| Error::Unsupported(format!("a row is not UTF-8: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-bytes-at-a-time escaping writes exactly what serde_json (and PostgreSQL's
    /// `escape_json`, which the archive tests compare against) writes, wherever in a word the
    /// special characters fall.
    #[test]
    fn json_strings_escape_like_serde_json() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain ascii text that is longer than eight bytes".into(),
            "ünïcödé — 中文 🎉 mixed with \"quotes\" and \\backslashes\\".into(),
            (0u8..0x80).map(char::from).collect(),
        ];
        // Every special character at every offset of a word, alone and in runs.
        for special in ['"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', '\u{7f}', 'é'] {
            for at in 0..70 {
                let mut s: String = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij"
                    .chars()
                    .take(at)
                    .collect();
                s.push(special);
                s.push_str("rstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ");
                cases.push(s.clone());
                cases.push(s.replace('a', &special.to_string()));
            }
        }
        // Pseudo-random strings over a small alphabet that is mostly special.
        let alphabet = ['a', '"', '\\', '\n', '\u{1}', 'ß', ' ', '\u{1f}', '/', 'z', '\u{20}'];
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for len in 0..300 {
            let s: String = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            cases.push(s);
        }
        for s in cases {
            let mut out = b"prefix".to_vec();
            push_json_string(&mut out, s.as_bytes());
            assert_eq!(std::str::from_utf8(&out[6..]).unwrap(), serde_json::to_string(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn binary_values_render_as_postgres_writes_them() {
        let mut out = Vec::new();
        for (render, value, want) in [
            (Render::Int, Some(&(-7i16).to_be_bytes()[..]), "-7"),
            (Render::Int, Some(&i32::MIN.to_be_bytes()[..]), "-2147483648"),
            (Render::Int, Some(&i64::MAX.to_be_bytes()[..]), "9223372036854775807"),
            (Render::Bool, Some(&[1u8][..]), "true"),
            (Render::Bool, Some(&[0u8][..]), "false"),
            (Render::Json, Some(&b"\"2024-01-02T03:04:05+00:00\""[..]), "\"2024-01-02T03:04:05+00:00\""),
            (Render::Text, Some(&b"a\"b"[..]), "\"a\\\"b\""),
            (Render::Text, None, "null"),
        ] {
            out.clear();
            render_value(render, value, &mut out).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
        assert!(render_value(Render::Int, Some(&[1, 2, 3]), &mut out).is_err(), "odd integer width");
        assert_eq!(Render::of("character varying(20)"), Render::Text);
        assert_eq!(Render::of("bigint"), Render::Int);
        assert_eq!(Render::of("numeric(10,2)"), Render::Json);
        assert_eq!(Render::of("timestamp with time zone"), Render::Json);
    }
}
