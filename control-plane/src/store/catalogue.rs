//! Artists, albums and licence windows: the catalogue around a track.
//!
//! Labels name artists and albums as text. The store resolves those names to entities: an
//! artist by its name compared without case or repeated spaces, an album by its primary artist
//! and title. Two labels that send the same artist name reach the same artist, which is how
//! a listener expects to find them.

use cadenza_common::{
    AlbumId, AlbumSummary, AlbumView, ArtistId, ArtistView, Licence, TrackId, TrackSummary,
};
use sqlx::{Any, Row, Transaction};

use super::{Store, StoreError, duration_ms, parse, secs};

/// How names are compared: lowercase, runs of whitespace as one space, trimmed.
pub fn name_key(name: &str) -> String {
    name.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a track credits and belongs to, as the label sent it.
pub(super) struct Credits<'a> {
    pub artists: Vec<&'a str>,
    pub album: Option<&'a str>,
    pub label_id: Option<&'a str>,
    pub release_at: Option<u64>,
}

/// The artist named `name`, made if new.
async fn ensure_artist(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    now: u64,
) -> Result<String, StoreError> {
    let key = name_key(name);
    sqlx::query(
        "INSERT INTO artists (id, name, name_key, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name_key) DO NOTHING",
    )
    .bind(ArtistId::random().as_str())
    .bind(name.trim())
    .bind(&key)
    .bind(now as i64)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query("SELECT id FROM artists WHERE name_key = $1")
        .bind(&key)
        .fetch_one(&mut **tx)
        .await?
        .try_get("id")?)
}

