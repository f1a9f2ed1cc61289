-- PostgreSQL form of ../0006_takedown.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- A takedown withdraws a track: no grant is issued for it after this time.
ALTER TABLE tracks ADD COLUMN taken_down_at BIGINT;
ALTER TABLE tracks ADD COLUMN takedown_reason TEXT;
