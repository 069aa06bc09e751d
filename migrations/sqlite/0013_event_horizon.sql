-- The feed's horizon: the highest seq that --event-retention removed. A follower whose cursor
-- is before it has missed events for good, and is told so (FAILED_PRECONDITION) rather than
-- given what is left as if it were all. feed names this database's feed in every cursor and
-- event id, so that a cursor kept from another database (or a restored one) is refused
-- rather than taken for a place in this feed.
CREATE TABLE user_events_horizon (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    feed TEXT    NOT NULL
);
INSERT INTO user_events_horizon (id, seq, feed) VALUES (1, 0, lower(hex(randomblob(6))));

-- The clean-up's search: the oldest events first.
CREATE INDEX user_events_time ON user_events (event_time);
