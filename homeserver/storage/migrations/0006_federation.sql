-- Other servers' signing keys, as fetched from them or from a notary. One row per key; the
-- document that listed it is kept whole so this server can re-serve it as a notary.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    verify_key TEXT NOT NULL,
    -- valid_until_ts (capped at fetch time + 7 days) for current keys, expired_ts for old ones
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    from_server TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- What this server owes other servers: PDUs and EDUs waiting to be sent, in order, per
-- destination. Rows leave only when the destination acknowledged them, so a restart or a
-- peer outage loses nothing.
CREATE TABLE federation_outbox (
    position BIGINT PRIMARY KEY,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, position);
INSERT INTO stream_positions (stream, position) VALUES ('federation_outbox', 0);

-- Backoff state of destinations that failed.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failure_ts BIGINT,
    retry_last_ts BIGINT NOT NULL,
    retry_interval_ms BIGINT NOT NULL
);
