-- Read receipts (on the 'receipts' stream) and presence (on the 'presence' stream).

-- The newest receipt of each type per user, room and thread. thread_id is '' for an
-- unthreaded receipt, 'main' or a thread root's event ID for a threaded one. event_stream is
-- the stream_ordering of the event the receipt points at (receipts only move forward).
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_stream BIGINT NOT NULL,
    -- JSON, e.g. {"ts": 1234}
    data TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_stream ON receipts (stream_id);
CREATE INDEX receipts_user ON receipts (user_id, room_id);

-- The presence of local users; a row is rewritten (with a new stream_id) on every change.
CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    last_user_sync_ts BIGINT NOT NULL,
    currently_active BOOLEAN NOT NULL,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);

INSERT INTO stream_positions (stream, position) VALUES ('receipts', 0);
INSERT INTO stream_positions (stream, position) VALUES ('presence', 0);
