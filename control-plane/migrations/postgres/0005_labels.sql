-- PostgreSQL form of ../0005_labels.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- Labels own uploads and tracks; their API keys are stored as SHA-256 hashes of random
-- secrets (the secret is shown once, at creation). Tracks gain release metadata and the
-- master's hash, which with the ISRC makes an ingest idempotent.
CREATE TABLE labels (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE label_keys (
    id            TEXT PRIMARY KEY,
    label_id      TEXT NOT NULL REFERENCES labels (id),
    secret_sha256 TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);

ALTER TABLE tracks ADD COLUMN label_id TEXT REFERENCES labels (id);
ALTER TABLE tracks ADD COLUMN featuring TEXT;
ALTER TABLE tracks ADD COLUMN album TEXT;
ALTER TABLE tracks ADD COLUMN track_number BIGINT;
ALTER TABLE tracks ADD COLUMN release_at BIGINT;
ALTER TABLE tracks ADD COLUMN master_sha256 TEXT;

CREATE INDEX tracks_by_upload ON tracks (upload_id);
CREATE UNIQUE INDEX tracks_by_isrc_master ON tracks (isrc, master_sha256)
    WHERE isrc IS NOT NULL AND master_sha256 IS NOT NULL;
