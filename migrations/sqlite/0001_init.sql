-- Imports, their row errors, and the users they create.
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE imports (
    -- Internal handle: a small integer is cheaper than (account_id, import_id) in the
    -- users and row error tables; it also orders imports by creation.
    import_key      INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      TEXT    NOT NULL,
    import_id       TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    filename        TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    bytes_received  INTEGER NOT NULL DEFAULT 0,
    rows_processed  INTEGER NOT NULL DEFAULT 0,
    rows_imported   INTEGER NOT NULL DEFAULT 0,
    rows_failed     INTEGER NOT NULL DEFAULT 0,
    error_message   TEXT    NOT NULL DEFAULT '',
    create_time     INTEGER NOT NULL,
    update_time     INTEGER NOT NULL,
    complete_time   INTEGER,
    UNIQUE (account_id, import_id)
);

-- The Imports list: one account's imports, newest first.
CREATE INDEX imports_account_key ON imports (account_id, import_key);
-- Recovery looks for imports left PROCESSING.
CREATE INDEX imports_processing ON imports (status) WHERE status = 'PROCESSING';

CREATE TABLE import_row_errors (
    import_key   INTEGER NOT NULL REFERENCES imports (import_key) ON DELETE CASCADE,
    -- File order: errors are numbered as they are found, batch after batch.
    seq          INTEGER NOT NULL,
    row_number   INTEGER NOT NULL,
    column_name  TEXT    NOT NULL,
    code         TEXT    NOT NULL,
    message      TEXT    NOT NULL,
    value        TEXT    NOT NULL,
    PRIMARY KEY (import_key, seq)
) WITHOUT ROWID;

CREATE TABLE users (
    user_id      INTEGER PRIMARY KEY,
    account_id   TEXT    NOT NULL,
    -- Trimmed and lower-cased: uniqueness per account ignores case.
    email        TEXT    NOT NULL,
    first_name   TEXT    NOT NULL,
    last_name    TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    job_title    TEXT    NOT NULL,
    external_id  TEXT,
    -- The import that created the user, and the row it came from: a duplicate later in the
    -- same file names that row, and a failed import deletes its users by this key.
    import_key   INTEGER NOT NULL,
    source_row   INTEGER NOT NULL,
    create_time  INTEGER NOT NULL
);

CREATE UNIQUE INDEX users_account_email ON users (account_id, email);
CREATE UNIQUE INDEX users_account_external_id ON users (account_id, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX users_import_row ON users (import_key, source_row);
