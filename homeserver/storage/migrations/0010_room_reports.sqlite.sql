-- Reports of events and rooms by users (POST /rooms/{roomId}/report[/{eventId}]), for the
-- server's operators (GET /_synapse/admin/v1/event_reports). event_id is NULL for a report
-- of a whole room. The PostgreSQL variant differs only in its identity column.
CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    user_id TEXT NOT NULL,
    reason TEXT,
    -- Optional score from -100 (most offensive) to 0 (inoffensive).
    score INTEGER
);
CREATE INDEX event_reports_room ON event_reports (room_id, received_ts);
CREATE INDEX event_reports_user ON event_reports (user_id, received_ts);

-- GET /rooms/{roomId}/timestamp_to_event: the closest event to a time in a room.
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
