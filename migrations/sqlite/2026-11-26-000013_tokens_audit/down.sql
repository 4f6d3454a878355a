DROP TABLE strata_audit_events;
DROP TABLE strata_tokens;
