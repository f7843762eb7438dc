-- Application services: delivery state per service, the transaction in flight, and the rooms
-- each service lists in the directory of one of its third-party networks.

-- Stream positions already packed into transactions, and the next transaction ID. A row is
-- made at the service's first start, at the positions of that moment (no history replayed).
CREATE TABLE appservice_state (
    as_id TEXT PRIMARY KEY,
    events_position BIGINT NOT NULL,
    receipts_position BIGINT NOT NULL,
    presence_position BIGINT NOT NULL,
    to_device_position BIGINT NOT NULL,
    next_txn_id BIGINT NOT NULL
);

-- The transaction built but not yet acknowledged, written in the same transaction that moves
-- the positions past its contents: it is resent as is (same ID, same body) until accepted.
CREATE TABLE appservice_txns (
    as_id TEXT PRIMARY KEY,
    txn_id BIGINT NOT NULL,
    body TEXT NOT NULL
);

-- PUT /directory/list/appservice/{networkId}/{roomId}: shown by /publicRooms with
-- third_party_instance_id = "<as_id>|<network_id>" (or include_all_networks).
CREATE TABLE appservice_room_list (
    as_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (as_id, network_id, room_id)
);

-- To-device messages for a service's users are read by stream position.
CREATE INDEX to_device_inbox_stream ON to_device_inbox (stream_id);
