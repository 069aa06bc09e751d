-- The fix-up file holds every failed row, each with its reasons beside its cells: the cap on
-- stored row errors (--max-stored-row-errors) no longer cuts it short. Rows kept before this
-- take their reasons from the row errors that were stored for them.
ALTER TABLE import_failed_rows ADD COLUMN errors TEXT NOT NULL DEFAULT '';

UPDATE import_failed_rows f SET errors = coalesce((
    SELECT string_agg(
        CASE WHEN e.column_name = '' THEN 'row' ELSE e.column_name END
            || ' ' || e.code || ': ' || e.message,
        '; ' ORDER BY e.seq)
    FROM import_row_errors e
    WHERE e.import_key = f.import_key AND e.row_number = f.row_number), '');
