-- How each file's text was read, and how many row errors were left out by the cap.
ALTER TABLE imports ADD COLUMN encoding TEXT;
ALTER TABLE imports ADD COLUMN delimiter TEXT;
ALTER TABLE imports ADD COLUMN row_errors_omitted INTEGER NOT NULL DEFAULT 0;
