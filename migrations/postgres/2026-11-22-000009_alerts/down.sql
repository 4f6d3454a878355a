DROP TABLE strata.alert_notifications;
DROP TABLE strata.alert_events;
DROP TABLE strata.alerts;
DROP TABLE strata.alert_rules;
