//! Restore at bulk-load speed. A segment's documents are decoded in Rust (`decode`) before its
//! transaction, then written the fastest way the table allows, each segment in one transaction that
//! also marks it restored and counts the progress (exactly once: both commit or neither):
//!
//! - PostgreSQL: on a tokio-postgres session of its own ([`Db::bulk_session`]), the keys of the
//!   segment's rows already in the table are looked up in one indexed query, and the other rows go
//!   straight into the table through `COPY … FROM STDIN`. If the COPY fails on the data (a key an
//!   application inserted meanwhile, a value the decoder got wrong) nothing of it stays and the
//!   segment is restored again the exact way.
//! - SQLite: one prepared statement executed per row with typed values (on a pooled connection, in
//!   one blocking task per segment).
//! - The exact way, for the rest ([`restore_segment`]): the table's `restore` statement reads the
//!   segment's documents itself (`json_populate_recordset`, `json_each`). Tables whose columns the
//!   decoder cannot write for sure (composite types, arrays of JSON), tables with INSERT rules or
//!   row-level security (COPY ignores rules and refuses RLS), and segments whose documents hold
//!   what the decoder does not know go this way.
//!
//! Measured on 474k archived chat rows (docs/benchmarks.md, `strata-bench restore`): the exact
//! statement managed 0.31–0.35× the rows/s of a plain `COPY … FROM` of the same rows; parsing the
//! JSON in PostgreSQL from a staging table, or COPY into a staging table and `INSERT … SELECT … WHERE
//! NOT EXISTS` from it, each took ~1.5× the plain COPY on its own.

use std::{pin::pin, sync::Arc, time::Instant};

use bytes::Bytes;
use diesel::{
    QueryableByName,
    query_builder::{AstPass, QueryFragment, QueryId},
    sql_types::{BigInt, Binary, Double, Nullable, Text},
    sqlite::Sqlite,
};
use futures::SinkExt as _;
use tokio_postgres::{Statement, types::ToSql};

use super::{
    TableSpec, TableSql,
    batch::{Batch, begin, settle},
    catalog::{Progress, add_progress, renew_lease},
    decode::{self, CopyLayout, CopyRows, Form, Names, SqlValue, Unfit, ValueLayout},
};
use crate::{
    db::{Conn, Db, Error, Result, quote},
    db_run,
    model::archive::SegmentState,
};

/// Segments written at once on PostgreSQL, each on its own session. Measured with
/// `strata-bench restore` on two cores: 2 sessions overlap one segment's key lookup and commit with
/// another's COPY (see docs/benchmarks.md for the figures of 1 and 2).
const BULK_SESSIONS: usize = 2;

/// How a policy's table takes restored rows, decided once per run.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    copy: Option<Arc<CopyPlan>>,
    values: Option<Arc<ValuePlan>>,
    /// Why every segment goes the exact way (None when a bulk path applies).
    exact_because: Option<String>,
}

impl RestorePlan {
    /// Why the table's segments are restored the exact way, when they are.
    pub fn exact_because(&self) -> Option<&str> {
        self.exact_because.as_deref()
    }
}

/// PostgreSQL's COPY of a table: the decoder's layout and the two statements.
#[derive(Debug)]
struct CopyPlan {
    layout: CopyLayout,
    /// `COPY t (insert columns) FROM STDIN`.
    copy: String,
    /// The positions (1-based) of the rows whose key is in the table, from one `text[]` per key
    /// column.
    probe: String,
    /// Sessions writing segments at once: [`BULK_SESSIONS`] when a unique index makes a key
    /// inserted by one of them visible to the others (their COPY waits for it, then fails on it
    /// and the exact way skips the row), else 1: two sessions' probes would not see each other's
    /// uncommitted rows, and two segments holding one key would both insert it.
    sessions: usize,
}

/// SQLite's per-row statement: the decoder's layout and the statement's SQL between its parameters.
#[derive(Debug)]
struct ValuePlan {
    layout: ValueLayout,
    parts: Vec<String>,
}

