-- PostgreSQL form of ../0004_features.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- Acoustic features of each track (JSON: tempo_bpm, spectral_centroid_hz, energy_dbfs, dynamics_db).
ALTER TABLE tracks ADD COLUMN features TEXT;
