DROP TABLE strata.job_runs;
DROP TABLE strata.jobs;
DROP TABLE strata.scheduler_instances;
DROP TABLE strata.scheduler_state;
