//! PostgreSQL's [`Dialect`]: the table's columns from `pg_attribute`, values cast to the column's
//! type from the JSON parameter, rows locked `FOR UPDATE … SKIP LOCKED` and deleted by `ctid`, and
//! the due rows read in binary for the encoder (`encode`).

use diesel::{
    QueryableByName,
    sql_types::{Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{
    ColumnInfo, Dialect, DueRows, TableSql, TimeKind,
    encode::{self, DocPlan},
    resolve::{Resolved, TableSpec, Unfit},
};
use crate::db::{Error, Result, quote};

/// The JSON parameter every statement takes.
const P: &str = "$1::json";

fn cast(expr: &str, ty: &str) -> String {
    format!("CAST(({expr}) AS {ty})")
}

/// Values taken from the JSON parameter are scalar subqueries: PostgreSQL then evaluates them
/// once per statement (an InitPlan) instead of parsing the parameter again for every row
/// scanned (measured: the per-row cast of the cutoff alone was ~3 % of a run's CPU).
fn once(expr: String) -> String {
    format!("(SELECT {expr})")
}

#[derive(QueryableByName)]
struct PgColumn {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = Bool)]
    generated: bool,
}

impl Dialect for AsyncPgConnection {
    async fn columns(&mut self, spec: &TableSpec<'_>, table: &str) -> Result<Vec<ColumnInfo>, Unfit> {
        let columns: Vec<ColumnInfo> = diesel::sql_query(
            "SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS ty, a.attgenerated <> '' AS generated
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
        )
        .bind::<Text, _>(spec.schema_name)
        .bind::<Text, _>(spec.table_name)
        .load::<PgColumn>(self)
        .await?
        .into_iter()
        .map(|c| ColumnInfo { name: c.name, ty: c.ty, generated: c.generated })
        .collect();
        if columns.is_empty() {
            return Err(Unfit::Invalid(format!("table {table} does not exist")));
        }
        Ok(columns)
    }

    async fn partitioned(&mut self, spec: &TableSpec<'_>) -> Result<bool, Unfit> {
        #[derive(QueryableByName)]
        struct Kind {
            #[diesel(sql_type = Bool)]
            partitioned: bool,
        }
        Ok(diesel::sql_query(
            "SELECT c.relkind = 'p' AS partitioned FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
        )
        .bind::<Text, _>(spec.schema_name)
        .bind::<Text, _>(spec.table_name)
        .get_result::<Kind>(self)
        .await?
        .partitioned)
    }

    fn time_kind(time: &ColumnInfo) -> Option<TimeKind> {
        match time.ty.as_str() {
            "timestamp with time zone" | "timestamp without time zone" | "date" => Some(TimeKind::Timestamp),
            "bigint" | "integer" => Some(TimeKind::UnixSeconds),
            t if t.starts_with("timestamp") => Some(TimeKind::Timestamp),
            _ => None,
        }
    }

    fn can_be_key(column: &ColumnInfo) -> bool {
        !matches!(column.ty.as_str(), "json" | "jsonb" | "xml")
    }

    async fn check_value(&mut self, ty: &str, value: &str) -> std::result::Result<(), String> {
        let check = format!("SELECT CAST($1 AS {ty})");
        diesel::sql_query(&check).bind::<Text, _>(value).execute(self).await.map(|_| ()).map_err(|e| e.to_string())
    }

    fn before_cutoff(tc: &str, time: &ColumnInfo, _kind: TimeKind) -> String {
        format!("{tc} < {}", once(cast(&format!("{P}->>'cutoff'"), &time.ty)))
    }

    fn filter_value(i: usize, ty: &str) -> String {
        once(cast(&format!("{P}->'f'->{i}->>0"), ty))
    }

    fn filter_values(i: usize, ty: &str) -> String {
        format!("SELECT {} FROM json_array_elements_text({P}->'f'->{i}) x", cast("x", ty))
    }

    fn table_sql(r: Resolved<'_>) -> TableSql {
        table_sql(r)
    }

    async fn load_due(&mut self, sql: &TableSql, select: &str, params: &str, out: &mut DueRows) -> Result<()> {
        encode::load_due(self, sql, select, params, out).await
    }

    async fn delete_due(&mut self, sql: &TableSql, rows: &DueRows) -> Result<usize> {
        if rows.by_partition.is_empty() {
            return Ok(diesel::sql_query(&sql.delete_keys).bind::<Text, _>(&rows.targets).execute(self).await?);
        }
        delete_by_partition(self, &rows.by_partition).await
    }
}

