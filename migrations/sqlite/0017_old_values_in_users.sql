-- The values a running UPDATE import replaced, put back if it fails or is cancelled, now kept in
-- the user's own row (old_*) instead of a table of their own (import_user_updates). The update
-- rewrites the row anyway, so keeping them there writes nothing more; the table cost each
-- updated user a row and a random insert into its index on import, account and address, and
-- each UPDATE's ending a delete of them all. They are the old values while the user's
-- updated_by import runs, and mean nothing after: readers ask whether it still runs.
ALTER TABLE users ADD COLUMN old_first_name TEXT;
ALTER TABLE users ADD COLUMN old_last_name TEXT;
ALTER TABLE users ADD COLUMN old_role TEXT;
ALTER TABLE users ADD COLUMN old_job_title TEXT;
ALTER TABLE users ADD COLUMN old_external_id TEXT;
ALTER TABLE users ADD COLUMN old_update_time INTEGER;
ALTER TABLE users ADD COLUMN old_updated_by INTEGER;

-- The values an import still running replaced before the upgrade (an UPDATE waiting for its
-- client's resume): only its updated users have a row there, and one each.
UPDATE users SET old_first_name = s.first_name, old_last_name = s.last_name,
    old_role = s.role, old_job_title = s.job_title, old_external_id = s.external_id,
    old_update_time = s.update_time, old_updated_by = s.updated_by
FROM import_user_updates AS s
WHERE s.import_key = users.updated_by AND s.account_id = users.account_id
    AND s.email = users.email;

DROP TABLE import_user_updates;
