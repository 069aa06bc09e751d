-- The feed's horizon: the highest seq that --event-retention removed. A follower whose cursor
-- is before it has missed events for good, and is told so (FAILED_PRECONDITION) rather than
-- given what is left as if it were all.
CREATE TABLE user_events_horizon (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT  NOT NULL
);
INSERT INTO user_events_horizon (id, seq) VALUES (1, 0);

-- The clean-up's search: the oldest events first.
CREATE INDEX user_events_time ON user_events (event_time);