/// A segment's rows, decoded for the table's bulk path when it has one.
#[derive(Debug)]
pub struct SegmentRows {
    /// The JSON Lines (the exact way reads them).
    text: String,
    /// How many documents.
    count: usize,
    decoded: Decoded,
}

#[derive(Debug)]
enum Decoded {
    Copy(CopyRows),
    Values(Arc<ValuePlan>, Arc<Vec<Vec<SqlValue>>>),
    Exact(Option<Unfit>),
}

impl SegmentRows {
    /// How many rows the segment holds.
    pub fn rows(&self) -> usize {
        self.count
    }

    /// The documents as one JSON array, the exact statement's parameter.
    fn json_array(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 2);
        out.push('[');
        for (i, line) in decode::lines(&self.text).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(line);
        }
        out.push(']');
        out
    }
}

impl RestorePlan {
    /// Decodes a segment's JSON Lines for the table's bulk path (CPU work: call it off the async
    /// threads). Err when the text is not UTF-8; documents the decoder cannot take leave the
    /// segment to the exact way.
    pub fn decode(&self, jsonl: Vec<u8>) -> std::result::Result<SegmentRows, std::string::FromUtf8Error> {
        let text = String::from_utf8(jsonl)?;
        let count = decode::lines(&text).count();
        let decoded = if let Some(copy) = &self.copy {
            copy.layout.copy_rows(decode::lines(&text)).map_or_else(|e| Decoded::Exact(Some(e)), Decoded::Copy)
        } else if let Some(values) = &self.values {
            values
                .layout
                .values(decode::lines(&text))
                .map_or_else(|e| Decoded::Exact(Some(e)), |v| Decoded::Values(values.clone(), Arc::new(v)))
        } else {
            Decoded::Exact(None)
        };
        Ok(SegmentRows { text, count, decoded })
    }
}

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

/// A column's type as PostgreSQL's catalog has it (domains resolved to their base type).
#[derive(QueryableByName)]
struct PgColumnType {
    #[diesel(sql_type = Text)]
    name: String,
    /// `pg_type.typtype` of the (base) type: b(ase), c(omposite), e(num), r(ange), m(ultirange), p(seudo).
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    type_name: String,
    /// For an array type, its element type's `typtype` and name (domains not resolved); else empty.
    #[diesel(sql_type = Text)]
    elem_kind: String,
    #[diesel(sql_type = Text)]
    elem_name: String,
}

#[derive(QueryableByName)]
struct PgTableFlags {
    /// Row-level security is on: COPY FROM refuses such tables.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    rls: bool,
    /// INSERT rules: COPY does not apply them.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    rules: bool,
    /// A unique index (or constraint) on key columns only: no key can be in the table twice.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    unique_key: bool,
}

