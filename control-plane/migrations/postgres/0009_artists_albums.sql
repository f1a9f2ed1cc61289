-- PostgreSQL form of ../0009_artists_albums.sql.
-- Artists and albums as entities. An artist is known by its name, compared case- and
-- space-insensitively (name_key); an album by its primary artist and title. A track credits
-- its artists in order (position 0 is the primary artist) and may sit on one album.
CREATE TABLE artists (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    name_key   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE albums (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    title_key  TEXT NOT NULL,
    artist_id  TEXT NOT NULL REFERENCES artists (id),
    label_id   TEXT REFERENCES labels (id),
    release_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (artist_id, title_key)
);

CREATE TABLE track_artists (
    track_id  TEXT NOT NULL REFERENCES tracks (id),
    artist_id TEXT NOT NULL REFERENCES artists (id),
    position  BIGINT NOT NULL,
    PRIMARY KEY (track_id, position)
);

CREATE INDEX track_artists_by_artist ON track_artists (artist_id);

ALTER TABLE tracks ADD COLUMN album_id TEXT REFERENCES albums (id);
CREATE INDEX tracks_by_album ON tracks (album_id);
