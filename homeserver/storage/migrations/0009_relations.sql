-- Event relations (content."m.relates_to"), written in the transaction that persists the
-- relating event (storage/relations.index_relations_txn) and removed when it is redacted.
-- Rejected and soft-failed events are not indexed.
CREATE TABLE event_relations (
    -- The relating event.
    event_nid BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- The event it relates to (possibly not (yet) known to this server).
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type);
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type);
