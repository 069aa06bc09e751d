-- Invitations: when the users an import creates are invited (its policy), and where each
-- user's invitation stands.
--
-- A user's state is kept only once something other than its import's commit changed it
-- (SendInvitations, AcceptInvitation): until then it is what the creating import decided,
-- read through the import (SENT at the import's commit with SEND, HELD with HOLD; see
-- store/queries.rs). So an import's commit invites its users by committing, in the same
-- transaction by construction, and the upload's hot path writes nothing more per user.
-- Imports made before this change have SEND: their users count as SENT, invited when the
-- import completed.
ALTER TABLE imports ADD COLUMN invitations TEXT NOT NULL DEFAULT 'SEND';
-- Users of this import that SendInvitations invited (HELD to SENT); a SEND import's own
-- invitations are its rows_imported once it completed.
ALTER TABLE imports ADD COLUMN invited_later BIGINT NOT NULL DEFAULT 0;

-- NULL while the creating import's decision stands.
ALTER TABLE users ADD COLUMN invitation_state TEXT;
ALTER TABLE users ADD COLUMN invite_time TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN invitations_sent INTEGER;
