//! The catalogue and job queue in SQL.
//!
//! Every method takes `now` (seconds since the epoch) from the caller; nothing here reads a
//! clock. Each state change is one transaction.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cadenza_common::{
    ContentKey, FileId, JobId, JobLease, JobOutcome, Licence, Loudness, Quality, RenditionRecord,
    RenditionSummary, Territories, TrackId, TrackRegistration, TrackStatus, TrackView, UploadId,
};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::{Executor, Row};

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
    /// Work the store hands to a thread failed there (a hash, a rebuild): not the
    /// caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

mod accounts;
mod catalogue;
mod keyring;
mod labels;
mod search_docs;

pub use accounts::{ClientKind, NewClient, Refreshed, UserExport};
pub use keyring::{KeyRing, MasterKey};

pub use catalogue::{TrackCursor, name_key};

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

/// Schema migrations for SQLite, applied in order once each.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_catalogue.sql")),
    (2, include_str!("../migrations/0002_seek_index.sql")),
    (3, include_str!("../migrations/0003_loudness.sql")),
    (4, include_str!("../migrations/0004_features.sql")),
    (5, include_str!("../migrations/0005_labels.sql")),
    (6, include_str!("../migrations/0006_takedown.sql")),
    (7, include_str!("../migrations/0007_job_backoff.sql")),
    (8, include_str!("../migrations/0008_licences.sql")),
    (9, include_str!("../migrations/0009_artists_albums.sql")),
    (10, include_str!("../migrations/0010_plays.sql")),
    (11, include_str!("../migrations/0011_sealed_keys.sql")),
    (12, include_str!("../migrations/0012_accounts.sql")),
];

/// The same schema for PostgreSQL: 64-bit integers and double-precision reals, so every
/// column reads back as the same Rust type on both.
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_catalogue.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_seek_index.sql"),
    ),
    (3, include_str!("../migrations/postgres/0003_loudness.sql")),
    (4, include_str!("../migrations/postgres/0004_features.sql")),
    (5, include_str!("../migrations/postgres/0005_labels.sql")),
    (6, include_str!("../migrations/postgres/0006_takedown.sql")),
    (
        7,
        include_str!("../migrations/postgres/0007_job_backoff.sql"),
    ),
    (8, include_str!("../migrations/postgres/0008_licences.sql")),
    (
        9,
        include_str!("../migrations/postgres/0009_artists_albums.sql"),
    ),
    (10, include_str!("../migrations/postgres/0010_plays.sql")),
    (
        11,
        include_str!("../migrations/postgres/0011_sealed_keys.sql"),
    ),
    (12, include_str!("../migrations/postgres/0012_accounts.sql")),
];

/// The PostgreSQL advisory lock migrations hold ("cadenza" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6164_656e_7a61;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: one file, WAL, one writer at a time.
    Sqlite,
    /// Production: many writers, row locks.
    Postgres,
}

/// The catalogue store. Queries are written once, in the SQL both databases accept, with
/// `$N` parameters numbered in order of first use (SQLite reads those as positional too);
/// the few statements that must differ ask [`Store::backend`].
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Seals and opens content keys; without one they are stored in the clear.
    ring: Option<std::sync::Arc<KeyRing>>,
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

/// A stored time (seconds since the epoch), as read back.
fn secs(v: Option<i64>) -> Option<u64> {
    v.and_then(|t| u64::try_from(t).ok())
}

/// A track's duration from the master's frame count and rate, as stored.
fn duration_ms(row: &sqlx::any::AnyRow) -> Result<Option<u64>, StoreError> {
    let frames: Option<i64> = row.try_get("master_frames")?;
    let rate: Option<i64> = row.try_get("master_rate")?;
    Ok(match (frames, rate) {
        (Some(f), Some(r)) if r > 0 => Some(f as u64 * 1000 / r as u64),
        _ => None,
    })
}

