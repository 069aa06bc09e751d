-- Where readiness checks, after the disk filled or failed, that a batch fits again: rows as
-- large as a batch are written here and rolled back. It never holds a committed row. Stored
-- out of line and uncompressed, so that the bytes written are the bytes asked for.
CREATE TABLE write_probe (data TEXT NOT NULL);
ALTER TABLE write_probe ALTER COLUMN data SET STORAGE EXTERNAL;
