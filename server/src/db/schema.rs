//! strata's own catalog tables, declared once and expanded into one Diesel module per backend:
//! `pg` (tables in the `strata` schema) and `sqlite` (tables named `strata_*` in the main database).
//! The declarations must match `migrations/postgres` and `migrations/sqlite`: the tests
//! `catalog_matches_migrations_on_*` check column names, types, nullability, primary keys and
//! [`UNIQUE_INDEXES`] against both live databases.

/// One catalog table as Diesel sees it.
#[derive(Debug, Clone, Copy)]
pub struct CatalogTable {
    /// Name on PostgreSQL (in the `strata` schema).
    pub name: &'static str,
    /// Name on SQLite.
    pub sqlite_name: &'static str,
    /// Primary key columns, in order.
    pub primary_key: &'static [&'static str],
    /// Columns in order, each with its Diesel SQL type as written above (`Nullable < Text >`).
    pub columns: &'static [(&'static str, &'static str)],
}

/// A unique index that a claim or an exactly-once guarantee relies on: the second writer's insert
/// fails on it (and `db/` turns that into "busy" / "exists already") instead of duplicating work.
#[derive(Debug, Clone, Copy)]
pub struct UniqueIndex {
    /// Table (PostgreSQL name; the SQLite table is `strata_` + this).
    pub table: &'static str,
    /// Indexed columns, in order.
    pub columns: &'static [&'static str],
    /// The partial index's condition as written in the migrations; None for a full index.
    pub predicate: Option<&'static str>,
    /// What breaks without it.
    pub guards: &'static str,
}

/// The unique indexes strata's correctness depends on, checked against both migrated databases.
pub const UNIQUE_INDEXES: &[UniqueIndex] = &[
    UniqueIndex {
        table: "job_runs",
        columns: &["job_name", "scheduled_for"],
        predicate: Some("run_trigger = 'schedule'"),
        guards: "one run per scheduled occurrence across instances",
    },
    UniqueIndex {
        table: "job_runs",
        columns: &["job_name"],
        predicate: Some("state = 'running'"),
        guards: "at most one running run per job",
    },
    UniqueIndex {
        table: "alerts",
        columns: &["rule_name", "labels_key"],
        predicate: Some("state <> 'resolved'"),
        guards: "one open alert per rule and series",
    },
    UniqueIndex {
        table: "backups",
        columns: &["state"],
        predicate: Some("state = 'running'"),
        guards: "one backup at a time across instances",
    },
    UniqueIndex { table: "blobs", columns: &["object_key"], predicate: None, guards: "one blob per stored object" },
    UniqueIndex {
        table: "blob_migrations",
        columns: &["schema_name", "table_name", "blob_column"],
        predicate: Some("state = 'running'"),
        guards: "one running migration (and runner) per blob column across instances",
    },
    UniqueIndex {
        table: "operations",
        columns: &["scope"],
        predicate: Some("state = 'running'"),
        guards: "one running operation per scope (maintenance, reconcile, rescue of a table) across instances",
    },
    UniqueIndex {
        table: "archive_policies",
        columns: &["name"],
        predicate: None,
        guards: "policy names resolve to one policy",
    },
];

macro_rules! catalog {
    (
        joins { $($child:ident -> $parent:ident ($fk:ident);)* }
        $(
        $table:ident ($($pk:ident),+) sqlite $sqlite_name:tt {
            $($col:ident -> [$($ty:tt)+],)+
        }
    )+) => {
        /// Catalog tables on PostgreSQL (`strata.*`).
        pub mod pg {
            $(
                diesel::table! {
                    strata.$table ($($pk),+) {
                        $($col -> $($ty)+,)+
                    }
                }
            )+
            $(diesel::joinable!($child -> $parent ($fk));)*
            diesel::allow_tables_to_appear_in_same_query!($($table),+);
        }

        /// Catalog tables on SQLite (`strata_*`).
        pub mod sqlite {
            $(
                diesel::table! {
                    #[sql_name = $sqlite_name]
                    $table ($($pk),+) {
                        $($col -> $($ty)+,)+
                    }
                }
            )+
            $(diesel::joinable!($child -> $parent ($fk));)*
            diesel::allow_tables_to_appear_in_same_query!($($table),+);
        }

        /// Every catalog table as declared here, for the schema check in tests.
        pub const CATALOG: &[CatalogTable] = &[
            $(CatalogTable {
                name: stringify!($table),
                sqlite_name: $sqlite_name,
                primary_key: &[$(stringify!($pk)),+],
                columns: &[$((stringify!($col), stringify!($($ty)+))),+],
            },)+
        ];
    };
}

