//! The restore side of `encode`: archived documents (one JSON object per line, as `row_to_json` or
//! SQLite's `json_object` wrote them) decoded in Rust for the bulk paths, so the database parses no
//! JSON: PostgreSQL gets `COPY` text, SQLite typed values for a prepared statement.
//!
//! Each value becomes exactly what the exact path (`restore` in [`TableSql`](super::TableSql), which
//! has the database read the documents) makes of it; what this cannot say for sure is reported as
//! [`Unfit`] and the segment goes the exact path instead.
//!
//! - PostgreSQL (`json_populate_recordset`'s rules): a JSON string becomes its text, any other
//!   scalar its JSON text as written (numbers are never parsed, so none is rounded), `null` NULL;
//!   a `json`/`jsonb` column takes the value's JSON text; an array column a JSON array, written as
//!   an array literal.
//! - SQLite (`json_extract`'s rules): integers, reals, text, `true`/`false` as 1/0, and the
//!   `{"$blob": hex}` objects the archive writes for BLOBs.

use std::{borrow::Cow, collections::HashMap, fmt};

use bytes::Bytes;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a segment cannot take a bulk path: the exact path decides what its documents mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unfit(pub(super) String);

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a PostgreSQL column's JSON value becomes the column's input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// A scalar type: a JSON string's text, or any other value's JSON text.
    Scalar,
    /// `json` or `jsonb`: the value's JSON text.
    Json,
    /// An array of a scalar type: a JSON array (nested for more dimensions) as an array literal.
    Array,
}

/// The documents' keys: the table's column names, in table order (the order `row_to_json` and
/// `json_object` write them in, so the next key is almost always the next column).
#[derive(Debug, Clone)]
pub(super) struct Names {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Names {
    pub(super) fn new(names: Vec<String>) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        Self { names, index }
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }

    pub(super) fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn find(&self, key: &str, next: usize) -> Option<usize> {
        match self.names.get(next) {
            Some(n) if n == key => Some(next),
            _ => self.index.get(key).copied(),
        }
    }
}

/// Reads one document's values into `slots` (by column position; a key the table does not have is
/// skipped, a column the document lacks stays None: NULL, as on the exact path).
fn fields<'a>(names: &Names, line: &'a str, slots: &mut [Option<&'a RawValue>]) -> Result<(), Unfit> {
    slots.iter_mut().for_each(|s| *s = None);
    let mut de = serde_json::Deserializer::from_str(line);
    Fields { names, slots }.deserialize(&mut de).and_then(|()| de.end()).map_err(|e| Unfit(format!("a document: {e}")))
}

struct Fields<'n, 's, 'a> {
    names: &'n Names,
    slots: &'s mut [Option<&'a RawValue>],
}

impl<'de> DeserializeSeed<'de> for Fields<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut next = 0;
        while let Some(found) = map.next_key_seed(Key { names: self.names, next })? {
            match found {
                Some(i) => {
                    self.slots[i] = Some(map.next_value::<&'de RawValue>()?);
                    next = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A document key as a column position; escaped keys arrive unescaped, so names with quotes work.
struct Key<'n> {
    names: &'n Names,
    next: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.names.find(key, self.next))
    }
}

/// The lines of a segment's JSON Lines text (empty lines skipped).
pub(super) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').filter(|l| !l.is_empty())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: COPY text
// ---------------------------------------------------------------------------------------------

/// What COPY writes of a table, and where the documents keep it.
#[derive(Debug, Clone)]
pub(super) struct CopyLayout {
    pub(super) names: Names,
    /// The columns COPY writes, in its column list's order: position in `names`, and form.
    pub(super) insert: Vec<(usize, Form)>,
    /// The key columns: position in `names`, and form.
    pub(super) keys: Vec<(usize, Form)>,
}

/// A segment's rows in COPY text format, one line per row, with their keys.
#[derive(Debug, Clone)]
pub(super) struct CopyRows {
    /// Every row's line.
    pub(super) data: Bytes,
    /// Where each row's line ends in `data`.
    pub(super) ends: Vec<usize>,
    /// Per key column, each row's value as the column's input text (None: NULL).
    pub(super) keys: Vec<Vec<Option<String>>>,
}

impl CopyRows {
    /// The lines of the rows not in `skip` (sorted row positions), as runs of `data`.
    pub(super) fn kept(&self, skip: &[usize]) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut skip = skip.iter().copied().peekable();
        let (mut run_start, mut start) = (0, 0);
        for (row, &end) in self.ends.iter().enumerate() {
            if skip.next_if_eq(&row).is_some() {
                if start > run_start {
                    out.push(self.data.slice(run_start..start));
                }
                run_start = end;
            }
            start = end;
        }
        if start > run_start {
            out.push(self.data.slice(run_start..start));
        }
        out
    }
}

