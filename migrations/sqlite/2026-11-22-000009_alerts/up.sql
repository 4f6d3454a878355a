-- Alerts: rules on metrics, alerts with their lifecycle and timeline, and the notification outbox.

CREATE TABLE strata_alert_rules (
    name TEXT PRIMARY KEY,
    -- database_size, table_size, daily_growth, days_until_full, probe_latency, disk_used_percent,
    -- pool_utilization_percent, replica_lag, default_partition_rows, failed_job.
    metric TEXT NOT NULL,
    -- Table selector for table metrics ('' = every table).
    table_name TEXT NOT NULL,
    -- above (value >= threshold fires) or below (value <= threshold fires).
    comparison TEXT NOT NULL,
    warning DOUBLE,
    critical DOUBLE,
    -- The condition must hold this long before the alert fires (it is pending meanwhile).
    for_ms BIGINT NOT NULL,
    -- Capacity for days_until_full (0: the disk's).
    capacity_bytes BIGINT NOT NULL,
    -- JSON object of strings, copied onto every alert of the rule.
    labels TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    builtin BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

CREATE TABLE strata_alerts (
    id TEXT PRIMARY KEY,
    rule_name TEXT NOT NULL,
    -- Canonical JSON of the labels: with rule_name, what makes an alert one and the same.
    labels_key TEXT NOT NULL,
    -- pending, firing, acknowledged, resolved.
    state TEXT NOT NULL,
    -- warning or critical.
    severity TEXT NOT NULL,
    value DOUBLE NOT NULL,
    threshold DOUBLE NOT NULL,
    summary TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    fired_at TIMESTAMP,
    acknowledged_at TIMESTAMP,
    -- Who acknowledged it; their note is on the 'acknowledged' event.
    acknowledged_by TEXT,
    resolved_at TIMESTAMP,
    resolved_by TEXT,
    updated_at TIMESTAMP NOT NULL
);
-- One open alert per rule and labels (deduplication).
CREATE UNIQUE INDEX strata_alerts_one_open ON strata_alerts (rule_name, labels_key) WHERE state <> 'resolved';
CREATE INDEX strata_alerts_state ON strata_alerts (state, updated_at);

-- Every change of every alert, in order (WatchAlerts follows this table).
CREATE TABLE strata_alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    at TIMESTAMP NOT NULL,
    -- firing, escalated, deescalated, acknowledged, resolved, notified, notify_failed.
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    severity TEXT NOT NULL,
    value DOUBLE,
    actor TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX strata_alert_events_alert ON strata_alert_events (alert_id, id);

-- Notifications to deliver, written in the transaction of the event they announce; a delivery
-- loop sends them with retries and records the outcome.
CREATE TABLE strata_alert_notifications (
    id TEXT PRIMARY KEY,
    alert_id TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    -- webhook or email.
    channel TEXT NOT NULL,
    -- URL or recipients.
    target TEXT NOT NULL,
    -- pending, sent, failed.
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_until TIMESTAMP,
    last_error TEXT,
    payload TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP
);
CREATE INDEX strata_alert_notifications_due ON strata_alert_notifications (state, next_attempt_at);
CREATE INDEX strata_alert_notifications_alert ON strata_alert_notifications (alert_id);
