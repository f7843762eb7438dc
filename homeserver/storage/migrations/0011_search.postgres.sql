-- Full-text search of room events (POST /search): one row per message body, room name or
-- topic, written in the persist transaction (storage/search.index_search_txn) and removed
-- on redaction. PostgreSQL: a tsvector with a GIN index.
CREATE TABLE event_search (
    event_nid BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    key TEXT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_fts ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id);
