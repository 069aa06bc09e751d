-- The Imports list is newest first by create_time, ties by import_id: the order a person
-- expects, which the internal key does not always follow when uploads start at once.
DROP INDEX imports_account_key;
CREATE INDEX imports_account_created ON imports (account_id, create_time, import_id);
