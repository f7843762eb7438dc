-- Operator state: blocked rooms, background admin tasks (room deletion, history purges) with
-- their status, each user's server-notices room, erased accounts, and when each federation
-- destination last accepted a transaction.

-- Rooms nobody on this server may join, be invited to or knock on (admin API).
CREATE TABLE room_blocks (
    room_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Room deletions and history purges run in the background; their status is kept here.
-- A task still 'scheduled' or 'active' when the server starts was interrupted: 'failed'.
CREATE TABLE admin_tasks (
    task_id TEXT PRIMARY KEY,
    -- 'delete_room' or 'purge_history'
    kind TEXT NOT NULL,
    room_id TEXT NOT NULL,
    -- 'scheduled', 'active', 'complete' or 'failed'
    status TEXT NOT NULL,
    error TEXT,
    -- JSON object: what the task did (kicked users, events purged, ...).
    result TEXT,
    created_ts BIGINT NOT NULL,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX admin_tasks_room ON admin_tasks (room_id, created_ts);

-- The room in which a user receives server notices.
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);

-- Accounts deactivated with erase: true.
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY,
    erased_ts BIGINT NOT NULL
);

-- When each destination last acknowledged a transaction (admin API: destinations).
CREATE TABLE federation_destination_activity (
    destination TEXT PRIMARY KEY,
    last_successful_ts BIGINT NOT NULL
);
