-- A takedown withdraws a track: no grant is issued for it after this time.
ALTER TABLE tracks ADD COLUMN taken_down_at INTEGER;
ALTER TABLE tracks ADD COLUMN takedown_reason TEXT;
