-- The media repository. Files live on disk under the media store, each named by the SHA-256
-- of its bytes; these tables say which media IDs and thumbnails point at which file.

-- Local uploads (user_id set) and cached copies of other servers' media (user_id NULL).
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    user_id TEXT,
    created_ts BIGINT NOT NULL,
    -- NULL until the bytes arrive: an ID reserved with /create and not yet uploaded to.
    sha256 TEXT,
    media_length BIGINT,
    media_type TEXT,
    upload_name TEXT,
    -- A reserved ID nobody uploaded to is gone after this time.
    unused_expires_ts BIGINT,
    -- Stored while the unauthenticated endpoints were frozen: never served by them.
    authenticated BOOLEAN NOT NULL,
    quarantined_by TEXT,
    last_access_ts BIGINT,
    -- NULL: thumbnails not made yet; 'ok', 'unsupported' (not an image we thumbnail) or
    -- 'too_large' (more pixels than media.max_image_pixels).
    thumbnail_state TEXT,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_user ON media (user_id, created_ts);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_unused_expiry ON media (unused_expires_ts);

CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated BOOLEAN NOT NULL,
    media_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
