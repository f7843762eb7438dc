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
