-- Which users each running import wrote, as ranges of rowids, instead of an index on
-- (import_key, source_row): a failed import deletes its users by these ranges. One writer
-- at a time gives each batch consecutive rowids, and an index maintained for every inserted
-- row cost more than these few rows per batch (see the README's Performance section).
CREATE TABLE import_user_ranges (
    import_key   INTEGER NOT NULL,
    first_rowid  INTEGER NOT NULL,
    last_rowid   INTEGER NOT NULL
);
CREATE INDEX import_user_ranges_import ON import_user_ranges (import_key);
DROP INDEX users_import_row;
