-- Long operations (maintenance, reconciliation, rescue of default-partition rows) run in the
-- background as records any instance reads, cancels, and takes over when the instance running one
-- stops renewing its lease. Expand-only: new tables.
CREATE TABLE strata_operations (
    id TEXT PRIMARY KEY,
    -- maintenance | reconcile | rescue
    kind TEXT NOT NULL,
    -- What the operation holds alone while it runs ("reconcile", "rescue:public.events", ...).
    scope TEXT NOT NULL,
    -- running | succeeded | failed | cancelled
    state TEXT NOT NULL,
    -- The request, as JSON: what a taking-over instance continues.
    request TEXT NOT NULL,
    -- What it works on, for people ("public.events", "blobs/", "all tables").
    target TEXT NOT NULL,
    phase TEXT NOT NULL,
    done BIGINT NOT NULL,
    total BIGINT NOT NULL,
    -- The kind's counters and resume point, as JSON; written with every recorded step.
    progress TEXT NOT NULL,
    -- Items recorded in operation_items (orphan keys, tables done, ...).
    items BIGINT NOT NULL,
    runner TEXT,
    lease_until TIMESTAMP,
    cancel_requested BOOLEAN NOT NULL,
    error TEXT,
    started_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);
-- One running operation per scope across the fleet.
CREATE UNIQUE INDEX operations_one_running ON strata_operations (scope) WHERE state = 'running';
CREATE INDEX operations_kind_id_idx ON strata_operations (kind, id);

-- An operation's results too many for one message, paged by seq.
CREATE TABLE strata_operation_items (
    operation_id TEXT NOT NULL REFERENCES strata_operations (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    -- Kind-specific JSON ('' when none).
    detail TEXT NOT NULL,
    PRIMARY KEY (operation_id, seq)
);

-- Reconciliation walks open uploads' keys in ranges beside the listing.
CREATE INDEX uploads_open_key_idx ON strata_uploads (object_key) WHERE state = 'open';