/// Hex SHA-256 of a random secret (label keys, client secrets, refresh tokens): the secrets
/// carry 192 bits, so a fast hash is enough, and a copy of the database hands out nothing.
fn secret_hash(secret: &str) -> String {
    cadenza_common::hex_encode(
        ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref(),
    )
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

/// Ends a write transaction: commits what succeeded, and rolls back at once what did not, so
/// its row locks are gone before the next statement (a dropped transaction rolls back only
/// when its connection is next used, and a `SKIP LOCKED` lease would skip its rows till then).
async fn finish<T>(
    tx: sqlx::Transaction<'static, sqlx::Any>,
    out: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match out {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(&url).await
    }

    /// Opens the database at `url` — `sqlite://PATH?mode=rwc` or
    /// `postgres://USER@HOST:PORT/DB` — and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL {:?}: use sqlite:// or postgres://",
                url.split('@').next_back().unwrap_or_default()
            )));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Sqlite => {
                options
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Backend::Postgres => options.max_connections(16).connect(url).await?,
        };
        let store = Self {
            pool,
            backend,
            ring: None,
        };
        store.migrate().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        store.link_unlinked(now).await?;
        Ok(store)
    }

    /// A transaction that will write. SQLite's are taken as writer from the start (`BEGIN
    /// IMMEDIATE`), so concurrent ones wait on the busy timeout instead of failing when a
    /// reader finds it cannot become the writer.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// This store, sealing content keys under `ring`'s current master key from now on.
    /// Call [`Store::reseal_keys`] to seal those stored before.
    pub fn with_master_keys(mut self, ring: KeyRing) -> Self {
        self.ring = Some(std::sync::Arc::new(ring));
        self
    }

    fn ring(&self) -> Result<&KeyRing, StoreError> {
        self.ring
            .as_deref()
            .ok_or_else(|| StoreError::Internal("no master key is configured".into()))
    }

    /// The connection pool, for operator tools and tests that look at rows directly.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Row locks for a read that a write in the same transaction depends on. SQLite has one
    /// writer at a time and no such clause.
    fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        use sqlx::Connection;
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Control planes starting together migrate one at a time: even `CREATE TABLE IF
            // NOT EXISTS` races on PostgreSQL. The lock is the session's, released below
            // or when the connection closes.
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let migrated = async {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            )
            .execute(&mut *conn)
            .await?;
            let migrations = match self.backend {
                Backend::Sqlite => SQLITE_MIGRATIONS,
                Backend::Postgres => POSTGRES_MIGRATIONS,
            };
            for &(version, sql) in migrations {
                let mut tx = match self.backend {
                    Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
                    Backend::Postgres => conn.begin().await?,
                };
                let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !done {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Ok::<(), StoreError>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        migrated
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
        let licences = if req.licences.is_empty() {
            vec![Licence::always(req.territories.clone())]
        } else {
            req.licences.clone()
        };
        for l in &licences {
            l.check().map_err(StoreError::Invalid)?;
        }
        let mut tx = self.write_tx().await?;
        let out = async {
            let existing = sqlx::query(
                "SELECT id, status, label_id FROM tracks
                 WHERE upload_id = $1 OR (isrc IS NOT NULL AND isrc = $2 AND master_sha256 = $3)
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
                 VALUES ($1, $2, $3, $4, $5, $6, 'received', $7, $8, $9, $10, $11, $12, $13)",
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
            catalogue::insert_licences(&mut tx, &track_id, &licences).await?;
            let credits = catalogue::Credits {
                artists: std::iter::once(req.artist.as_str())
                    .chain(req.featuring.iter().map(String::as_str))
                    .collect(),
                album: req.album.as_deref(),
                label_id: Some(&reg.label_id),
                release_at: req.release_at,
            };
            catalogue::link(&mut tx, &track_id, &credits, now).await?;
            sqlx::query(
                "INSERT INTO jobs (id, track_id, upload_id, state, created_at) VALUES ($1, $2, $3, 'queued', $4)",
            )
            .bind(job_id.as_str())
            .bind(track_id.as_str())
            .bind(req.upload_id.as_str())
            .bind(now as i64)
            .execute(&mut *tx)
            .await?;
            Ok::<Registered, StoreError>(Registered {
            track_id,
            status: TrackStatus::Received,
            duplicate: false,
        })
        }
        .await;
        finish(tx, out).await
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
            "UPDATE tracks SET taken_down_at = COALESCE(taken_down_at, $1),
                               takedown_reason = COALESCE(takedown_reason, $2)
             WHERE id = $3 AND label_id = $4",
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
        let mut tx = self.write_tx().await?;
        let out = async {
            // Jobs whose workers died too often are failed with a reason.
            let exhausted = sqlx::query(
                "SELECT id, track_id FROM jobs WHERE state = 'leased' AND lease_expires_at <= $1 AND attempts >= $2",
            )
            .bind(now as i64)
            .bind(i64::from(max_attempts))
            .fetch_all(&mut *tx)
            .await?;
            for row in exhausted {
                let reason = format!("transcoding did not finish after {max_attempts} attempts");
                let job: String = row.try_get("id")?;
                let track: String = row.try_get("track_id")?;
                sqlx::query("UPDATE jobs SET state = 'failed', reason = $1 WHERE id = $2")
                    .bind(&reason)
                    .bind(&job)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE tracks SET status = 'failed', failure = $1 WHERE id = $2")
                    .bind(&reason)
                    .bind(&track)
                    .execute(&mut *tx)
                    .await?;
            }
            let expires = now + lease.as_secs();
            // On PostgreSQL concurrent leasers skip each other's candidate rows rather than
            // both updating the same job.
            let lock = match self.backend {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            };
            let sql = format!(
                "UPDATE jobs SET state = 'leased', attempts = attempts + 1, lease_expires_at = $1
                 WHERE id = (SELECT id FROM jobs
                             WHERE (state = 'queued' AND not_before <= $2)
                                OR (state = 'leased' AND lease_expires_at <= $3)
                             ORDER BY created_at, id LIMIT 1{lock})
                 RETURNING id, track_id, upload_id, attempts"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(expires as i64)
                .bind(now as i64)
                .bind(now as i64)
                .fetch_optional(&mut *tx)
                .await?;
            let lease = match row {
                None => None,
                Some(row) => {
                    let track_id: String = row.try_get("track_id")?;
                    sqlx::query("UPDATE tracks SET status = 'transcoding' WHERE id = $1")
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
            Ok::<Option<JobLease>, StoreError>(lease)
        }
        .await;
        finish(tx, out).await
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
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND state = 'leased' AND attempts = $3",
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
        let mut tx = self.write_tx().await?;
        let out = async {
            let sql = format!(
                "SELECT track_id, state, attempts FROM jobs WHERE id = $1{}",
                self.for_update()
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
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
                    "UPDATE jobs SET state = 'failed', reason = $1, last_error = $2 WHERE id = $3",
                )
                .bind(&why)
                .bind(reason)
                .bind(job_id.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE tracks SET status = 'failed', failure = $1 WHERE id = $2")
                    .bind(&why)
                    .bind(&track)
                    .execute(&mut *tx)
                    .await?;
                Released::Failed { reason: why }
            } else {
                let retry_at = now + retry_delay(attempts, base).as_secs();
                sqlx::query(
                    "UPDATE jobs SET state = 'queued', lease_expires_at = NULL, not_before = $1,
                                     last_error = $2 WHERE id = $3",
                )
                .bind(retry_at as i64)
                .bind(reason)
                .bind(job_id.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE tracks SET status = 'received' WHERE id = $1")
                    .bind(&track)
                    .execute(&mut *tx)
                    .await?;
                Released::Retry { retry_at }
            };
            Ok::<Released, StoreError>(released)
        }
        .await;
        finish(tx, out).await
    }

    /// How many leases a job has used, and its state (for tools and tests).
    pub async fn job_state(&self, track: &TrackId) -> Result<Option<(String, u32)>, StoreError> {
        let row = sqlx::query("SELECT state, attempts FROM jobs WHERE track_id = $1")
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
    /// retrying a report after a lost response is harmless. Returns the job's track.
    pub async fn complete_job(
        &self,
        job_id: &JobId,
        outcome: &JobOutcome,
    ) -> Result<TrackId, StoreError> {
        let mut tx = self.write_tx().await?;
        let out = async {
            let sql = format!(
                "SELECT track_id, state FROM jobs WHERE id = $1{}",
                self.for_update()
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(job_id.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| StoreError::JobNotLeased(job_id.to_string()))?;
            let state: String = row.try_get("state")?;
            let track_id: String = row.try_get("track_id")?;
            let track: TrackId = parse(&track_id)?;
            match state.as_str() {
                "done" | "failed" => return Ok(track),
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
                        let sealed = match &self.ring {
                            Some(ring) => Some(ring.seal(&r.file_id, &r.key)?),
                            None => None,
                        };
                        let clear = |hex: String| if sealed.is_some() { String::new() } else { hex };
                        sqlx::query(
                            "INSERT INTO renditions (file_id, track_id, quality, size, bitrate_kbps, key_hex, iv_hex, plaintext_sha256, seek_index, sealed_key)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        )
                        .bind(r.file_id.as_str())
                        .bind(&track_id)
                        .bind(r.quality.as_str())
                        .bind(r.size as i64)
                        .bind(i64::from(r.bitrate_kbps))
                        .bind(clear(r.key.key_hex()))
                        .bind(clear(r.key.iv_hex()))
                        .bind(&r.plaintext_sha256)
                        .bind(serde_json::to_string(&r.seek_index).map_err(corrupt)?)
                        .bind(sealed.as_deref())
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "UPDATE tracks SET status = 'ready', failure = NULL, master_frames = $1, master_rate = $2,
                         loudness_lufs = $3, true_peak_dbtp = $4, track_gain_db = $5, features = $6 WHERE id = $7",
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
                    sqlx::query("UPDATE jobs SET state = 'done' WHERE id = $1")
                        .bind(job_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
                JobOutcome::Failed { reason } => {
                    sqlx::query("UPDATE tracks SET status = 'failed', failure = $1 WHERE id = $2")
                        .bind(reason)
                        .bind(&track_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE jobs SET state = 'failed', reason = $1 WHERE id = $2")
                        .bind(reason)
                        .bind(job_id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            Ok::<TrackId, StoreError>(track)
        }
        .await;
        finish(tx, out).await
    }

    /// A track with its renditions (without keys).
    pub async fn track(&self, id: &TrackId) -> Result<Option<TrackView>, StoreError> {
        Ok(self.track_and_renditions(id).await?.map(|(view, _)| view))
    }

    /// A track, and its renditions with their keys (what a grant needs), in one read of
    /// the renditions.
    pub async fn track_and_renditions(
        &self,
        id: &TrackId,
    ) -> Result<Option<(TrackView, Vec<RenditionRecord>)>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT title, artist, isrc, territories, status, failure, master_frames, master_rate,
                    loudness_lufs, true_peak_dbtp, track_gain_db, features, label_id, featuring,
                    album, track_number, release_at, taken_down_at, album_id,
                    (SELECT artist_id FROM track_artists WHERE track_id = tracks.id AND position = 0)
                        AS artist_id
             FROM tracks WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let duration_ms = duration_ms(&row)?;
        let records = self.renditions(id).await?;
        let renditions = records
            .iter()
            .cloned()
            .map(|r| RenditionSummary {
                quality: r.quality,
                file_id: r.file_id,
                size: r.size,
                bitrate_kbps: r.bitrate_kbps,
            })
            .collect();
        Ok(Some((
            TrackView {
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
                release_at: secs(row.try_get("release_at")?),
                label_id: row.try_get("label_id")?,
                taken_down_at: secs(row.try_get("taken_down_at")?),
                territories: parse::<Territories>(&row.try_get::<String, _>("territories")?)?,
                licences: self.licences(id).await?,
                artist_id: row
                    .try_get::<Option<String>, _>("artist_id")?
                    .map(|a| parse(&a))
                    .transpose()?,
                album_id: row
                    .try_get::<Option<String>, _>("album_id")?
                    .map(|a| parse(&a))
                    .transpose()?,
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
            },
            records,
        )))
    }

    /// A track's renditions with their keys, lowest tier first.
    pub async fn renditions(&self, id: &TrackId) -> Result<Vec<RenditionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT file_id, quality, size, bitrate_kbps, key_hex, iv_hex, plaintext_sha256, seek_index, sealed_key FROM renditions WHERE track_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|row| {
                let file_id = parse::<FileId>(&row.try_get::<String, _>("file_id")?)?;
                let key = match row.try_get::<Option<String>, _>("sealed_key")? {
                    Some(sealed) => self.ring()?.open(&file_id, &sealed)?,
                    None => ContentKey::from_hex(
                        &row.try_get::<String, _>("key_hex")?,
                        &row.try_get::<String, _>("iv_hex")?,
                    )
                    .map_err(corrupt)?,
                };
                Ok(RenditionRecord {
                    quality: parse::<Quality>(&row.try_get::<String, _>("quality")?)?,
                    file_id,
                    size: row.try_get::<i64, _>("size")? as u64,
                    bitrate_kbps: row.try_get::<i64, _>("bitrate_kbps")? as u32,
                    key,
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