catalog! {
    joins {
        snapshot_tables -> snapshots (snapshot_id);
        files -> blobs (blake3);
        archive_runs -> archive_policies (policy_id);
        archive_segments -> archive_policies (policy_id);
    }
    snapshots (id) sqlite "strata_snapshots" {
        id -> [BigInt],
        taken_at -> [Timestamp],
        database_size_bytes -> [BigInt],
    }
    snapshot_tables (snapshot_id, schema_name, table_name) sqlite "strata_snapshot_tables" {
        snapshot_id -> [BigInt],
        schema_name -> [Text],
        table_name -> [Text],
        total_size_bytes -> [BigInt],
        estimated_rows -> [BigInt],
        dead_rows -> [Nullable<BigInt>],
    }
    blobs (blake3) sqlite "strata_blobs" {
        blake3 -> [Text],
        object_key -> [Text],
        size_bytes -> [BigInt],
        ref_count -> [BigInt],
        created_at -> [Timestamp],
        lost_at -> [Nullable<Timestamp>],
    }
    files (id) sqlite "strata_files" {
        id -> [Text],
        name -> [Text],
        content_type -> [Text],
        owner -> [Text],
        size_bytes -> [BigInt],
        blake3 -> [Text],
        sha256 -> [Nullable<Text>],
        metadata -> [Text],
        created_at -> [Timestamp],
    }
    uploads (id) sqlite "strata_uploads" {
        id -> [Text],
        name -> [Text],
        content_type -> [Text],
        owner -> [Text],
        declared_size -> [Nullable<BigInt>],
        declared_sha256 -> [Nullable<Text>],
        metadata -> [Text],
        object_key -> [Text],
        writer_token -> [Text],
        committed_offset -> [BigInt],
        state -> [Text],
        error -> [Nullable<Text>],
        file_id -> [Nullable<Text>],
        created_at -> [Timestamp],
        updated_at -> [Timestamp],
        expires_at -> [Timestamp],
        generation -> [BigInt],
        writer -> [Text],
        lease_until -> [Nullable<Timestamp>],
        store_state -> [Text],
        hash_state -> [Nullable<Binary>],
    }
    blob_migrations (id) sqlite "strata_blob_migrations" {
        id -> [Text],
        schema_name -> [Text],
        table_name -> [Text],
        key_column -> [Text],
        blob_column -> [Text],
        reference_column -> [Text],
        encoding -> [Text],
        batch_size -> [BigInt],
        owner -> [Text],
        content_type -> [Text],
        state -> [Text],
        rows_done -> [BigInt],
        bytes_done -> [BigInt],
        error -> [Nullable<Text>],
        created_at -> [Timestamp],
        updated_at -> [Timestamp],
        runner -> [Nullable<Text>],
        lease_until -> [Nullable<Timestamp>],
    }
    archive_policies (id) sqlite "strata_archive_policies" {
        id -> [Text],
        name -> [Text],
        schema_name -> [Text],
        table_name -> [Text],
        time_column -> [Text],
        key_columns -> [Text],
        archive_after_secs -> [BigInt],
        delete_after_secs -> [Nullable<BigInt>],
        filters -> [Text],
        batch_size -> [BigInt],
        mode -> [Text],
        lease_owner -> [Nullable<Text>],
        lease_until -> [Nullable<Timestamp>],
        created_at -> [Timestamp],
        updated_at -> [Timestamp],
    }
    archive_runs (id) sqlite "strata_archive_runs" {
        id -> [Text],
        policy_id -> [Text],
        kind -> [Text],
        state -> [Text],
        cutoff -> [Nullable<Timestamp>],
        rows_done -> [BigInt],
        rows_skipped -> [BigInt],
        segments_done -> [BigInt],
        raw_bytes -> [BigInt],
        compressed_bytes -> [BigInt],
        longest_txn_ms -> [BigInt],
        cancel_requested -> [Bool],
        error -> [Nullable<Text>],
        started_at -> [Timestamp],
        updated_at -> [Timestamp],
        finished_at -> [Nullable<Timestamp>],
    }
    archive_segments (id) sqlite "strata_archive_segments" {
        id -> [Text],
        policy_id -> [Text],
        run_id -> [Text],
        object_key -> [Text],
        state -> [Text],
        row_count -> [BigInt],
        raw_bytes -> [BigInt],
        compressed_bytes -> [BigInt],
        sha256 -> [Text],
        first_key -> [Text],
        last_key -> [Text],
        min_time -> [Nullable<Timestamp>],
        max_time -> [Nullable<Timestamp>],
        column_list -> [Text],
        created_at -> [Timestamp],
        restored_at -> [Nullable<Timestamp>],
    }
    backups (id) sqlite "strata_backups" {
        id -> [Text],
        format -> [Text],
        state -> [Text],
        object_key -> [Text],
        size_bytes -> [BigInt],
        sha256 -> [Text],
        verification -> [Text],
        error -> [Nullable<Text>],
        started_at -> [Timestamp],
        updated_at -> [Timestamp],
        finished_at -> [Nullable<Timestamp>],
    }
    detached_partitions (policy_id, schema_name, table_name) sqlite "strata_detached_partitions" {
        policy_id -> [Text],
        schema_name -> [Text],
        table_name -> [Text],
        detached_at -> [Timestamp],
    }
    scheduler_state (id) sqlite "strata_scheduler_state" {
        id -> [BigInt],
        running -> [Bool],
        changed_by -> [Text],
        changed_at -> [Timestamp],
    }
    scheduler_instances (id) sqlite "strata_scheduler_instances" {
        id -> [Text],
        host -> [Text],
        pid -> [BigInt],
        started_at -> [Timestamp],
        last_seen -> [Timestamp],
    }
    jobs (name) sqlite "strata_jobs" {
        name -> [Text],
        kind -> [Text],
        target -> [Text],
        options -> [Text],
        schedule -> [Text],
        time_zone -> [Text],
        enabled -> [Bool],
        timeout_ms -> [BigInt],
        builtin -> [Bool],
        next_due -> [Nullable<Timestamp>],
        created_at -> [Timestamp],
        updated_at -> [Timestamp],
    }
    job_runs (id) sqlite "strata_job_runs" {
        id -> [Text],
        job_name -> [Text],
        scheduled_for -> [Timestamp],
        run_trigger -> [Text],
        state -> [Text],
        owner -> [Text],
        attempt -> [BigInt],
        lease_until -> [Nullable<Timestamp>],
        started_at -> [Timestamp],
        finished_at -> [Nullable<Timestamp>],
        message -> [Text],
        error -> [Nullable<Text>],
    }
    alert_rules (name) sqlite "strata_alert_rules" {
        name -> [Text],
        metric -> [Text],
        table_name -> [Text],
        comparison -> [Text],
        warning -> [Nullable<Double>],
        critical -> [Nullable<Double>],
        for_ms -> [BigInt],
        capacity_bytes -> [BigInt],
        labels -> [Text],
        enabled -> [Bool],
        builtin -> [Bool],
        created_at -> [Timestamp],
        updated_at -> [Timestamp],
    }
    alerts (id) sqlite "strata_alerts" {
        id -> [Text],
        rule_name -> [Text],
        labels_key -> [Text],
        state -> [Text],
        severity -> [Text],
        value -> [Double],
        threshold -> [Double],
        summary -> [Text],
        started_at -> [Timestamp],
        fired_at -> [Nullable<Timestamp>],
        acknowledged_at -> [Nullable<Timestamp>],
        acknowledged_by -> [Nullable<Text>],
        resolved_at -> [Nullable<Timestamp>],
        resolved_by -> [Nullable<Text>],
        updated_at -> [Timestamp],
    }
    alert_events (id) sqlite "strata_alert_events" {
        id -> [BigInt],
        alert_id -> [Text],
        at -> [Timestamp],
        kind -> [Text],
        state -> [Text],
        severity -> [Text],
        value -> [Nullable<Double>],
        actor -> [Text],
        note -> [Text],
    }
    alert_notifications (id) sqlite "strata_alert_notifications" {
        id -> [Text],
        alert_id -> [Text],
        event_id -> [BigInt],
        channel -> [Text],
        target -> [Text],
        state -> [Text],
        attempts -> [BigInt],
        next_attempt_at -> [Timestamp],
        lease_until -> [Nullable<Timestamp>],
        last_error -> [Nullable<Text>],
        payload -> [Text],
        created_at -> [Timestamp],
        sent_at -> [Nullable<Timestamp>],
        lease_owner -> [Nullable<Text>],
    }
    tokens (id) sqlite "strata_tokens" {
        id -> [Text],
        name -> [Text],
        role -> [Text],
        owners -> [Text],
        secret_sha256 -> [Text],
        created_by -> [Text],
        created_at -> [Timestamp],
        expires_at -> [Nullable<Timestamp>],
        last_used_at -> [Nullable<Timestamp>],
        revoked_at -> [Nullable<Timestamp>],
        revoked_by -> [Nullable<Text>],
    }
    audit_events (id) sqlite "strata_audit_events" {
        id -> [BigInt],
        occurred_at -> [Timestamp],
        instance_id -> [Text],
        caller -> [Text],
        auth_method -> [Text],
        client_addr -> [Nullable<Text>],
        proxy_addr -> [Nullable<Text>],
        method -> [Text],
        resource -> [Text],
        code -> [Text],
        request_id -> [Nullable<Text>],
    }
    operations (id) sqlite "strata_operations" {
        id -> [Text],
        kind -> [Text],
        scope -> [Text],
        state -> [Text],
        request -> [Text],
        target -> [Text],
        phase -> [Text],
        done -> [BigInt],
        total -> [BigInt],
        progress -> [Text],
        items -> [BigInt],
        runner -> [Nullable<Text>],
        lease_until -> [Nullable<Timestamp>],
        cancel_requested -> [Bool],
        error -> [Nullable<Text>],
        started_at -> [Timestamp],
        updated_at -> [Timestamp],
        finished_at -> [Nullable<Timestamp>],
    }
    operation_items (operation_id, seq) sqlite "strata_operation_items" {
        operation_id -> [Text],
        seq -> [BigInt],
        kind -> [Text],
        value -> [Text],
        detail -> [Text],
    }
    catalog_info (id) sqlite "strata_catalog_info" {
        id -> [BigInt],
        compat_level -> [BigInt],
    }
}
