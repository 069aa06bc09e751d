-- Resumable uploads (ImportMetadata.resumable): an upload whose stream breaks before its finish
-- message waits for its client instead of ending, and goes on from the last row stored.
--
-- committed_bytes: the offset in the file just after the last row a stored batch holds, moved
-- by each batch in its transaction (it never goes back); committed_rows: the spreadsheet rows up
-- to there; resume_state: the reader's state there (import/checkpoint.rs, JSON), for resumable
-- uploads only. resume_deadline (microseconds since the Unix epoch): set while the import waits
-- for its client, which is what "waiting" means; the import is still PROCESSING, and ends
-- ERROR_UNKNOWN once the deadline passes.
ALTER TABLE imports ADD COLUMN resumable BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE imports ADD COLUMN committed_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE imports ADD COLUMN committed_rows BIGINT NOT NULL DEFAULT 0;
ALTER TABLE imports ADD COLUMN resume_state TEXT;
ALTER TABLE imports ADD COLUMN resume_deadline INTEGER;
