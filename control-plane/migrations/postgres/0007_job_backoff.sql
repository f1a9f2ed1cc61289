-- PostgreSQL form of ../0007_job_backoff.sql: BIGINT for INTEGER, DOUBLE PRECISION for REAL.
-- A job released after a failed attempt waits until not_before (exponential backoff), and
-- keeps the error of its last attempt.
ALTER TABLE jobs ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN last_error TEXT;
