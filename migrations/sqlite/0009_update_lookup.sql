-- ListUsers shows the values a running UPDATE import replaced (see store::queries::list_users),
-- looked up per user: by import, account and address, not by import alone.
DROP INDEX import_user_updates_import;
CREATE INDEX import_user_updates_user ON import_user_updates (import_key, account_id, email);