#[derive(QueryableByName)]
struct SqliteKey {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

/// How `form` a column of this type takes on COPY, or why it cannot.
fn form_of(c: &PgColumnType) -> std::result::Result<Form, String> {
    let scalar = |kind: &str, name: &str| matches!(kind, "b" | "e" | "r" | "m") && !matches!(name, "json" | "jsonb");
    match (c.kind.as_str(), c.type_name.as_str()) {
        (_, "json" | "jsonb") => Ok(Form::Json),
        (_, _) if !c.elem_kind.is_empty() => {
            if scalar(&c.elem_kind, &c.elem_name) && !c.elem_name.starts_with('_') {
                Ok(Form::Array)
            } else {
                Err(format!("column {:?} is an array of {}", c.name, c.elem_name))
            }
        }
        (kind, name) if scalar(kind, name) => Ok(Form::Scalar),
        (_, name) => Err(format!("column {:?} has type {name}", c.name)),
    }
}

/// Looks at the table once per run: which bulk path its segments can take.
pub async fn restore_plan(conn: &mut Conn, sql: &TableSql, spec: &TableSpec<'_>) -> Result<RestorePlan> {
    use diesel_async::RunQueryDsl;
    let table = format!("{}.{}", quote(spec.schema_name), quote(spec.table_name));
    let names = Names::new(sql.columns.iter().map(|c| c.name.clone()).collect());
    let position = |name: &str| {
        names.position(name).ok_or_else(|| Error::Unsupported(format!("column {name:?} is gone from {table}")))
    };
    let insert: Vec<usize> =
        sql.columns.iter().filter(|c| !c.generated).map(|c| position(&c.name)).collect::<Result<_>>()?;
    let keys: Vec<usize> = spec.key_columns.iter().map(|k| position(k)).collect::<Result<_>>()?;
    let exact =
        |why: String| -> Result<RestorePlan> { Ok(RestorePlan { copy: None, values: None, exact_because: Some(why) }) };
    match conn {
        Conn::Pg(c) => {
            let flags = diesel::sql_query(
                "SELECT c.relrowsecurity AS rls,
                        EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '3') AS rules,
                        EXISTS (SELECT 1 FROM pg_index i
                                 WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                                   AND i.indexprs IS NULL
                                   AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                                    WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
                                                      AND a.attname <> ALL ($2))) AS unique_key
                   FROM pg_class c WHERE c.oid = CAST($1 AS regclass)",
            )
            .bind::<Text, _>(&table)
            .bind::<diesel::sql_types::Array<Text>, _>(spec.key_columns)
            .get_result::<PgTableFlags>(&mut **c)
            .await?;
            if flags.rls || flags.rules {
                return exact(format!("{table} has {}", if flags.rls { "row-level security" } else { "INSERT rules" }));
            }
            // Domains (over domains) resolved to their base type; arrays recognised as PostgreSQL's
            // own test does (`typelem` set, variable length), named `_elem`.
            let types: Vec<PgColumnType> = diesel::sql_query(
                "WITH RECURSIVE base(attnum, name, oid) AS (
                     SELECT a.attnum, a.attname::text, a.atttypid FROM pg_attribute a
                      WHERE a.attrelid = CAST($1 AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
                     UNION ALL
                     SELECT b.attnum, b.name, t.typbasetype FROM base b JOIN pg_type t ON t.oid = b.oid
                      WHERE t.typtype = 'd')
                 SELECT b.name, t.typtype::text AS kind, t.typname::text AS type_name,
                        COALESCE(e.typtype::text, '') AS elem_kind, COALESCE(e.typname::text, '') AS elem_name
                   FROM base b JOIN pg_type t ON t.oid = b.oid
                   LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typlen = -1 AND t.typname LIKE '\\_%'
                  WHERE t.typtype <> 'd'
                  ORDER BY b.attnum",
            )
            .bind::<Text, _>(&table)
            .load(&mut **c)
            .await?;
            let form = |i: usize| {
                let name = &sql.columns[i].name;
                match types.iter().find(|t| &t.name == name) {
                    Some(t) => form_of(t),
                    None => Err(format!("column {name:?} is gone from {table}")),
                }
            };
            let forms = |cols: &[usize]| {
                cols.iter().map(|&i| form(i).map(|f| (i, f))).collect::<std::result::Result<Vec<_>, _>>()
            };
            let (insert, keys) = match (forms(&insert), forms(&keys)) {
                (Ok(i), Ok(k)) => (i, k),
                (Err(why), _) | (_, Err(why)) => return exact(why),
            };
            let cols = insert.iter().map(|&(i, _)| quote(&sql.columns[i].name)).collect::<Vec<_>>().join(", ");
            let probe = format!(
                "SELECT k.i FROM unnest({arrays}) WITH ORDINALITY AS k({names}, i)
                  WHERE EXISTS (SELECT 1 FROM {table} x WHERE {matches})",
                arrays = (1..=keys.len()).map(|n| format!("${n}::text[]")).collect::<Vec<_>>().join(", "),
                names = (0..keys.len()).map(|n| format!("k{n}")).collect::<Vec<_>>().join(", "),
                matches = keys
                    .iter()
                    .enumerate()
                    .map(|(n, &(i, _))| {
                        let c = &sql.columns[i];
                        format!("x.{} = CAST(k.k{n} AS {})", quote(&c.name), c.ty)
                    })
                    .collect::<Vec<_>>()
                    .join(" AND "),
            );
            Ok(RestorePlan {
                copy: Some(Arc::new(CopyPlan {
                    layout: CopyLayout { names, insert, keys },
                    copy: format!("COPY {table} ({cols}) FROM STDIN"),
                    probe,
                    sessions: if flags.unique_key { BULK_SESSIONS } else { 1 },
                })),
                values: None,
                exact_because: None,
            })
        }
        Conn::Sqlite(c) => {
            // A key that is the rowid (INTEGER PRIMARY KEY) needs no lookup of its own: the insert's
            // ON CONFLICT DO NOTHING skips exactly the rows whose key exists. Other keys are
            // checked with NOT EXISTS, as the exact statement does (a unique index's collation
            // could differ from the comparison's).
            let pk: Vec<SqliteKey> =
                diesel::sql_query("SELECT name, type AS ty, pk FROM pragma_table_info(?, ?) WHERE pk > 0")
                    .bind::<Text, _>(spec.table_name)
                    .bind::<Text, _>(spec.schema_name)
                    .load(&mut **c)
                    .await?;
            let pk_index = diesel::sql_query("SELECT count(*) AS n FROM pragma_index_list(?, ?) WHERE origin = 'pk'")
                .bind::<Text, _>(spec.table_name)
                .bind::<Text, _>(spec.schema_name)
                .get_result::<super::Count>(&mut **c)
                .await?
                .n;
            let rowid_key = pk_index == 0
                && matches!(pk.as_slice(), [k] if k.pk == 1 && k.ty.eq_ignore_ascii_case("INTEGER"))
                && matches!(spec.key_columns, [k] if *k == pk[0].name);
            // The statement's SQL between its parameters (identifiers may hold a '?').
            let mut parts = vec![String::new()];
            let mut params = Vec::new();
            let mut push = |sql: &str, param: Option<usize>| {
                parts.last_mut().expect("one part at least").push_str(sql);
                if let Some(i) = param {
                    params.push(i);
                    parts.push(String::new());
                }
            };
            let cols = insert.iter().map(|&i| quote(&sql.columns[i].name)).collect::<Vec<_>>().join(", ");
            push(&format!("INSERT INTO {table} ({cols}) "), None);
            push(if rowid_key { "VALUES (" } else { "SELECT " }, None);
            for (n, &i) in insert.iter().enumerate() {
                push(if n > 0 { ", " } else { "" }, Some(i));
            }
            if rowid_key {
                push(")", None);
            } else {
                push(&format!(" WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE "), None);
                for (n, &i) in keys.iter().enumerate() {
                    let and = if n > 0 { " AND " } else { "" };
                    push(&format!("{and}x.{} = ", quote(&sql.columns[i].name)), Some(i));
                }
                push(")", None);
            }
            push(" ON CONFLICT DO NOTHING", None);
            Ok(RestorePlan {
                copy: None,
                values: Some(Arc::new(ValuePlan { layout: ValueLayout { names, params }, parts })),
                exact_because: None,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// What restoring a segment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Rows inserted.
    pub inserted: usize,
    /// Rows skipped: their key was in the table.
    pub skipped: usize,
    /// A cancel of the run was requested meanwhile.
    pub cancel_requested: bool,
}

/// Writes segments into the table, one at a time; a run has several when its table takes COPY.
pub struct RestoreWriter {
    db: Db,
    bulk: Option<BulkSession>,
}

/// The writers of a run with `plan`: [`BULK_SESSIONS`] sessions of their own for COPY, else one
/// that takes pooled connections (the exact statement renews the lease first, holding the policy's
/// row for its whole transaction: two would only wait for each other; SQLite has one writer).
pub async fn restore_writers(db: &Db, plan: &RestorePlan) -> Result<Vec<RestoreWriter>> {
    let Some(copy) = &plan.copy else { return Ok(vec![RestoreWriter { db: db.clone(), bulk: None }]) };
    let mut out = Vec::with_capacity(copy.sessions);
    for _ in 0..copy.sessions {
        let client = db.bulk_session().await?;
        let statements = Statements::prepare(&client, copy).await.map_err(pg_error)?;
        out.push(RestoreWriter { db: db.clone(), bulk: Some(BulkSession { client, statements }) });
    }
    Ok(out)
}

impl RestoreWriter {
    /// Restores segment `b.segment_id` (whose object held `raw_bytes` / `compressed_bytes`) in one
    /// transaction. None when the lease was lost or the segment is no longer committed (nothing
    /// changed then).
    pub async fn restore(
        &mut self,
        plan: &RestorePlan,
        b: &Batch<'_>,
        rows: &SegmentRows,
        raw_bytes: i64,
        compressed_bytes: i64,
    ) -> Result<Option<Restored>> {
        if let (Some(bulk), Some(copy), Decoded::Copy(decoded)) = (&mut self.bulk, &plan.copy, &rows.decoded) {
            match bulk.restore(copy, b, decoded, rows.count, raw_bytes, compressed_bytes).await? {
                Fast::Done(r) => return Ok(Some(r)),
                Fast::Gone => return Ok(None),
                Fast::Exact(why) => {
                    tracing::info!(segment = %b.segment_id, reason = %why, "COPY refused the segment; restoring it the exact way");
                }
            }
        } else if let Decoded::Exact(Some(why)) = &rows.decoded {
            tracing::info!(segment = %b.segment_id, reason = %why, "restoring the segment the exact way");
        }
        let mut conn = self.db.write().await?;
        restore_segment(&mut conn, b, rows, raw_bytes, compressed_bytes).await
    }
}

/// Restores one segment (`b.segment_id`, whose object held `raw_bytes` / `compressed_bytes`) in
/// one transaction the exact way: re-checks the lease, inserts the rows whose key is absent (the
/// table's `restore` statement, or SQLite's per-row statement: [`insert_rows`]), marks the segment
/// restored and counts progress. None when the lease was lost or the segment is no longer
/// committed (nothing changed then). The COPY path ([`BulkSession`]) does the same on its
/// own session.
async fn restore_segment(
    conn: &mut Conn,
    b: &Batch<'_>,
    rows: &SegmentRows,
    raw_bytes: i64,
    compressed_bytes: i64,
) -> Result<Option<Restored>> {
    use diesel::{ExpressionMethods, QueryDsl};
    use diesel_async::RunQueryDsl;
    let started = Instant::now();
    begin(conn).await?;
    let r: Result<Option<Restored>> = async {
        let held = renew_lease(&mut *conn, b.policy_id, b.run_id, b.lease_until).await?;
        let marked = db_run!(conn, {
            use schema::archive_segments as s;
            diesel::update(
                s::table.filter(s::id.eq(b.segment_id)).filter(s::state.eq(SegmentState::Committed.as_str())),
            )
            .set((s::state.eq(SegmentState::Restored.as_str()), s::restored_at.eq(Some(b.now))))
            .execute(conn)
            .await?
        });
        if !held || marked != 1 {
            return Ok(None);
        }
        let inserted = insert_rows(&mut *conn, b.sql, rows).await?;
        let skipped = rows.rows().saturating_sub(inserted);
        let progress = Progress {
            rows: inserted as i64,
            skipped: skipped as i64,
            segments: 1,
            raw: raw_bytes,
            compressed: compressed_bytes,
            txn_ms: started.elapsed().as_millis() as i64,
        };
        let cancel_requested = add_progress(&mut *conn, b.run_id, &progress, b.now).await?;
        Ok(Some(Restored { inserted, skipped, cancel_requested }))
    }
    .await;
    settle(conn, r).await
}

/// The rows of `rows` into the table, inside the caller's transaction (the exact way, or SQLite's
/// per-row statement); how many were inserted.
pub(super) async fn insert_rows(conn: &mut Conn, sql: &TableSql, rows: &SegmentRows) -> Result<usize> {
    if let (Conn::Sqlite(c), Decoded::Values(plan, values)) = (&mut *conn, &rows.decoded) {
        let (plan, values) = (plan.clone(), values.clone());
        // One blocking task for the segment: the connection wrapper would take one per statement.
        return Ok(c
            .spawn_blocking(move |c| {
                values.iter().try_fold(0usize, |n, v| {
                    diesel::RunQueryDsl::execute(RowInsert { parts: &plan.parts, values: v }, c).map(|i| n + i)
                })
            })
            .await?);
    }
    use diesel_async::RunQueryDsl;
    let json = rows.json_array();
    Ok(db_run!(conn, { diesel::sql_query(&sql.restore).bind::<Text, _>(&json).execute(conn).await? }))
}

/// SQLite's per-row insert: its SQL with each value bound as the type `json_extract` would give it.
/// Diesel caches the prepared statement by its SQL and parameter types.
struct RowInsert<'a> {
    parts: &'a [String],
    values: &'a [SqlValue],
}

impl QueryId for RowInsert<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Sqlite> for RowInsert<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> diesel::QueryResult<()> {
        const NULL: Option<&str> = None;
        out.push_sql(&self.parts[0]);
        for (value, part) in self.values.iter().zip(&self.parts[1..]) {
            match value {
                SqlValue::Null => out.push_bind_param::<Nullable<Text>, _>(&NULL)?,
                SqlValue::Int(v) => out.push_bind_param::<BigInt, _>(v)?,
                SqlValue::Real(v) => out.push_bind_param::<Double, _>(v)?,
                SqlValue::Text(v) => out.push_bind_param::<Text, str>(v.as_str())?,
                SqlValue::Blob(v) => out.push_bind_param::<Binary, [u8]>(v.as_slice())?,
            }
            out.push_sql(part);
        }
        Ok(())
    }
}

impl diesel::RunQueryDsl<diesel::SqliteConnection> for RowInsert<'_> {}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: COPY on a session of its own
// ---------------------------------------------------------------------------------------------

struct BulkSession {
    client: tokio_postgres::Client,
    statements: Statements,
}

/// The catalog statements of a restore transaction on the COPY session. They do what the Diesel
/// ones do in `catalog` (`renew_lease`, `add_progress`) and [`restore_segment`] (its
/// compare-and-set of the segment): the same columns, conditions and outcome. Why a copy: Diesel
/// cannot run on this session (diesel-async hides its client), and the segment's rows and its
/// restored mark must commit in one transaction. Change them together.
struct Statements {
    /// `catalog::renew_lease`: extends the lease while the run still holds it.
    renew_lease: Statement,
    /// [`restore_segment`]: committed → restored, or nothing (restored or deleted meanwhile).
    mark_restored: Statement,
    /// `catalog::add_progress`: counts the segment; whether a cancel was requested.
    add_progress: Statement,
    /// `catalog::add_progress`: the longest transaction so far.
    longest_txn: Statement,
    /// The plan's probe.
    probe: Statement,
}

impl Statements {
    async fn prepare(c: &tokio_postgres::Client, plan: &CopyPlan) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Self {
            renew_lease: c
                .prepare("UPDATE strata.archive_policies SET lease_until = $3 WHERE id = $1 AND lease_owner = $2")
                .await?,
            mark_restored: c
                .prepare("UPDATE strata.archive_segments SET state = $3, restored_at = $4 WHERE id = $1 AND state = $2")
                .await?,
            add_progress: c
                .prepare(
                    "UPDATE strata.archive_runs
                        SET rows_done = rows_done + $2, rows_skipped = rows_skipped + $3,
                            segments_done = segments_done + $4, raw_bytes = raw_bytes + $5,
                            compressed_bytes = compressed_bytes + $6, updated_at = $7
                      WHERE id = $1 RETURNING cancel_requested",
                )
                .await?,
            longest_txn: c
                .prepare("UPDATE strata.archive_runs SET longest_txn_ms = $2 WHERE id = $1 AND longest_txn_ms < $2")
                .await?,
            probe: c.prepare(&plan.probe).await?,
        })
    }
}

