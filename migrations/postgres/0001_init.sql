-- Imports, their row errors, and the users they create, shared by every replica.

CREATE TABLE imports (
    -- Internal handle: cheaper than (account_id, import_id) in the other tables, and it orders
    -- the Imports list by creation.
    import_key          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id          TEXT        NOT NULL,
    import_id           TEXT        NOT NULL,
    type                TEXT        NOT NULL,
    filename            TEXT        NOT NULL,
    status              TEXT        NOT NULL,
    bytes_received      BIGINT      NOT NULL DEFAULT 0,
    rows_processed      BIGINT      NOT NULL DEFAULT 0,
    rows_imported       BIGINT      NOT NULL DEFAULT 0,
    rows_failed         BIGINT      NOT NULL DEFAULT 0,
    row_errors_omitted  BIGINT      NOT NULL DEFAULT 0,
    encoding            TEXT,
    delimiter           TEXT,
    error_message       TEXT        NOT NULL DEFAULT '',
    create_time         TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_time         TIMESTAMPTZ NOT NULL DEFAULT now(),
    complete_time       TIMESTAMPTZ,
    -- The replica running the import (it holds an advisory lock on this number while it
    -- lives) and when it last said so: an import whose replica is gone is ended by any other.
    owner               BIGINT,
    heartbeat_time      TIMESTAMPTZ,
    UNIQUE (account_id, import_id)
);

CREATE INDEX imports_account_key ON imports (account_id, import_key);
CREATE INDEX imports_processing ON imports (heartbeat_time) WHERE status = 'PROCESSING';

CREATE TABLE import_row_errors (
    import_key   BIGINT NOT NULL REFERENCES imports (import_key) ON DELETE CASCADE,
    -- File order: errors are numbered as they are found, batch after batch.
    seq          BIGINT NOT NULL,
    row_number   BIGINT NOT NULL,
    column_name  TEXT   NOT NULL,
    code         TEXT   NOT NULL,
    message      TEXT   NOT NULL,
    value        TEXT   NOT NULL,
    PRIMARY KEY (import_key, seq)
);

CREATE TABLE users (
    user_id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   TEXT        NOT NULL,
    -- Trimmed and lower-cased: uniqueness per account ignores case.
    email        TEXT        NOT NULL,
    first_name   TEXT        NOT NULL,
    last_name    TEXT        NOT NULL,
    role         TEXT        NOT NULL,
    job_title    TEXT        NOT NULL,
    external_id  TEXT,
    -- The import that created the user and the row it came from: a duplicate later in the same
    -- file names that row, and a failed import deletes its users by this key.
    import_key   BIGINT      NOT NULL,
    source_row   BIGINT      NOT NULL,
    create_time  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_account_email ON users (account_id, email);
CREATE UNIQUE INDEX users_account_external_id ON users (account_id, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX users_import_row ON users (import_key, source_row);
