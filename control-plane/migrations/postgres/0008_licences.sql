-- PostgreSQL form of ../0008_licences.sql.
-- Licence windows per territory: a track plays in a country while a window that covers the
-- country is open, [starts_at, ends_at) in seconds since the epoch, NULL for an open bound.
-- Existing tracks keep what they had: their territories, for all time.
CREATE TABLE licences (
    track_id    TEXT NOT NULL REFERENCES tracks (id),
    territories TEXT NOT NULL,
    starts_at   BIGINT,
    ends_at     BIGINT,
    CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);

CREATE INDEX licences_by_track ON licences (track_id);

INSERT INTO licences (track_id, territories) SELECT id, territories FROM tracks;
