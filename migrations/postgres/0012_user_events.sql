-- The user event feed (WatchUserEvents): every committed change to a user, once, written in
-- the same transaction as the change (a transactional outbox). seq orders the feed; on
-- PostgreSQL the transactions that write events take turns at the end (an advisory lock held
-- to their commit), so that a later seq never commits before an earlier one and a follower
-- reading "after seq N" never skips one. The user is kept as the change left it, so that a
-- replay tells what happened even after the user changed again or was removed.
--
-- One exception, for speed: a SEND import's commit writes one row (type INVITED_AT_COMMIT,
-- import_key set, the user columns empty), which the feed reads as one INVITED event per user
-- the import created, in file order (source_row): writing a row per user at the commit
-- doubled the time of a plain import. Those users are read from users, or, once a revert
-- removed them, from their REMOVED events (which keep import_key and source_row for this).
CREATE TABLE user_events (
    seq              BIGSERIAL PRIMARY KEY,
    account_id       TEXT    NOT NULL,
    import_id        TEXT    NOT NULL,
    type             TEXT    NOT NULL,
    email            TEXT    NOT NULL,
    first_name       TEXT    NOT NULL,
    last_name        TEXT    NOT NULL,
    role             TEXT    NOT NULL,
    job_title        TEXT    NOT NULL,
    external_id      TEXT,
    user_import_id   TEXT    NOT NULL,
    user_create_time TIMESTAMPTZ NOT NULL,
    user_update_time TIMESTAMPTZ NOT NULL,
    invitation_state TEXT    NOT NULL,
    invite_time      TIMESTAMPTZ,
    invitations_sent BIGINT  NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    -- INVITED_AT_COMMIT: the import; REMOVED: the import that created the user.
    import_key       BIGINT,
    -- REMOVED: the user's row in its import's file.
    source_row       BIGINT
);

-- One account's feed.
CREATE INDEX user_events_account ON user_events (account_id, seq);
-- The users an INVITED_AT_COMMIT row tells of that a revert removed since.
CREATE INDEX user_events_removed ON user_events (import_key, source_row) WHERE type = 'REMOVED';
