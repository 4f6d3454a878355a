DROP TABLE strata_alert_notifications;
DROP TABLE strata_alert_events;
DROP TABLE strata_alerts;
DROP TABLE strata_alert_rules;