/// Deletes a partitioned table's locked rows partition by partition: `DELETE FROM ONLY` the
/// partition each row was read from, by location. One statement over the parent would have to
/// match (partition, location) pairs in every partition — a TID scan of each partition for every
/// location, as many times over as the table has partitions.
///
/// The partitions' names are read here, inside the batch's transaction: their rows are locked, so
/// a rename (which needs an ACCESS EXCLUSIVE lock) waits for this transaction to end.
async fn delete_by_partition(c: &mut AsyncPgConnection, by_partition: &[(u32, String)]) -> Result<usize> {
    #[derive(QueryableByName)]
    struct Partition {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        oid: i64,
        #[diesel(sql_type = Text)]
        name: String,
    }
    let oids = by_partition.iter().map(|(oid, _)| oid.to_string()).collect::<Vec<_>>().join(",");
    let names: Vec<Partition> = diesel::sql_query(
        "SELECT c.oid::int8 AS oid, format('%I.%I', n.nspname, c.relname) AS name
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1::oid[])",
    )
    .bind::<Text, _>(format!("{{{oids}}}"))
    .load(c)
    .await?;
    let mut deleted = 0;
    for (oid, locations) in by_partition {
        let Some(p) = names.iter().find(|p| p.oid == i64::from(*oid)) else {
            return Err(Error::Unsupported(format!("partition {oid} of a batch's rows is gone")));
        };
        // `format('%I.%I')` quoted the name.
        deleted += diesel::sql_query(format!(
            "DELETE FROM ONLY {} WHERE ctid = ANY(CAST((SELECT $1::tid[]) AS tid[]))",
            p.name
        ))
        .bind::<Text, _>(locations)
        .execute(c)
        .await?;
    }
    Ok(deleted)
}

/// The statements of a run: the due rows read in key order and locked, skipping rows another batch
/// holds, so batches can work beside each other.
fn table_sql(r: Resolved<'_>) -> TableSql {
    let Resolved { spec, columns, time, time_kind, keys, partitioned, due } = r;
    let t = format!("{}.{}", quote(spec.schema_name), quote(spec.table_name));
    let tc = format!("t.{}", quote(spec.time_column));
    let p = P;
    let key_cols = keys.iter().map(|k| format!("t.{}", quote(&k.name))).collect::<Vec<_>>().join(", ");
    let key_tuple = format!("({key_cols})");
    let key_of = |name: &str| {
        format!(
            "({})",
            keys.iter()
                .enumerate()
                .map(|(i, k)| cast(&format!("{p}->'{name}'->>{i}"), &k.ty))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let (after, upto) = (key_of("after"), key_of("upto"));
    let ts = match time_kind {
        TimeKind::Timestamp => format!("(extract(epoch FROM {tc}) * 1000000)::int8"),
        TimeKind::UnixSeconds => format!("({tc}::int8 * 1000000)"),
    };
    let values = DocPlan::select_list(&columns, &time.name, partitioned);
    let select = |extra: &str| {
        format!(
            "SELECT {values} FROM {t} t WHERE {due}{extra} ORDER BY {key_cols} LIMIT ({p}->>'limit')::int8
               FOR UPDATE OF t SKIP LOCKED"
        )
    };
    let insert_cols: Vec<String> = columns.iter().filter(|c| !c.generated).map(|c| quote(&c.name)).collect();
    let key_match = keys.iter().map(|k| format!("x.{q} = r.{q}", q = quote(&k.name))).collect::<Vec<_>>().join(" AND ");
    TableSql {
        time_kind,
        select_first: select(""),
        select_after: select(&format!(" AND {key_tuple} > {after}")),
        select_between: Some(select(&format!(" AND {key_tuple} > {after} AND {key_tuple} <= {upto}"))),
        // Backwards along the key, as an index on it is ordered (rows whose key has a NULL are never
        // archived: no cursor passes them).
        last_due_key: Some(format!(
            "SELECT json_build_array({key_cols})::text AS key FROM {t} t
              WHERE {due} AND {not_null} ORDER BY {desc} LIMIT 1",
            not_null =
                keys.iter().map(|k| format!("t.{} IS NOT NULL", quote(&k.name))).collect::<Vec<_>>().join(" AND "),
            desc = keys.iter().map(|k| format!("t.{} DESC", quote(&k.name))).collect::<Vec<_>>().join(", "),
        )),
        // The batch's rows are locked FOR UPDATE, so their ctids are stable until commit: a TID scan
        // deletes them without an index lookup per row (a partitioned table's, partition by
        // partition: `delete_by_partition`). The array goes through a scalar subquery so
        // the planner does not estimate the selectivity of each of its 10 000 elements.
        delete_keys: format!("DELETE FROM {t} WHERE ctid = ANY(CAST((SELECT $1::tid[]) AS tid[]))"),
        purge: format!(
            "DELETE FROM {t} d WHERE ({dk}) IN (SELECT {key_cols} FROM {t} t WHERE {due} ORDER BY {key_cols}
              LIMIT ({p}->>'limit')::int8 FOR UPDATE OF t SKIP LOCKED)",
            dk = keys.iter().map(|k| format!("d.{}", quote(&k.name))).collect::<Vec<_>>().join(", ")
        ),
        plan: format!(
            "SELECT count(*)::int8 AS rows, COALESCE(sum(pg_column_size(t.*)), 0)::int8 AS bytes,
                    min({ts})::int8 AS min_ts, max({ts})::int8 AS max_ts FROM {t} t WHERE {due}"
        ),
        // OVERRIDING SYSTEM VALUE: identity columns GENERATED ALWAYS get their archived values back.
        // The NOT EXISTS makes a restore idempotent even on tables without a unique key.
        restore: format!(
            "INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE
             SELECT {rcols} FROM json_populate_recordset(NULL::{t}, {p}) r
              WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE {key_match})
             ON CONFLICT DO NOTHING",
            cols = insert_cols.join(", "),
            rcols = insert_cols.iter().map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", "),
        ),
        doc: Some(DocPlan::new(&columns, &keys, &t, partitioned)),
        columns,
    }
}
