-- Dry runs, conflict policies, cancel, revert, the error report and the users list.

ALTER TABLE imports
    ADD COLUMN validate_only BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN on_conflict TEXT NOT NULL DEFAULT 'ERROR',
    ADD COLUMN rows_skipped BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN rows_updated BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN retry_of_import_id TEXT,
    ADD COLUMN revert_time TIMESTAMPTZ,
    ADD COLUMN revert_note TEXT NOT NULL DEFAULT '',
    -- Set by CancelImport on any replica; the uploading one ends the import.
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;

-- The last change of a user (NULL: as created), and the UPDATE import that made it: a revert
-- keeps the users another import has updated since.
ALTER TABLE users
    ADD COLUMN update_time TIMESTAMPTZ,
    ADD COLUMN updated_by BIGINT;

-- The values a running UPDATE import replaced, put back if it fails or is cancelled.
CREATE TABLE import_user_updates (
    import_key   BIGINT      NOT NULL,
    account_id   TEXT COLLATE "C" NOT NULL,
    email        TEXT COLLATE "C" NOT NULL,
    first_name   TEXT        NOT NULL,
    last_name    TEXT        NOT NULL,
    role         TEXT        NOT NULL,
    job_title    TEXT        NOT NULL,
    external_id  TEXT COLLATE "C",
    update_time  TIMESTAMPTZ,
    updated_by   BIGINT
);
CREATE INDEX import_user_updates_import ON import_user_updates (import_key);

-- The values the rows of a dry run or of a SKIP/UPDATE import hold in their file, for
-- DUPLICATE_IN_FILE: such rows are not (all) in the users table. Removed when it ends.
CREATE TABLE import_file_keys (
    import_key   BIGINT NOT NULL,
    email        TEXT COLLATE "C" NOT NULL,
    external_id  TEXT COLLATE "C",
    source_row   BIGINT NOT NULL,
    -- An external id an update took from its user (email): free for the rows after it, although
    -- a dry run leaves the users table as it is.
    released_external_id TEXT COLLATE "C"
);
CREATE UNIQUE INDEX import_file_keys_email ON import_file_keys (import_key, email);
CREATE UNIQUE INDEX import_file_keys_external_id ON import_file_keys (import_key, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX import_file_keys_released ON import_file_keys (import_key, released_external_id)
    WHERE released_external_id IS NOT NULL;

-- The cells of failed rows, for the error report; within the cap on stored row errors.
CREATE TABLE import_failed_rows (
    import_key   BIGINT NOT NULL REFERENCES imports (import_key) ON DELETE CASCADE,
    row_number   BIGINT NOT NULL,
    email        TEXT   NOT NULL,
    first_name   TEXT   NOT NULL,
    last_name    TEXT   NOT NULL,
    role         TEXT   NOT NULL,
    job_title    TEXT   NOT NULL,
    external_id  TEXT   NOT NULL,
    PRIMARY KEY (import_key, row_number)
);

-- Changes of stored data that SQL alone cannot make, done once by the server at start (for
-- instance, email keys in their IDNA and NFC forms: src/store/rekey.rs).
CREATE TABLE data_migrations (
    name TEXT PRIMARY KEY
);