/// Links `track` to its artists (in credit order, the primary first) and its album, making
/// either if new. Run inside the transaction that records the track.
pub(super) async fn link(
    tx: &mut Transaction<'static, Any>,
    track: &TrackId,
    credits: &Credits<'_>,
    now: u64,
) -> Result<(), StoreError> {
    let mut primary = None;
    let mut seen = Vec::new();
    for name in &credits.artists {
        let artist = ensure_artist(tx, name, now).await?;
        if seen.contains(&artist) {
            continue;
        }
        // A repeat (a backfill racing another) leaves the first credit.
        sqlx::query(
            "INSERT INTO track_artists (track_id, artist_id, position) VALUES ($1, $2, $3)
             ON CONFLICT (track_id, position) DO NOTHING",
        )
        .bind(track.as_str())
        .bind(&artist)
        .bind(seen.len() as i64)
        .execute(&mut **tx)
        .await?;
        primary.get_or_insert_with(|| artist.clone());
        seen.push(artist);
    }
    let (Some(title), Some(artist)) = (credits.album.map(str::trim), primary) else {
        return Ok(());
    };
    if title.is_empty() {
        return Ok(());
    }
    let key = name_key(title);
    sqlx::query(
        "INSERT INTO albums (id, title, title_key, artist_id, label_id, release_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (artist_id, title_key) DO NOTHING",
    )
    .bind(AlbumId::random().as_str())
    .bind(title)
    .bind(&key)
    .bind(&artist)
    .bind(credits.label_id)
    .bind(credits.release_at.map(|t| t as i64))
    .bind(now as i64)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE tracks SET album_id = (SELECT id FROM albums WHERE artist_id = $1 AND title_key = $2)
         WHERE id = $3",
    )
    .bind(&artist)
    .bind(&key)
    .bind(track.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records `track`'s licence windows.
pub(super) async fn insert_licences(
    tx: &mut Transaction<'static, Any>,
    track: &TrackId,
    licences: &[Licence],
) -> Result<(), StoreError> {
    for l in licences {
        sqlx::query(
            "INSERT INTO licences (track_id, territories, starts_at, ends_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(track.as_str())
        .bind(l.territories.to_string())
        .bind(l.starts_at.map(|t| t as i64))
        .bind(l.ends_at.map(|t| t as i64))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn summary(row: &sqlx::any::AnyRow) -> Result<TrackSummary, StoreError> {
    Ok(TrackSummary {
        track_id: parse(&row.try_get::<String, _>("id")?)?,
        title: row.try_get("title")?,
        artist: row.try_get("artist")?,
        track_number: row
            .try_get::<Option<i64>, _>("track_number")?
            .and_then(|n| u32::try_from(n).ok()),
        duration_ms: duration_ms(row)?,
    })
}

/// The columns [`summary`] reads, from `tracks t`.
const SUMMARY_COLUMNS: &str =
    "t.id, t.title, t.artist, t.track_number, t.master_frames, t.master_rate";

/// Listings show what a listener could play: ready, not taken down by `now`.
const LISTED: &str = "t.status = 'ready' AND (t.taken_down_at IS NULL OR t.taken_down_at > $2)";

/// A licence window from a row of `territories`, `starts_at` and `ends_at`.
pub(super) fn licence(row: &sqlx::any::AnyRow) -> Result<Licence, StoreError> {
    Ok(Licence {
        territories: parse(&row.try_get::<String, _>("territories")?)?,
        starts_at: secs(row.try_get("starts_at")?),
        ends_at: secs(row.try_get("ends_at")?),
    })
}

impl Store {
    /// A track's licence windows.
    pub async fn licences(&self, track: &TrackId) -> Result<Vec<Licence>, StoreError> {
        let rows = sqlx::query(
            "SELECT territories, starts_at, ends_at FROM licences WHERE track_id = $1
             ORDER BY starts_at IS NOT NULL, starts_at, ends_at IS NULL, ends_at, territories",
        )
        .bind(track.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(licence).collect()
    }

    /// Gives tracks recorded before artists and albums were entities their entities. Cheap
    /// when there are none; run at open.
    pub(super) async fn link_unlinked(&self, now: u64) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, artist, featuring, album, label_id, release_at FROM tracks t
             WHERE NOT EXISTS (SELECT 1 FROM track_artists a WHERE a.track_id = t.id)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut linked = 0;
        for row in &rows {
            let id: TrackId = parse(&row.try_get::<String, _>("id")?)?;
            let artist: String = row.try_get("artist")?;
            let featuring: Vec<String> = row
                .try_get::<Option<String>, _>("featuring")?
                .map(|json| serde_json::from_str(&json).map_err(super::corrupt))
                .transpose()?
                .unwrap_or_default();
            let album: Option<String> = row.try_get("album")?;
            let label: Option<String> = row.try_get("label_id")?;
            let credits = Credits {
                artists: std::iter::once(artist.as_str())
                    .chain(featuring.iter().map(String::as_str))
                    .collect(),
                album: album.as_deref(),
                label_id: label.as_deref(),
                release_at: secs(row.try_get("release_at")?),
            };
            let mut tx = self.write_tx().await?;
            let out = link(&mut tx, &id, &credits, now).await;
            super::finish(tx, out).await?;
            linked += 1;
        }
        Ok(linked)
    }

    /// The artist whose name compares equal to `name`.
    pub async fn artist_by_name(&self, name: &str) -> Result<Option<ArtistId>, StoreError> {
        sqlx::query("SELECT id FROM artists WHERE name_key = $1")
            .bind(name_key(name))
            .fetch_optional(&self.pool)
            .await?
            .map(|row| parse(&row.try_get::<String, _>("id")?))
            .transpose()
    }

    /// An album with its playable tracks in album order.
    pub async fn album(&self, id: &AlbumId, now: u64) -> Result<Option<AlbumView>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT al.title, al.artist_id, al.label_id, al.release_at, ar.name
             FROM albums al JOIN artists ar ON ar.id = al.artist_id WHERE al.id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let tracks = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS} FROM tracks t WHERE t.album_id = $1 AND {LISTED}
             ORDER BY t.track_number IS NULL, t.track_number, t.created_at, t.id"
        )))
        .bind(id.as_str())
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(AlbumView {
            album_id: id.clone(),
            title: row.try_get("title")?,
            artist_id: parse(&row.try_get::<String, _>("artist_id")?)?,
            artist: row.try_get("name")?,
            label_id: row.try_get("label_id")?,
            release_at: secs(row.try_get("release_at")?),
            tracks: tracks.iter().map(summary).collect::<Result<_, _>>()?,
        }))
    }

    /// An artist, their albums (newest release first) and the playable tracks that credit
    /// them, at most `limit`.
    pub async fn artist(
        &self,
        id: &ArtistId,
        now: u64,
        limit: u32,
        after: Option<&TrackCursor>,
    ) -> Result<Option<ArtistView>, StoreError> {
        let Some(row) = sqlx::query("SELECT name FROM artists WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let albums = sqlx::query(
            "SELECT id, title, release_at FROM albums WHERE artist_id = $1
             ORDER BY release_at IS NULL, release_at DESC, created_at DESC",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        // Keyset pagination: newest first, ties by id, so a page never repeats or skips a
        // track however many are added meanwhile.
        let (before_at, after_id) = match after {
            Some(c) => (c.created_at, c.track_id.as_str().to_owned()),
            None => (i64::MAX, String::new()),
        };
        let mut tracks = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUMMARY_COLUMNS}, t.created_at FROM tracks t
             JOIN track_artists ta ON ta.track_id = t.id
             WHERE ta.artist_id = $1 AND {LISTED}
               AND (t.created_at < $4 OR (t.created_at = $4 AND t.id > $5))
             ORDER BY t.created_at DESC, t.id LIMIT $3"
        )))
        .bind(id.as_str())
        .bind(now as i64)
        .bind(i64::from(limit) + 1)
        .bind(before_at)
        .bind(after_id)
        .fetch_all(&self.pool)
        .await?;
        let more = tracks.len() > limit as usize;
        tracks.truncate(limit as usize);
        let next_cursor = match tracks.last() {
            Some(last) if more => Some(
                TrackCursor {
                    created_at: last.try_get("created_at")?,
                    track_id: parse(&last.try_get::<String, _>("id")?)?,
                }
                .to_string(),
            ),
            _ => None,
        };
        Ok(Some(ArtistView {
            artist_id: id.clone(),
            name: row.try_get("name")?,
            albums: albums
                .iter()
                .map(|a| {
                    Ok(AlbumSummary {
                        album_id: parse(&a.try_get::<String, _>("id")?)?,
                        title: a.try_get("title")?,
                        release_at: secs(a.try_get("release_at")?),
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            tracks: tracks.iter().map(summary).collect::<Result<_, _>>()?,
            next_cursor,
        }))
    }
}

/// Where a page of an artist's tracks ended: `{created_at}.{track_id}` in the API, opaque
/// to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackCursor {
    created_at: i64,
    track_id: TrackId,
}

impl std::fmt::Display for TrackCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.created_at, self.track_id)
    }
}

impl std::str::FromStr for TrackCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("cursor {s:?} is not one this API gave");
        let (at, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            created_at: at.parse().map_err(|_| bad())?,
            track_id: id.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::name_key;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        use super::TrackCursor;
        let id = cadenza_common::TrackId::random();
        let c: TrackCursor = format!("1700000000.{id}").parse().unwrap();
        assert_eq!(c.to_string(), format!("1700000000.{id}"));
        for junk in ["", ".", "12", "x.y", &format!("x.{id}"), "12.not-an-id"] {
            assert!(junk.parse::<TrackCursor>().is_err(), "{junk:?}");
        }
    }

    #[test]
    fn names_compare_without_case_or_spacing() {
        assert_eq!(name_key("  The   Beatles "), "the beatles");
        assert_eq!(name_key("Björk"), name_key("BJÖRK"));
        assert_ne!(name_key("Bjork"), name_key("Björk"));
    }
}
