-- EBU R128 loudness of each track's master and the playback gain toward -14 LUFS.
ALTER TABLE tracks ADD COLUMN loudness_lufs REAL;
ALTER TABLE tracks ADD COLUMN true_peak_dbtp REAL;
ALTER TABLE tracks ADD COLUMN track_gain_db REAL;