impl CopyLayout {
    /// Writes the documents as COPY text.
    pub(super) fn copy_rows<'a>(&self, lines: impl Iterator<Item = &'a str>) -> Result<CopyRows, Unfit> {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        let mut keys: Vec<Vec<Option<String>>> = vec![Vec::new(); self.keys.len()];
        let mut slots = vec![None; self.names.len()];
        for line in lines {
            // The COPY line is about as long as the document.
            data.reserve(line.len());
            fields(&self.names, line, &mut slots)?;
            for (n, &(i, form)) in self.insert.iter().enumerate() {
                if n > 0 {
                    data.push(b'\t');
                }
                match slots[i].map(|v| input_text(form, v)).transpose()?.flatten() {
                    None => data.extend_from_slice(b"\\N"),
                    Some(text) => push_copy(&mut data, &text),
                }
            }
            data.push(b'\n');
            ends.push(data.len());
            for (values, &(i, form)) in keys.iter_mut().zip(&self.keys) {
                values.push(slots[i].map(|v| input_text(form, v)).transpose()?.flatten().map(Cow::into_owned));
            }
        }
        Ok(CopyRows { data: Bytes::from(data), ends, keys })
    }
}

/// The input text the exact path gives the column for `value` (None: NULL).
fn input_text(form: Form, value: &RawValue) -> Result<Option<Cow<'_, str>>, Unfit> {
    let s = value.get();
    Ok(Some(match (form, s.as_bytes().first()) {
        (_, Some(b'n')) => return Ok(None),
        (Form::Json, _) => Cow::Borrowed(s),
        (Form::Scalar, Some(b'"')) => json_string(s)?,
        (Form::Scalar, _) => Cow::Borrowed(s),
        (Form::Array, Some(b'[')) => {
            let mut out = String::with_capacity(s.len() + 2);
            array_literal(s, &mut out)?;
            Cow::Owned(out)
        }
        (Form::Array, _) => return Err(Unfit(format!("an array column holds {}", preview(s)))),
    }))
}

/// A JSON string's text; borrowed when it has no escapes.
fn json_string(s: &str) -> Result<Cow<'_, str>, Unfit> {
    match s.get(1..s.len().saturating_sub(1)) {
        Some(inner) if s.len() >= 2 && !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(s).map(Cow::Owned).map_err(|e| Unfit(format!("a string: {e}"))),
    }
}

/// A JSON array as a PostgreSQL array literal: every element quoted (the element type's input
/// reads the same text from a quoted element), `null` as NULL, nested arrays as dimensions.
fn array_literal(s: &str, out: &mut String) -> Result<(), Unfit> {
    let items: Vec<&RawValue> = serde_json::from_str(s).map_err(|e| Unfit(format!("an array: {e}")))?;
    out.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let v = item.get();
        match v.as_bytes().first() {
            Some(b'[') => array_literal(v, out)?,
            Some(b'n') => out.push_str("NULL"),
            Some(b'"') => quote_element(&json_string(v)?, out),
            Some(b'{') => return Err(Unfit(format!("an object in an array: {}", preview(v)))),
            _ => quote_element(v, out),
        }
    }
    out.push('}');
    Ok(())
}

