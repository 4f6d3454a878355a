DROP TABLE strata.audit_events;
DROP TABLE strata.tokens;
