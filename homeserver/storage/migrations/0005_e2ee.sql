-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and the
-- signatures users upload for them, device-list changes, to-device messages and server-side
-- key backups. JSON columns hold canonical JSON.

-- Identity keys of a device as the device uploaded and signed them (without "unsigned").
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys. Claims hand them out in upload order (added_ts, then key_id) and
-- delete them in the same statement, so none is handed out twice.
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_order
    ON e2e_one_time_keys (user_id, device_id, algorithm, added_ts, key_id);

-- At most one fallback key per device and algorithm, handed out (and marked used) when no
-- one-time key is left.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- The current master, self-signing and user-signing keys of each user. public_key is the
-- unpadded base64 ed25519 key, which is also the key's ID in signatures.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json TEXT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through /keys/signatures/upload, kept apart from what they sign so that
-- each viewer is shown only those the spec lets them see. target_key_id is a device ID or a
-- cross-signing public key.
CREATE TABLE e2e_cross_signing_signatures (
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device_lists stream: user_id's devices or cross-signing keys changed at stream_id.
-- only_for NULL: everyone who tracks user_id is told. Otherwise only that user is (a changed
-- user-signing key, or a signature only its maker may see).
CREATE TABLE device_list_changes (
    stream_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    only_for TEXT
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream_id);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id);

-- To-device messages waiting for a local device, on the to_device stream. One request stores
-- at most one message per device, all at the request's stream position.
CREATE TABLE to_device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- Transaction IDs of /sendToDevice per sending device: a retried request stores nothing twice.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX to_device_txns_created ON to_device_txns (created_ts);

-- Server-side key backup versions. A deleted version keeps its row (deleted = TRUE) so that
-- version numbers are never reused and deleting it again succeeds.
CREATE TABLE e2e_room_keys_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

INSERT INTO stream_positions (stream, position) VALUES ('to_device', 0);
INSERT INTO stream_positions (stream, position) VALUES ('device_lists', 0);
