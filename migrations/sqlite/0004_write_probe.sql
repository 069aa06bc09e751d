-- Where readiness checks, after the disk filled or failed, that a batch fits again: a row as
-- large as a batch is written here and rolled back. It never holds a committed row.
CREATE TABLE write_probe (data BLOB NOT NULL);
