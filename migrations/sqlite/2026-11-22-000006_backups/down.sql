DROP TABLE strata_backups;
