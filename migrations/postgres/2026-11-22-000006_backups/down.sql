DROP TABLE strata.backups;
