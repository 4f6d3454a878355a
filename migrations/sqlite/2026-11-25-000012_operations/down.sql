DROP INDEX uploads_open_key_idx;
DROP TABLE strata_operation_items;
DROP TABLE strata_operations;
