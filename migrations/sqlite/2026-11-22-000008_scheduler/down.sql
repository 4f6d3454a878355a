DROP TABLE strata_job_runs;
DROP TABLE strata_jobs;
DROP TABLE strata_scheduler_instances;
DROP TABLE strata_scheduler_state;
