-- Push: users' push rules, notifications and their counts, pushers.

-- A user's own push rules. Server-default rules are not stored (see push_rule_defaults).
CREATE TABLE push_rules (
    user_id TEXT NOT NULL,
    -- override, content, room, sender or underride
    kind TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    -- Order among the user's rules of one kind: the higher is evaluated first.
    priority BIGINT NOT NULL,
    -- JSON list (override and underride rules), else NULL.
    conditions TEXT,
    -- The glob of a content rule, else NULL.
    pattern TEXT,
    -- JSON list.
    actions TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, kind, rule_id)
);

-- A user's settings of server-default rules; NULL keeps the default.
CREATE TABLE push_rule_defaults (
    user_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    enabled BOOLEAN,
    -- JSON list.
    actions TEXT,
    PRIMARY KEY (user_id, rule_id)
);

-- Notifications: an event some local user's push rules said to notify about. Unread while
-- past the user's read receipt for its thread and their own latest event there.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    -- 'main' or the thread root's event ID.
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    -- JSON list: the matching rule's actions.
    actions TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_ts ON event_push_actions (ts);

-- A user's latest own event per room and thread: sending marks what came before as read.
CREATE TABLE push_own_events (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- Pushers (POST /pushers/set), one per user, app ID and pushkey; removed with their device.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    -- http or email
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    -- JSON object (url, format and anything the client put there).
    data TEXT NOT NULL,
    -- The device that set it.
    device_id TEXT,
    pushkey_ts BIGINT NOT NULL,
    -- The stream ordering of the last notification handled (sent or given up on).
    last_stream_ordering BIGINT NOT NULL,
    -- When delivery started failing (ms), NULL while it works.
    failing_since BIGINT,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_pushkey ON pushers (app_id, pushkey);
