//! The catalogue and job queue in SQL.
//!
//! Every method takes `now` (seconds since the epoch) from the caller; nothing here reads a
//! clock. Each state change is one transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cadenza_common::{
    ContentKey, FileId, JobId, JobLease, JobOutcome, Loudness, Quality, RenditionRecord,
    RenditionSummary, Territories, TrackId, TrackRegistration, TrackStatus, TrackView, UploadId,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value does not parse: the database was edited by hand or is corrupt.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The job is not leased (already finished, or never existed).
    #[error("job {0} is not leased")]
    JobNotLeased(String),
    /// The request names something that cannot be (bad name, unknown label).
    #[error("{0}")]
    Invalid(String),
    /// The request collides with what another party owns.
    #[error("{0}")]
    Conflict(String),
}

mod labels;

/// What releasing a failed attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Queued again; leasable from `retry_at` (seconds since the epoch).
    Retry { retry_at: u64 },
    /// Out of attempts: the job and its track failed with `reason`.
    Failed { reason: String },
}

/// The wait before attempt `attempts + 1`: `base`, doubling per failed attempt, capped at
/// 15 minutes.
pub fn retry_delay(attempts: u32, base: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    base.saturating_mul(1 << doublings)
        .min(Duration::from_secs(15 * 60))
}

/// What registering an ingest did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub track_id: TrackId,
    pub status: TrackStatus,
    /// An earlier ingest of the same upload, or of the same ISRC and master, was found.
    pub duplicate: bool,
}

/// Schema migrations, applied in order once each.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_catalogue.sql")),
    (2, include_str!("../migrations/0002_seek_index.sql")),
    (3, include_str!("../migrations/0003_loudness.sql")),
    (4, include_str!("../migrations/0004_features.sql")),
    (5, include_str!("../migrations/0005_labels.sql")),
    (6, include_str!("../migrations/0006_takedown.sql")),
    (7, include_str!("../migrations/0007_job_backoff.sql")),
];

/// The catalogue store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn parse<T: FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e: T::Err| corrupt(format!("{s:?}: {e}")))
}

