-- The relay of the feed onto NATS JetStream (--events-nats-url): where it stands, and which
-- replica relays. One row. A replica relays while it holds the lease (lease_until, in
-- microseconds since the Unix epoch by the database's clock); taking the lease adds one to
-- epoch, and a relay stores its place only while epoch is still the one it took, so that a
-- replica that lost the lease (it stalled, its connection broke) can never move the place
-- back or forward under the one that took over. A replica that stops gives the lease up by
-- clearing holder (any replica may take it at once) and leaves lease_until as it was, so that
-- the feed's clean-up still counts the relay as one that ran until then. at_seq and at_row
-- are a feed cursor: the relay has published every event up to it. epoch 0: no relay has ever
-- run, and the feed starts from the oldest event it keeps.
CREATE TABLE user_events_relay (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT    NOT NULL,
    epoch       BIGINT  NOT NULL,
    lease_until BIGINT  NOT NULL,
    at_seq      BIGINT  NOT NULL,
    at_row      BIGINT
);
INSERT INTO user_events_relay (id, holder, epoch, lease_until, at_seq, at_row) VALUES (1, '', 0, 0, 0, NULL);
