-- Memberships of local users in rooms this server is not in: an invite received over
-- federation (/invite) and its rejection. They belong to no room DAG here; /sync shows them
-- (invite_state, or the leave) at their position on the 'events' stream.
CREATE TABLE out_of_band_memberships (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    membership TEXT NOT NULL,
    room_version TEXT NOT NULL,
    -- The PDU as signed (for an invite: by the inviting server and by us).
    json TEXT NOT NULL,
    -- JSON list of stripped state events shown with an invite.
    stripped_state TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL UNIQUE,
    received_ts BIGINT NOT NULL
);
CREATE INDEX out_of_band_memberships_user ON out_of_band_memberships (user_id, stream_ordering);

-- History fetched from other servers (backfill) counts down from here: its events are
-- stored with negated positions, before everything on the 'events' stream.
INSERT INTO stream_positions (stream, position) VALUES ('backfill', 0);
