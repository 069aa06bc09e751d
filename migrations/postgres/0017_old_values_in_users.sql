-- The values a running UPDATE import replaced, put back if it fails or is cancelled, now kept in
-- the user's own row (old_*) instead of a table of their own (import_user_updates). The update
-- writes a new version of the row anyway, so keeping them there writes nothing more; the table
-- cost each updated user a row and an index entry, and each UPDATE's ending a delete of them
-- all. They are the old values while the user's updated_by import runs, and mean nothing
-- after: readers ask whether it still runs. Columns without a default: no table rewrite.
ALTER TABLE users
    ADD COLUMN old_first_name TEXT,
    ADD COLUMN old_last_name TEXT,
    ADD COLUMN old_role TEXT,
    ADD COLUMN old_job_title TEXT,
    ADD COLUMN old_external_id TEXT COLLATE "C",
    ADD COLUMN old_update_time TIMESTAMPTZ,
    ADD COLUMN old_updated_by BIGINT;

-- The values an import still running replaced before the upgrade (an UPDATE waiting for its
-- client's resume): only its updated users have a row there, and one each.
UPDATE users AS u SET old_first_name = s.first_name, old_last_name = s.last_name,
    old_role = s.role, old_job_title = s.job_title, old_external_id = s.external_id,
    old_update_time = s.update_time, old_updated_by = s.updated_by
FROM import_user_updates AS s
WHERE s.import_key = u.updated_by AND s.account_id = u.account_id AND s.email = u.email;

DROP TABLE import_user_updates;
