-- OpenID tokens (POST /user/{userId}/openid/request_token), which other services exchange for
-- the user's ID at /_matrix/federation/v1/openid/userinfo. Stored as SHA-256 digests.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