/// How a COPY attempt ended.
enum Fast {
    Done(Restored),
    /// The lease was lost or the segment is no longer committed; nothing changed.
    Gone,
    /// The data was refused (rolled back): the exact way decides.
    Exact(String),
}

enum Step {
    Done(Restored),
    Gone,
}

impl BulkSession {
    async fn restore(
        &mut self,
        plan: &CopyPlan,
        b: &Batch<'_>,
        rows: &CopyRows,
        count: usize,
        raw_bytes: i64,
        compressed_bytes: i64,
    ) -> Result<Fast> {
        let started = Instant::now();
        let st = &self.statements;
        let tx = self.client.transaction().await.map_err(pg_error)?;
        let r: std::result::Result<Step, tokio_postgres::Error> = async {
            // The segment's row first: it is this segment's alone, so sessions writing other
            // segments never wait for each other here. The lease and the run's row (shared) are
            // written last, just before the commit.
            let (committed, restored) = (SegmentState::Committed.as_str(), SegmentState::Restored.as_str());
            if tx.execute(&st.mark_restored, &[&b.segment_id, &committed, &restored, &b.now]).await? != 1 {
                return Ok(Step::Gone);
            }
            let keys: Vec<&(dyn ToSql + Sync)> = rows.keys.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
            let mut present: Vec<usize> = tx
                .query(&st.probe, &keys)
                .await?
                .iter()
                .map(|r| usize::try_from(r.get::<_, i64>(0) - 1).unwrap_or(usize::MAX))
                .collect();
            present.sort_unstable();
            let kept = rows.kept(&present);
            let inserted = if kept.is_empty() {
                0
            } else {
                let mut sink = pin!(tx.copy_in::<_, Bytes>(&plan.copy).await?);
                for chunk in kept {
                    sink.feed(chunk).await?;
                }
                sink.as_mut().finish().await? as usize
            };
            if tx.execute(&st.renew_lease, &[&b.policy_id, &b.run_id, &b.lease_until]).await? != 1 {
                return Ok(Step::Gone);
            }
            let skipped = count.saturating_sub(inserted);
            let p = Progress {
                rows: inserted as i64,
                skipped: skipped as i64,
                segments: 1,
                raw: raw_bytes,
                compressed: compressed_bytes,
                txn_ms: started.elapsed().as_millis() as i64,
            };
            let cancel = tx
                .query_opt(
                    &st.add_progress,
                    &[&b.run_id, &p.rows, &p.skipped, &p.segments, &p.raw, &p.compressed, &b.now],
                )
                .await?
                .is_none_or(|r| r.get::<_, bool>(0));
            if p.txn_ms > 0 {
                tx.execute(&st.longest_txn, &[&b.run_id, &p.txn_ms]).await?;
            }
            Ok(Step::Done(Restored { inserted, skipped, cancel_requested: cancel }))
        }
        .await;
        match r {
            Ok(Step::Done(done)) => {
                tx.commit().await.map_err(pg_error)?;
                Ok(Fast::Done(done))
            }
            Ok(Step::Gone) => {
                tx.rollback().await.map_err(pg_error)?;
                Ok(Fast::Gone)
            }
            // Data exceptions (22) and integrity violations (23): what the rows are, not the
            // session. Nothing of the attempt stays; the exact way restores the segment or reports
            // the database's own reason.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")) => {
                tx.rollback().await.map_err(pg_error)?;
                Ok(Fast::Exact(e.to_string()))
            }
            Err(e) => {
                // The session may be gone; a rollback that fails changes nothing either.
                let _ = tx.rollback().await;
                Err(pg_error(e))
            }
        }
    }
}

