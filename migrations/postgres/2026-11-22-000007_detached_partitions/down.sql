DROP TABLE strata.detached_partitions;
