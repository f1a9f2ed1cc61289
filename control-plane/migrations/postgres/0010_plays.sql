-- PostgreSQL form of ../0010_plays.sql.
-- Plays per track: the popularity that orders equally relevant search hits.
ALTER TABLE tracks ADD COLUMN plays BIGINT NOT NULL DEFAULT 0;