/// A tokio-postgres error as this layer's, classified as Diesel's errors are (the mapping
/// diesel-async applies to the same errors).
pub(crate) fn pg_error(e: tokio_postgres::Error) -> Error {
    use diesel::result::DatabaseErrorKind as K;
    use tokio_postgres::error::SqlState;
    let Some(db) = e.as_db_error().cloned() else {
        let kind = if e.is_closed() { K::ClosedConnection } else { K::UnableToSendCommand };
        return diesel::result::Error::DatabaseError(kind, Box::new(e.to_string())).into();
    };
    let kind = match *db.code() {
        SqlState::UNIQUE_VIOLATION => K::UniqueViolation,
        SqlState::FOREIGN_KEY_VIOLATION => K::ForeignKeyViolation,
        SqlState::RESTRICT_VIOLATION => K::RestrictViolation,
        SqlState::EXCLUSION_VIOLATION => K::ExclusionViolation,
        SqlState::T_R_SERIALIZATION_FAILURE => K::SerializationFailure,
        SqlState::READ_ONLY_SQL_TRANSACTION => K::ReadOnlyTransaction,
        SqlState::NOT_NULL_VIOLATION => K::NotNullViolation,
        SqlState::CHECK_VIOLATION => K::CheckViolation,
        _ => K::Unknown,
    };
    diesel::result::Error::DatabaseError(kind, Box::new(PgErrorInfo(db))).into()
}

