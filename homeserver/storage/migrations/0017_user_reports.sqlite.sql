-- Reports of users by users (POST /_matrix/client/v3/users/{userId}/report, spec v1.13), for
-- the server's operators (GET /_synapse/admin/v1/user_reports). The PostgreSQL variant
-- differs only in its identity column.
CREATE TABLE user_reports (
    id INTEGER PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    target_user_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX user_reports_target ON user_reports (target_user_id, received_ts);
CREATE INDEX user_reports_user ON user_reports (user_id, received_ts);
