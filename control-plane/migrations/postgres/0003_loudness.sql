-- PostgreSQL form of ../0003_loudness.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- EBU R128 loudness of each track's master and the playback gain toward -14 LUFS.
ALTER TABLE tracks ADD COLUMN loudness_lufs DOUBLE PRECISION;
ALTER TABLE tracks ADD COLUMN true_peak_dbtp DOUBLE PRECISION;
ALTER TABLE tracks ADD COLUMN track_gain_db DOUBLE PRECISION;
