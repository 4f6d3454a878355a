DROP INDEX strata.uploads_open_key_idx;
DROP TABLE strata.operation_items;
DROP TABLE strata.operations;
