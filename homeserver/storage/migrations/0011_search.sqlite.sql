-- Full-text search of room events (POST /search): one row per message body, room name or
-- topic, written in the persist transaction (storage/search.index_search_txn) and removed
-- on redaction. SQLite: an FTS5 table whose rowid is the event's NID.
CREATE VIRTUAL TABLE event_search USING fts5(
    value,
    room_id UNINDEXED,
    key UNINDEXED,
    tokenize = 'unicode61'
);
