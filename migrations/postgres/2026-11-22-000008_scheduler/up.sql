-- The scheduler: cluster-wide on/off switch, live instances, jobs and their runs.

-- One row (id = 1): whether scheduled jobs run at all (StartScheduler / StopScheduler).
CREATE TABLE strata.scheduler_state (
    id BIGINT PRIMARY KEY,
    running BOOLEAN NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TIMESTAMP NOT NULL
);
INSERT INTO strata.scheduler_state (id, running, changed_by, changed_at) VALUES (1, TRUE, 'initial', CURRENT_TIMESTAMP);

-- strata instances running the scheduler loop, with their last heartbeat.
CREATE TABLE strata.scheduler_instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    last_seen TIMESTAMP NOT NULL
);

CREATE TABLE strata.jobs (
    name TEXT PRIMARY KEY,
    -- metrics_sample, upload_expiry, archive, retention, maintenance, partition_premake, backup,
    -- blob_migration, alert_evaluation.
    kind TEXT NOT NULL,
    -- Policy name or table, depending on kind ('' when none).
    target TEXT NOT NULL,
    -- Kind-specific options, a JSON object of strings.
    options TEXT NOT NULL,
    -- Cron expression (5 fields, or 6 with seconds first) evaluated in time_zone (IANA name).
    schedule TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    -- 0: no timeout.
    timeout_ms BIGINT NOT NULL,
    builtin BOOLEAN NOT NULL,
    -- The next occurrence not yet claimed by any instance (UTC). Claiming it moves it forward in
    -- the same transaction that records the run.
    next_due TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE strata.job_runs (
    id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    -- The occurrence this run is for (UTC); the request time for manual runs.
    scheduled_for TIMESTAMP NOT NULL,
    -- schedule, manual, or missed (occurrences skipped while nothing could run them).
    run_trigger TEXT NOT NULL,
    -- running, succeeded, failed, cancelled, timed_out, missed.
    state TEXT NOT NULL,
    -- Instance running it and until when its lease holds; another instance takes a running run
    -- over once the lease has lapsed.
    owner TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    lease_until TIMESTAMP,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    message TEXT NOT NULL,
    error TEXT
);
-- Exactly once: one run per scheduled occurrence, whichever instance claims it.
CREATE UNIQUE INDEX job_runs_once ON strata.job_runs (job_name, scheduled_for) WHERE run_trigger = 'schedule';
-- A job never overlaps itself: at most one running run per job.
CREATE UNIQUE INDEX job_runs_one_running ON strata.job_runs (job_name) WHERE state = 'running';
CREATE INDEX job_runs_job_started ON strata.job_runs (job_name, started_at);
