-- How far the federation outbox has taken this server's own events: everything on the events
-- stream up to this position has been handed to the outbox, so a restart re-queues only
-- what was committed after it (a crash between an event's commit and its queueing would
-- otherwise keep it from other servers). One row.
CREATE TABLE federation_out_position (
    lock INTEGER PRIMARY KEY CHECK (lock = 0),
    stream_ordering BIGINT NOT NULL
);
