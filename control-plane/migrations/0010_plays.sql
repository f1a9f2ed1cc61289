-- Plays per track: the popularity that orders equally relevant search hits.
ALTER TABLE tracks ADD COLUMN plays INTEGER NOT NULL DEFAULT 0;
