-- PostgreSQL form of ../0002_seek_index.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- Each rendition's seek index (JSON: header_bytes, frames, points), given to players in grants.
ALTER TABLE renditions ADD COLUMN seek_index TEXT NOT NULL DEFAULT '{"header_bytes":0,"frames":0,"points":[]}';
