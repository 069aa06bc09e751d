-- Email first in the users' unique indexes, account second: the same uniqueness, but a
-- comparison is nearly always decided by the first column, which SQLite compares on its fast
-- path, where (account_id, email) compared the account (equal for every row of an import) and
-- then decoded the rest of the record. See the README's Performance section.
DROP INDEX users_account_email;
CREATE UNIQUE INDEX users_email_account ON users (email, account_id);
DROP INDEX users_account_external_id;
CREATE UNIQUE INDEX users_external_id_account ON users (external_id, account_id)
    WHERE external_id IS NOT NULL;