fn parse_status(s: &str) -> Result<TrackStatus, StoreError> {
    Ok(match s {
        "received" => TrackStatus::Received,
        "transcoding" => TrackStatus::Transcoding,
        "ready" => TrackStatus::Ready,
        "failed" => TrackStatus::Failed,
        other => return Err(corrupt(format!("track status {other:?}"))),
    })
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        for &(version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !done {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO schema_migrations (version) VALUES (?)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Records a new track and queues its transcode job, unless this ingest repeats an
    /// earlier one: the same upload, or the same ISRC with the same master (by SHA-256). A
    /// repeat returns the existing track; the same ISRC and master from another label is a
    /// conflict. One transaction, so two concurrent repeats cannot both create.
    pub async fn create_track(
        &self,
        reg: &TrackRegistration,
        now: u64,
    ) -> Result<Registered, StoreError> {
        let req = &reg.ingest;
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(
            "SELECT id, status, label_id FROM tracks
             WHERE upload_id = ? OR (isrc IS NOT NULL AND isrc = ? AND master_sha256 = ?)
             ORDER BY created_at LIMIT 1",
        )
        .bind(req.upload_id.as_str())
        .bind(req.isrc.as_deref())
        .bind(&reg.master_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let owner: Option<String> = row.try_get("label_id")?;
            if owner.as_deref() != Some(reg.label_id.as_str()) {
                return Err(StoreError::Conflict(
                    "this ISRC and master were already ingested by another label".into(),
                ));
            }
            return Ok(Registered {
                track_id: parse(&row.try_get::<String, _>("id")?)?,
                status: parse_status(&row.try_get::<String, _>("status")?)?,
                duplicate: true,
            });
        }
        let track_id = TrackId::random();
        let job_id = JobId::random();
        let featuring = (!req.featuring.is_empty())
            .then(|| serde_json::to_string(&req.featuring))
            .transpose()
            .map_err(corrupt)?;
        sqlx::query(
            "INSERT INTO tracks (id, title, artist, isrc, territories, upload_id, status, created_at,
                                 label_id, featuring, album, track_number, release_at, master_sha256)
             VALUES (?, ?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(track_id.as_str())
        .bind(req.title.trim())
        .bind(req.artist.trim())
        .bind(req.isrc.as_deref())
        .bind(req.territories.to_string())
        .bind(req.upload_id.as_str())
        .bind(now as i64)
        .bind(&reg.label_id)
        .bind(featuring)
        .bind(req.album.as_deref().map(str::trim))
        .bind(req.track_number.map(i64::from))
        .bind(req.release_at.map(|t| t as i64))
        .bind(&reg.master_sha256)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO jobs (id, track_id, upload_id, state, created_at) VALUES (?, ?, ?, 'queued', ?)",
        )
        .bind(job_id.as_str())
        .bind(track_id.as_str())
        .bind(req.upload_id.as_str())
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Registered {
            track_id,
            status: TrackStatus::Received,
            duplicate: false,
        })
    }

    /// Takes `track` down for its label: from now on no grant is issued for it. Returns false
    /// when the label has no such track. Taking a track down twice keeps the first time.
    pub async fn take_down(
        &self,
        track: &TrackId,
        label_id: &str,
        reason: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tracks SET taken_down_at = COALESCE(taken_down_at, ?),
                               takedown_reason = COALESCE(takedown_reason, ?)
             WHERE id = ? AND label_id = ?",
        )
        .bind(now as i64)
        .bind(reason)
        .bind(track.as_str())
        .bind(label_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Leases the oldest runnable job — queued, or leased with an expired lease — for
    /// `lease`, or `None` when there is none. A job that has used `max_attempts` leases is
    /// failed instead of leased again.
    pub async fn lease_job(
        &self,
        now: u64,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<JobLease>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Jobs whose workers died too often are failed with a reason.
        let exhausted = sqlx::query(
            "SELECT id, track_id FROM jobs WHERE state = 'leased' AND lease_expires_at <= ? AND attempts >= ?",
        )
        .bind(now as i64)
        .bind(i64::from(max_attempts))
        .fetch_all(&mut *tx)
        .await?;
        for row in exhausted {
            let reason = format!("transcoding did not finish after {max_attempts} attempts");
            let job: String = row.try_get("id")?;
            let track: String = row.try_get("track_id")?;
            sqlx::query("UPDATE jobs SET state = 'failed', reason = ? WHERE id = ?")
                .bind(&reason)
                .bind(&job)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE tracks SET status = 'failed', failure = ? WHERE id = ?")
                .bind(&reason)
                .bind(&track)
                .execute(&mut *tx)
                .await?;
        }
        let expires = now + lease.as_secs();
        let row = sqlx::query(
            "UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_expires_at = ?
             WHERE id = (SELECT id FROM jobs
                         WHERE (state = 'queued' AND not_before <= ?)
                            OR (state = 'leased' AND lease_expires_at <= ?)
                         ORDER BY created_at, id LIMIT 1)
             RETURNING id, track_id, upload_id, attempts",
        )
        .bind(expires as i64)
        .bind(now as i64)
        .bind(now as i64)
        .fetch_optional(&mut *tx)
        .await?;
        let lease = match row {
            None => None,
            Some(row) => {
                let track_id: String = row.try_get("track_id")?;
                sqlx::query("UPDATE tracks SET status = 'transcoding' WHERE id = ?")
                    .bind(&track_id)
                    .execute(&mut *tx)
                    .await?;
                Some(JobLease {
                    job_id: parse(&row.try_get::<String, _>("id")?)?,
                    track_id: parse(&track_id)?,
                    upload_id: parse::<UploadId>(&row.try_get::<String, _>("upload_id")?)?,
                    attempt: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    lease_expires_at: expires,
                })
            }
        };
        tx.commit().await?;
        Ok(lease)
    }

    /// Extends the lease of `job_id` to `now + lease` if attempt `attempt` still holds it.
    /// Returns the new expiry, or `None` when the lease was lost (expired and taken by
    /// another worker, or the job finished).
    pub async fn extend_lease(
        &self,
        job_id: &JobId,
        attempt: u32,
        now: u64,
        lease: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let expires = now + lease.as_secs();
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND state = 'leased' AND attempts = ?",
        )
        .bind(expires as i64)
        .bind(job_id.as_str())
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then_some(expires))
    }

    /// Hands a job back after attempt `attempt` failed with `reason` (a transient cause: the
    /// master could not be fetched, the origin refused a rendition…). It is leased again no
    /// sooner than [`retry_delay`] from now; after `max_attempts` attempts it fails with the
    /// last reason stored on the track. A stale attempt is `JobNotLeased`.
    pub async fn release_job(
        &self,
        job_id: &JobId,
        attempt: u32,
        reason: &str,
        now: u64,
        max_attempts: u32,
        base: Duration,
    ) -> Result<Released, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT track_id, state, attempts FROM jobs WHERE id = ?")
            .bind(job_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::JobNotLeased(job_id.to_string()))?;
        let state: String = row.try_get("state")?;
        let attempts = u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX);
        if state != "leased" || attempts != attempt {
            return Err(StoreError::JobNotLeased(job_id.to_string()));
        }
        let track: String = row.try_get("track_id")?;
        let released = if attempts >= max_attempts {
            let why = format!("gave up after {attempts} attempts; the last: {reason}");
            sqlx::query(
                "UPDATE jobs SET state = 'failed', reason = ?, last_error = ? WHERE id = ?",
            )
            .bind(&why)
            .bind(reason)
            .bind(job_id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE tracks SET status = 'failed', failure = ? WHERE id = ?")
                .bind(&why)
                .bind(&track)
                .execute(&mut *tx)
                .await?;
            Released::Failed { reason: why }
        } else {
            let retry_at = now + retry_delay(attempts, base).as_secs();
            sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_expires_at = NULL, not_before = ?,
                                 last_error = ? WHERE id = ?",
            )
            .bind(retry_at as i64)
            .bind(reason)
            .bind(job_id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE tracks SET status = 'received' WHERE id = ?")
                .bind(&track)
                .execute(&mut *tx)
                .await?;
            Released::Retry { retry_at }
        };
        tx.commit().await?;
        Ok(released)
    }

    /// How many leases a job has used, and its state (for tools and tests).
    pub async fn job_state(&self, track: &TrackId) -> Result<Option<(String, u32)>, StoreError> {
        let row = sqlx::query("SELECT state, attempts FROM jobs WHERE track_id = ?")
            .bind(track.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                r.try_get::<String, _>("state")?,
                u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
            ))
        })
        .transpose()
    }

    /// Records how a job ended. Completing a finished job again changes nothing, so a worker
    /// retrying a report after a lost response is harmless.
    pub async fn complete_job(
        &self,
        job_id: &JobId,
        outcome: &JobOutcome,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT track_id, state FROM jobs WHERE id = ?")
            .bind(job_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::JobNotLeased(job_id.to_string()))?;
        let state: String = row.try_get("state")?;
        let track_id: String = row.try_get("track_id")?;
        match state.as_str() {
            "done" | "failed" => return Ok(()),
            "leased" => {}
            _ => return Err(StoreError::JobNotLeased(job_id.to_string())),
        }
        match outcome {
            JobOutcome::Completed {
                renditions,
                master_frames,
                master_sample_rate,
                loudness,
                features,
            } => {
                for r in renditions {
                    sqlx::query(
                        "INSERT INTO renditions (file_id, track_id, quality, size, bitrate_kbps, key_hex, iv_hex, plaintext_sha256, seek_index)
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(r.file_id.as_str())
                    .bind(&track_id)
                    .bind(r.quality.as_str())
                    .bind(r.size as i64)
                    .bind(i64::from(r.bitrate_kbps))
                    .bind(r.key.key_hex())
                    .bind(r.key.iv_hex())
                    .bind(&r.plaintext_sha256)
                    .bind(serde_json::to_string(&r.seek_index).map_err(corrupt)?)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "UPDATE tracks SET status = 'ready', failure = NULL, master_frames = ?, master_rate = ?,
                     loudness_lufs = ?, true_peak_dbtp = ?, track_gain_db = ?, features = ? WHERE id = ?",
                )
                .bind(*master_frames as i64)
                .bind(i64::from(*master_sample_rate))
                .bind(loudness.integrated_lufs)
                .bind(loudness.true_peak_dbtp)
                .bind(loudness.track_gain_db)
                .bind(serde_json::to_string(features).map_err(corrupt)?)
                .bind(&track_id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE jobs SET state = 'done' WHERE id = ?")
                    .bind(job_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            JobOutcome::Failed { reason } => {
                sqlx::query("UPDATE tracks SET status = 'failed', failure = ? WHERE id = ?")
                    .bind(reason)
                    .bind(&track_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE jobs SET state = 'failed', reason = ? WHERE id = ?")
                    .bind(reason)
                    .bind(job_id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A track with its renditions (without keys).
    pub async fn track(&self, id: &TrackId) -> Result<Option<TrackView>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT title, artist, isrc, territories, status, failure, master_frames, master_rate,
                    loudness_lufs, true_peak_dbtp, track_gain_db, features, label_id, featuring,
                    album, track_number, release_at, taken_down_at
             FROM tracks WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let frames: Option<i64> = row.try_get("master_frames")?;
        let rate: Option<i64> = row.try_get("master_rate")?;
        let duration_ms = match (frames, rate) {
            (Some(f), Some(r)) if r > 0 => Some((f as u64 * 1000) / r as u64),
            _ => None,
        };
        let renditions = self
            .renditions(id)
            .await?
            .into_iter()
            .map(|r| RenditionSummary {
                quality: r.quality,
                file_id: r.file_id,
                size: r.size,
                bitrate_kbps: r.bitrate_kbps,
            })
            .collect();
        Ok(Some(TrackView {
            track_id: id.clone(),
            title: row.try_get("title")?,
            artist: row.try_get("artist")?,
            featuring: row
                .try_get::<Option<String>, _>("featuring")?
                .map(|json| serde_json::from_str(&json).map_err(corrupt))
                .transpose()?
                .unwrap_or_default(),
            isrc: row.try_get("isrc")?,
            album: row.try_get("album")?,
            track_number: row
                .try_get::<Option<i64>, _>("track_number")?
                .and_then(|n| u32::try_from(n).ok()),
            release_at: row
                .try_get::<Option<i64>, _>("release_at")?
                .and_then(|t| u64::try_from(t).ok()),
            label_id: row.try_get("label_id")?,
            taken_down_at: row
                .try_get::<Option<i64>, _>("taken_down_at")?
                .and_then(|t| u64::try_from(t).ok()),
            territories: parse::<Territories>(&row.try_get::<String, _>("territories")?)?,
            status: parse_status(&row.try_get::<String, _>("status")?)?,
            failure: row.try_get("failure")?,
            duration_ms,
            renditions,
            loudness: match (
                row.try_get::<Option<f64>, _>("loudness_lufs")?,
                row.try_get::<Option<f64>, _>("true_peak_dbtp")?,
                row.try_get::<Option<f64>, _>("track_gain_db")?,
            ) {
                (Some(integrated_lufs), Some(true_peak_dbtp), Some(track_gain_db)) => {
                    Some(Loudness {
                        integrated_lufs,
                        true_peak_dbtp,
                        track_gain_db,
                    })
                }
                _ => None,
            },
            features: row
                .try_get::<Option<String>, _>("features")?
                .map(|json| serde_json::from_str(&json).map_err(corrupt))
                .transpose()?,
        }))
    }

    /// A track's renditions with their keys, lowest tier first.
    pub async fn renditions(&self, id: &TrackId) -> Result<Vec<RenditionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT file_id, quality, size, bitrate_kbps, key_hex, iv_hex, plaintext_sha256, seek_index FROM renditions WHERE track_id = ?",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                Ok(RenditionRecord {
                    quality: parse::<Quality>(&row.try_get::<String, _>("quality")?)?,
                    file_id: parse::<FileId>(&row.try_get::<String, _>("file_id")?)?,
                    size: row.try_get::<i64, _>("size")? as u64,
                    bitrate_kbps: row.try_get::<i64, _>("bitrate_kbps")? as u32,
                    key: ContentKey::from_hex(
                        &row.try_get::<String, _>("key_hex")?,
                        &row.try_get::<String, _>("iv_hex")?,
                    )
                    .map_err(corrupt)?,
                    plaintext_sha256: row.try_get("plaintext_sha256")?,
                    seek_index: serde_json::from_str(&row.try_get::<String, _>("seek_index")?)
                        .map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by_key(|r| r.quality);
        Ok(out)
    }
}
