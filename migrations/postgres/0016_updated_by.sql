-- The users an UPDATE import changed, found by the import: its UPDATED events at its commit
-- (store::events) read them through this index instead of every user of every account. Only
-- updated users have an entry, so plain imports, which set no updated_by, do not write it.
CREATE INDEX users_updated_by ON users (updated_by) WHERE updated_by IS NOT NULL;
