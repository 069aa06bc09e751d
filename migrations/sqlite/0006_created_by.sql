-- The name of the token that started each import (empty when the server ran open): who
-- imported what, for audits.
ALTER TABLE imports ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