struct PgErrorInfo(tokio_postgres::error::DbError);

impl diesel::result::DatabaseErrorInformation for PgErrorInfo {
    fn message(&self) -> &str {
        self.0.message()
    }
    fn details(&self) -> Option<&str> {
        self.0.detail()
    }
    fn hint(&self) -> Option<&str> {
        self.0.hint()
    }
    fn table_name(&self) -> Option<&str> {
        self.0.table()
    }
    fn column_name(&self) -> Option<&str> {
        self.0.column()
    }
    fn constraint_name(&self) -> Option<&str> {
        self.0.constraint()
    }
    fn statement_position(&self) -> Option<i32> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(kind: &str, name: &str, elem: Option<(&str, &str)>) -> PgColumnType {
        let (elem_kind, elem_name) = elem.unwrap_or_default();
        PgColumnType {
            name: "c".into(),
            kind: kind.into(),
            type_name: name.into(),
            elem_kind: elem_kind.into(),
            elem_name: elem_name.into(),
        }
    }

    #[test]
    fn column_types_take_the_forms_the_decoder_knows() {
        assert_eq!(form_of(&ty("b", "int8", None)), Ok(Form::Scalar));
        assert_eq!(form_of(&ty("e", "mood", None)), Ok(Form::Scalar));
        assert_eq!(form_of(&ty("r", "tstzrange", None)), Ok(Form::Scalar));
        assert_eq!(form_of(&ty("b", "jsonb", None)), Ok(Form::Json));
        assert_eq!(form_of(&ty("b", "json", None)), Ok(Form::Json));
        assert_eq!(form_of(&ty("b", "_int4", Some(("b", "int4")))), Ok(Form::Array));
        assert_eq!(form_of(&ty("b", "_text", Some(("b", "text")))), Ok(Form::Array));
        // Composites, arrays of them, of JSON or of domains go the exact way.
        assert!(form_of(&ty("c", "address", None)).is_err());
        assert!(form_of(&ty("b", "_address", Some(("c", "address")))).is_err());
        assert!(form_of(&ty("b", "_jsonb", Some(("b", "jsonb")))).is_err());
        assert!(form_of(&ty("b", "_email", Some(("d", "email")))).is_err());
        assert!(form_of(&ty("p", "record", None)).is_err());
    }
}
