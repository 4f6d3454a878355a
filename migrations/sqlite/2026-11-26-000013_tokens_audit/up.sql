-- Bearer tokens managed by API (TokenService) and the audit trail of mutating and denied calls.
-- Expand-only: new tables.
CREATE TABLE strata_tokens (
    -- The public part of the secret (`strata_<id>_<secret>`): how a presented token is found.
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- viewer | operator | admin
    role TEXT NOT NULL,
    -- JSON array of the file owners the token is limited to; '[]': not scoped.
    owners TEXT NOT NULL,
    -- Hex SHA-256 of the whole secret; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP,
    revoked_by TEXT
);

-- One row per mutating call and per denied call, written in batches off the call's path.
CREATE TABLE strata_audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The database's time when the call ended.
    occurred_at TIMESTAMP NOT NULL,
    instance_id TEXT NOT NULL,
    -- Token name, certificate rule, `loopback`, or `-` when nobody was recognised.
    caller TEXT NOT NULL,
    -- api_token | config_token | certificate | loopback | none
    auth_method TEXT NOT NULL,
    -- The real client address (from PROXY protocol behind a trusted proxy) and the proxy's.
    client_addr TEXT,
    proxy_addr TEXT,
    -- /strata.v1.Service/Method
    method TEXT NOT NULL,
    -- `field=value` of the request fields the method declares as naming its resource.
    resource TEXT NOT NULL,
    -- gRPC status code name (OK, PERMISSION_DENIED, ...).
    code TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX audit_events_occurred_idx ON strata_audit_events (occurred_at);
CREATE INDEX audit_events_caller_idx ON strata_audit_events (caller, id);
CREATE INDEX audit_events_method_idx ON strata_audit_events (method, id);
