-- Each account gets a small integer key, and the users table holds it in place of the account's
-- text. Both unique indexes of users lead with the account, so every insert's and every
-- lookup's descent compared the account's text (equal for every row of an import) before the
-- value; an integer compares at once and makes each index entry smaller. Measured with the
-- bench's three 199 MiB files staged and inserted in one statement each (bench/sqlite_floor.sh):
-- 13 - 16% less time. Other tables keep the account's text: they are written once per import
-- or per batch, and what clients send and read is the text.
CREATE TABLE accounts (
    account_key  INTEGER PRIMARY KEY,
    account_id   TEXT    NOT NULL UNIQUE
);

INSERT INTO accounts (account_id)
    SELECT account_id FROM imports UNION SELECT account_id FROM users ORDER BY 1;

-- SQLite cannot change a column's type in place: the table is built again, each user keeping
-- its rowid (user_id), which the import_user_ranges of its import point at.
CREATE TABLE users_by_key (
    user_id      INTEGER PRIMARY KEY,
    account_key  INTEGER NOT NULL,
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
    create_time  INTEGER NOT NULL,
    update_time  INTEGER,
    updated_by   INTEGER,
    invitation_state TEXT,
    invite_time  INTEGER,
    invitations_sent INTEGER,
    old_first_name TEXT,
    old_last_name TEXT,
    old_role     TEXT,
    old_job_title TEXT,
    old_external_id TEXT,
    old_update_time INTEGER,
    old_updated_by INTEGER
);

INSERT INTO users_by_key (user_id, account_key, email, first_name, last_name, role, job_title,
    external_id, import_key, source_row, create_time, update_time, updated_by,
    invitation_state, invite_time, invitations_sent, old_first_name, old_last_name, old_role,
    old_job_title, old_external_id, old_update_time, old_updated_by)
SELECT u.user_id, a.account_key, u.email, u.first_name, u.last_name, u.role, u.job_title,
    u.external_id, u.import_key, u.source_row, u.create_time, u.update_time, u.updated_by,
    u.invitation_state, u.invite_time, u.invitations_sent, u.old_first_name, u.old_last_name,
    u.old_role, u.old_job_title, u.old_external_id, u.old_update_time, u.old_updated_by
FROM users AS u JOIN accounts AS a ON a.account_id = u.account_id
ORDER BY u.user_id;

DROP TABLE users;
ALTER TABLE users_by_key RENAME TO users;

CREATE UNIQUE INDEX users_account_email ON users (account_key, email);
CREATE UNIQUE INDEX users_account_external_id ON users (account_key, external_id)
    WHERE external_id IS NOT NULL;
CREATE INDEX users_updated_by ON users (updated_by) WHERE updated_by IS NOT NULL;
