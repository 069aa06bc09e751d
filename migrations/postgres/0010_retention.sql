-- Retention: a finished import's row errors and failed rows are removed after --retention
-- (--dry-run-retention for dry runs); the import stays, with details_removed_time set. It is
-- set at the first step of the removal, so that no reader takes the rows still left for the
-- whole; details_left says the removal has steps to go (a server stopped mid-way resumes it).
ALTER TABLE imports ADD COLUMN details_removed_time TIMESTAMPTZ;
ALTER TABLE imports ADD COLUMN details_left BOOLEAN NOT NULL DEFAULT FALSE;

-- The clean-up's search: finished imports whose details are kept, oldest first...
CREATE INDEX imports_details_kept ON imports (complete_time)
    WHERE details_removed_time IS NULL AND complete_time IS NOT NULL;
-- ...and removals under way.
CREATE INDEX imports_details_left ON imports (import_key) WHERE details_left;
