-- Third-party identifiers (email addresses) bound to accounts, and the validation sessions
-- that prove control of an address (POST .../email/requestToken, then the emailed token).
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_at BIGINT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- One per (client_secret, address, purpose); the token is stored as a SHA-256 digest.
CREATE TABLE threepid_sessions (
    session_id TEXT PRIMARY KEY,
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    client_secret TEXT NOT NULL,
    purpose TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    send_attempt BIGINT NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    validated_ts BIGINT,
    -- Where the validation link's page sends the browser afterwards (the client's choice).
    next_link TEXT
);
CREATE UNIQUE INDEX threepid_sessions_secret
    ON threepid_sessions (client_secret, medium, address, purpose);
CREATE INDEX threepid_sessions_expiry ON threepid_sessions (expires_ts);
