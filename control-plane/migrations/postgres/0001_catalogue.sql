-- PostgreSQL form of ../0001_catalogue.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- Tracks, their renditions (with content keys), and transcode jobs.
CREATE TABLE tracks (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    artist        TEXT NOT NULL,
    isrc          TEXT,
    territories   TEXT NOT NULL,
    upload_id     TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('received', 'transcoding', 'ready', 'failed')),
    failure       TEXT,
    master_frames BIGINT,
    master_rate   BIGINT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE renditions (
    file_id          TEXT PRIMARY KEY,
    track_id         TEXT NOT NULL REFERENCES tracks (id),
    quality          TEXT NOT NULL CHECK (quality IN ('low', 'normal', 'high')),
    size             BIGINT NOT NULL,
    bitrate_kbps     BIGINT NOT NULL,
    key_hex          TEXT NOT NULL,
    iv_hex           TEXT NOT NULL,
    plaintext_sha256 TEXT NOT NULL,
    UNIQUE (track_id, quality)
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    track_id         TEXT NOT NULL REFERENCES tracks (id),
    upload_id        TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done', 'failed')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    lease_expires_at BIGINT,
    reason           TEXT,
    created_at       BIGINT NOT NULL
);

CREATE INDEX jobs_by_state ON jobs (state, created_at);