fn quote_element(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn preview(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Appends `s` as a COPY text field: backslash, newline, carriage return and tab escaped (the
/// other bytes stand for themselves).
pub(super) fn push_copy(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let escaped: &[u8] = match c {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
}

// ---------------------------------------------------------------------------------------------
// SQLite: typed values
// ---------------------------------------------------------------------------------------------

/// A value for SQLite, of the type `json_extract` gives it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Where the values of SQLite's per-row statement come from: positions in `names`.
#[derive(Debug, Clone)]
pub(super) struct ValueLayout {
    pub(super) names: Names,
    /// The statement's parameters in order (insert columns, then key columns when it checks them).
    pub(super) params: Vec<usize>,
}

impl ValueLayout {
    /// Each row's parameters.
    pub(super) fn values<'a>(&self, lines: impl Iterator<Item = &'a str>) -> Result<Vec<Vec<SqlValue>>, Unfit> {
        let mut slots = vec![None; self.names.len()];
        lines
            .map(|line| {
                fields(&self.names, line, &mut slots)?;
                self.params.iter().map(|&i| slots[i].map_or(Ok(SqlValue::Null), sqlite_value)).collect()
            })
            .collect()
    }
}

fn sqlite_value(value: &RawValue) -> Result<SqlValue, Unfit> {
    let s = value.get();
    Ok(match s.as_bytes().first() {
        Some(b'n') => SqlValue::Null,
        Some(b't') => SqlValue::Int(1),
        Some(b'f') => SqlValue::Int(0),
        Some(b'"') => SqlValue::Text(json_string(s)?.into_owned()),
        Some(b'{') => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Blob<'a> {
                #[serde(rename = "$blob", borrow)]
                hex: Cow<'a, str>,
            }
            let blob: Blob<'_> =
                serde_json::from_str(s).map_err(|_| Unfit(format!("an object that is no BLOB: {}", preview(s))))?;
            SqlValue::Blob(hex::decode(blob.hex.as_bytes()).map_err(|e| Unfit(format!("a BLOB's hex: {e}")))?)
        }
        Some(b'[') => return Err(Unfit(format!("an array: {}", preview(s)))),
        // A number: an integer unless it has a fraction or exponent (or does not fit 64 bits),
        // as json_extract reads it.
        _ if s.contains(['.', 'e', 'E']) => SqlValue::Real(real(s)?),
        _ => s.parse().map(SqlValue::Int).or_else(|_| real(s).map(SqlValue::Real))?,
    })
}

fn real(s: &str) -> Result<f64, Unfit> {
    s.parse().map_err(|_| Unfit(format!("a number: {}", preview(s))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(columns: &[(&str, Form)], insert: &[&str], keys: &[&str]) -> CopyLayout {
        let names = Names::new(columns.iter().map(|(n, _)| n.to_string()).collect());
        let form = |n: &str| columns.iter().find(|c| c.0 == n).unwrap().1;
        let pos = |n: &str| (names.position(n).unwrap(), form(n));
        CopyLayout {
            insert: insert.iter().map(|n| pos(n)).collect(),
            keys: keys.iter().map(|n| pos(n)).collect(),
            names,
        }
    }

    fn copy_text(l: &CopyLayout, docs: &[&str]) -> String {
        String::from_utf8(l.copy_rows(docs.iter().copied()).unwrap().data.to_vec()).unwrap()
    }

    /// Every kind of value `row_to_json` writes becomes the text the column's input reads, as
    /// `json_populate_record` would hand it over, escaped for COPY.
    #[test]
    fn documents_become_copy_text() {
        let l = layout(
            &[("id", Form::Scalar), ("t", Form::Scalar), ("j", Form::Json), ("a", Form::Array), ("g", Form::Scalar)],
            &["id", "t", "j", "a"],
            &["id"],
        );
        let docs = [
            // Numbers keep their JSON text (nothing rounded, trailing zeros kept).
            r#"{"id":12345678901234567890.123456789012345000,"t":"plain","j":{"a": [1, 2.50]},"a":[1,null,3],"g":7}"#,
            // Escapes: JSON's undone, COPY's done; a tab, a newline and backslashes in text.
            r#"{"id":-1e-7,"t":"tab\there\nnew \\ back \"q\" \u00e9 \ud83d\ude80 \/","j":"s\\n","a":[],"g":null}"#,
            // NULL everywhere, and a key the table lacks (a dropped column) ignored.
            r#"{"id":null,"t":null,"j":null,"a":null,"gone":[1,{"x":2}],"g":1}"#,
            // A column missing from the document is NULL; keys may come in any order.
            r#"{"t":"\\N","id":2}"#,
            // Arrays: strings quoted and escaped inside, dimensions nested.
            r#"{"id":3,"t":"","j":[],"a":[["a\"b","c,d"],[null,"{x} \\ y"]]}"#,
            r#"{"id":4,"t":"NaN","j":"x","a":[true,false],"g":1}"#,
        ];
        assert_eq!(
            copy_text(&l, &docs),
            [
                "12345678901234567890.123456789012345000\tplain\t{\"a\": [1, 2.50]}\t{\"1\",NULL,\"3\"}\n",
                "-1e-7\ttab\\there\\nnew \\\\ back \"q\" é 🚀 /\t\"s\\\\\\\\n\"\t{}\n",
                "\\N\t\\N\t\\N\t\\N\n",
                "2\t\\\\N\t\\N\t\\N\n",
                "3\t\t[]\t{{\"a\\\\\"b\",\"c,d\"},{NULL,\"{x} \\\\\\\\ y\"}}\n",
                "4\tNaN\t\"x\"\t{\"true\",\"false\"}\n",
            ]
            .concat()
        );
        let rows = l.copy_rows(docs.iter().copied()).unwrap();
        assert_eq!(
            rows.keys,
            vec![vec![
                Some("12345678901234567890.123456789012345000".to_string()),
                Some("-1e-7".into()),
                None,
                Some("2".into()),
                Some("3".into()),
                Some("4".into())
            ]]
        );
        assert_eq!(rows.ends.len(), 6);
    }

    #[test]
    fn escaped_column_names_and_unknown_shapes() {
        let l = layout(&[("odd \"name\" \\", Form::Scalar), ("a", Form::Array)], &["odd \"name\" \\", "a"], &[]);
        assert_eq!(copy_text(&l, &[r#"{"odd \"name\" \\":"v","a":[1]}"#]), "v\t{\"1\"}\n");
        // What the exact path would have to decide: an object in an array, an array column holding
        // a string, a document that is not an object or not JSON.
        for bad in [r#"{"a":[{"x":1}]}"#, r#"{"a":"{1,2}"}"#, "[1,2]", "{\"a\":", "{} x"] {
            assert!(l.copy_rows([bad].into_iter()).is_err(), "{bad}");
        }
    }

    #[test]
    fn kept_rows_are_runs_of_the_copy_data() {
        let l = layout(&[("id", Form::Scalar)], &["id"], &["id"]);
        let docs: Vec<String> = (0..6).map(|i| format!("{{\"id\":{i}}}")).collect();
        let rows = l.copy_rows(docs.iter().map(String::as_str)).unwrap();
        let joined =
            |skip: &[usize]| rows.kept(skip).iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect::<Vec<_>>();
        assert_eq!(joined(&[]), ["0\n1\n2\n3\n4\n5\n"]);
        assert_eq!(joined(&[0, 2, 3]), ["1\n", "4\n5\n"]);
        assert_eq!(joined(&[5]), ["0\n1\n2\n3\n4\n"]);
        assert!(joined(&[0, 1, 2, 3, 4, 5]).is_empty());
    }

    #[test]
    fn copy_escaping() {
        let mut out = Vec::new();
        push_copy(&mut out, "a\\b\tc\nd\re\u{1}\\N");
        assert_eq!(out, b"a\\\\b\\tc\\nd\\re\x01\\\\N");
    }

    /// SQLite values as `json_extract` types them; BLOBs from their `$blob` objects.
    #[test]
    fn documents_become_sqlite_values() {
        let names = Names::new(["id", "r", "t", "b", "n", "flag"].map(String::from).to_vec());
        let l = ValueLayout { params: vec![0, 1, 2, 3, 4, 5, 0], names };
        let values = l
            .values(
                [
                    r#"{"id":7,"r":0.10000000000000001,"t":"ü\n\"","b":{"$blob":"00FFab"},"n":null,"flag":true}"#,
                    r#"{"id":-9223372036854775808,"r":1e300,"t":"","b":null,"flag":false}"#,
                    r#"{"id":9223372036854775808,"r":2.0,"t":"12","b":{"$blob":""},"n":3}"#,
                ]
                .into_iter(),
            )
            .unwrap();
        use SqlValue::*;
        assert_eq!(
            values,
            vec![
                vec![Int(7), Real(0.1), Text("ü\n\"".into()), Blob(vec![0, 255, 171]), Null, Int(1), Int(7)],
                vec![Int(i64::MIN), Real(1e300), Text(String::new()), Null, Null, Int(0), Int(i64::MIN)],
                vec![
                    Real(9223372036854775808.0),
                    Real(2.0),
                    Text("12".into()),
                    Blob(vec![]),
                    Int(3),
                    Null,
                    Real(9223372036854775808.0)
                ],
            ]
        );
        for bad in [r#"{"b":{"x":1}}"#, r#"{"b":{"$blob":"zz"}}"#, r#"{"b":[1]}"#, r#"{"b":{"$blob":"00","y":1}}"#] {
            assert!(l.values([bad].into_iter()).is_err(), "{bad}");
        }
    }
}
