//! What the search index is built from: listed tracks with their rights, and the albums and
//! artists that have listed tracks, with plays as popularity.

use std::collections::HashMap;

use cadenza_common::{Licence, TrackId};
use sqlx::Row;

use super::{Store, StoreError, secs};
use crate::search::{Change, DocRights, Hit, Kind, SearchDoc, grouping_rights};

fn plays(v: Option<i64>) -> u64 {
    v.map_or(0, |p| p.max(0) as u64)
}

fn track_doc(row: &sqlx::any::AnyRow, licences: Vec<Licence>) -> Result<SearchDoc, StoreError> {
    Ok(SearchDoc {
        hit: Hit {
            kind: Kind::Track,
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            artist: Some(row.try_get("artist")?),
            album: row.try_get("album")?,
            popularity: plays(row.try_get("plays")?),
        },
        rights: track_rights(row, licences)?,
    })
}

/// Licence rows (with `track_id`) grouped by track.
fn by_track(rows: Vec<sqlx::any::AnyRow>) -> Result<HashMap<String, Vec<Licence>>, StoreError> {
    let mut out: HashMap<String, Vec<Licence>> = HashMap::new();
    for row in &rows {
        out.entry(row.try_get("track_id")?)
            .or_default()
            .push(super::catalogue::licence(row)?);
    }
    Ok(out)
}

/// A track's rights from a row with `release_at` and `taken_down_at`; `None` when open.
fn track_rights(
    row: &sqlx::any::AnyRow,
    licences: Vec<Licence>,
) -> Result<Option<Vec<DocRights>>, StoreError> {
    Ok(DocRights {
        release_at: secs(row.try_get("release_at")?),
        taken_down_at: secs(row.try_get("taken_down_at")?),
        licences,
    }
    .restricting()
    .map(|r| vec![r]))
}

/// Which listed tracks each album (`Kind::Album`) or artist belongs to, keyed by its id.
const MEMBERS: [(Kind, &str); 2] = [
    (
        Kind::Album,
        "SELECT t.album_id AS owner, t.id FROM tracks t
         WHERE t.album_id IS NOT NULL AND LISTED",
    ),
    (
        Kind::Artist,
        "SELECT ta.artist_id AS owner, t.id FROM track_artists ta
         JOIN tracks t ON t.id = ta.track_id WHERE LISTED",
    ),
];

/// An album or artist document from a row of `id`, `title`, `name` (the album's artist) and
/// `plays` (summed over its listed tracks).
fn grouping_doc(row: &sqlx::any::AnyRow, kind: Kind) -> Result<SearchDoc, StoreError> {
    Ok(SearchDoc {
        hit: Hit {
            kind,
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            artist: row.try_get("name")?,
            album: None,
            popularity: plays(row.try_get("plays")?),
        },
        rights: None,
    })
}

const TRACK_COLUMNS: &str =
    "t.id, t.title, t.artist, t.album, t.plays, t.release_at, t.taken_down_at";

impl Store {
    /// Adds plays counted since the last call, in one transaction.
    pub async fn add_plays(&self, plays: &[(TrackId, u64)]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let out = async {
            for (track, n) in plays {
                sqlx::query("UPDATE tracks SET plays = plays + $1 WHERE id = $2")
                    .bind(i64::try_from(*n).unwrap_or(i64::MAX))
                    .bind(track.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }
        .await;
        super::finish(tx, out).await
    }

    /// Every searchable document: ready tracks not taken down by `now`, and the albums and
    /// artists they belong to.
    pub async fn search_docs(&self, now: u64) -> Result<Vec<SearchDoc>, StoreError> {
        let mut licences = by_track(
            sqlx::query("SELECT track_id, territories, starts_at, ends_at FROM licences")
                .fetch_all(&self.pool)
                .await?,
        )?;
        let listed = "t.status = 'ready' AND (t.taken_down_at IS NULL OR t.taken_down_at > $1)";
        let mut docs = Vec::new();
        for row in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRACK_COLUMNS} FROM tracks t WHERE {listed}"
        )))
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await?
        {
            let id: String = row.try_get("id")?;
            let l = licences.remove(&id).unwrap_or_default();
            docs.push(track_doc(&row, l)?);
        }
        // An album or artist is findable where any of its listed tracks plays.
        let rights: HashMap<&str, &Option<Vec<DocRights>>> = docs
            .iter()
            .map(|d| (d.hit.id.as_str(), &d.rights))
            .collect();
        let mut members: HashMap<(Kind, String), Vec<String>> = HashMap::new();
        for (kind, sql) in MEMBERS {
            for row in sqlx::query(sqlx::AssertSqlSafe(sql.replace("LISTED", listed)))
                .bind(now as i64)
                .fetch_all(&self.pool)
                .await?
            {
                members
                    .entry((kind, row.try_get("owner")?))
                    .or_default()
                    .push(row.try_get("id")?);
            }
        }
        let mut grouped = HashMap::new();
        for ((kind, owner), tracks) in &members {
            let of_tracks = tracks
                .iter()
                .filter_map(|t| rights.get(t.as_str()).copied());
            grouped.insert((*kind, owner.clone()), grouping_rights(of_tracks));
        }
        let albums = format!(
            "SELECT al.id, al.title, ar.name, CAST(SUM(t.plays) AS BIGINT) AS plays
             FROM albums al JOIN artists ar ON ar.id = al.artist_id
             JOIN tracks t ON t.album_id = al.id
             WHERE {listed} GROUP BY al.id, al.title, ar.name"
        );
        let artists = format!(
            "SELECT ar.id, ar.name AS title, CAST(NULL AS TEXT) AS name,
                    CAST(SUM(t.plays) AS BIGINT) AS plays
             FROM artists ar JOIN track_artists ta ON ta.artist_id = ar.id
             JOIN tracks t ON t.id = ta.track_id
             WHERE {listed} GROUP BY ar.id, ar.name"
        );
        for (kind, sql) in [(Kind::Album, albums), (Kind::Artist, artists)] {
            for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now as i64)
                .fetch_all(&self.pool)
                .await?
            {
                let mut doc = grouping_doc(&row, kind)?;
                doc.rights = grouped.remove(&(kind, doc.hit.id.clone())).flatten();
                docs.push(doc);
            }
        }
        Ok(docs)
    }

    /// The rights of one album or artist from its listed tracks' (see
    /// [`grouping_rights`]).
    async fn grouping_rights_of(
        &self,
        kind: Kind,
        id: &str,
        now: u64,
    ) -> Result<Option<Vec<DocRights>>, StoreError> {
        let listed = "t.status = 'ready' AND (t.taken_down_at IS NULL OR t.taken_down_at > $2)";
        let (tracks_of, licences_of) = match kind {
            Kind::Album => (
                "FROM tracks t WHERE t.album_id = $1",
                "FROM licences l JOIN tracks t ON t.id = l.track_id WHERE t.album_id = $1",
            ),
            _ => (
                "FROM track_artists ta JOIN tracks t ON t.id = ta.track_id WHERE ta.artist_id = $1",
                "FROM licences l JOIN tracks t ON t.id = l.track_id
                 JOIN track_artists ta ON ta.track_id = t.id WHERE ta.artist_id = $1",
            ),
        };
        let mut licences = by_track(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT l.track_id, l.territories, l.starts_at, l.ends_at {licences_of} AND {listed}"
            )))
            .bind(id)
            .bind(now as i64)
            .fetch_all(&self.pool)
            .await?,
        )?;
        let mut tracks = Vec::new();
        for row in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT t.id, t.release_at, t.taken_down_at {tracks_of} AND {listed}"
        )))
        .bind(id)
        .bind(now as i64)
        .fetch_all(&self.pool)
        .await?
        {
            let track: String = row.try_get("id")?;
            let l = licences.remove(&track).unwrap_or_default();
            tracks.push(track_rights(&row, l)?);
        }
        Ok(grouping_rights(&tracks))
    }

    /// The index changes that a change to `track` makes: the track and its album and
    /// artists, each upserted while listed (ready, not taken down) and removed otherwise.
    pub async fn search_changes_for(
        &self,
        track: &TrackId,
        now: u64,
    ) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::new();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRACK_COLUMNS}, t.status FROM tracks t WHERE t.id = $1"
        )))
        .bind(track.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(out);
        };
        let status: String = row.try_get("status")?;
        let down = secs(row.try_get("taken_down_at")?).is_some_and(|t| t <= now);
        out.push(if status == "ready" && !down {
            Change::Upsert(track_doc(&row, self.licences(track).await?)?)
        } else {
            Change::Remove(Kind::Track, track.as_str().to_owned())
        });
        // Albums and artists are re-read whole: their popularity, and whether any of their
        // tracks is still listed, may have changed.
        let listed = "t.status = 'ready' AND (t.taken_down_at IS NULL OR t.taken_down_at > $2)";
        let album = format!(
            "SELECT al.id, al.title, ar.name,
                    (SELECT CAST(SUM(t.plays) AS BIGINT) FROM tracks t
                      WHERE t.album_id = al.id AND {listed}) AS plays,
                    (SELECT COUNT(*) FROM tracks t WHERE t.album_id = al.id AND {listed}) AS listed
             FROM albums al JOIN artists ar ON ar.id = al.artist_id
             WHERE al.id = (SELECT album_id FROM tracks WHERE id = $1)"
        );
        let artists = format!(
            "SELECT ar.id, ar.name AS title, CAST(NULL AS TEXT) AS name,
                    (SELECT CAST(SUM(t.plays) AS BIGINT) FROM tracks t
                      JOIN track_artists x ON x.track_id = t.id
                      WHERE x.artist_id = ar.id AND {listed}) AS plays,
                    (SELECT COUNT(*) FROM tracks t JOIN track_artists x ON x.track_id = t.id
                      WHERE x.artist_id = ar.id AND {listed}) AS listed
             FROM artists ar JOIN track_artists ta ON ta.artist_id = ar.id
             WHERE ta.track_id = $1"
        );
        for (kind, sql) in [(Kind::Album, album), (Kind::Artist, artists)] {
            for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(track.as_str())
                .bind(now as i64)
                .fetch_all(&self.pool)
                .await?
            {
                let id: String = row.try_get("id")?;
                out.push(if row.try_get::<i64, _>("listed")? == 0 {
                    Change::Remove(kind, id)
                } else {
                    let mut doc = grouping_doc(&row, kind)?;
                    doc.rights = self.grouping_rights_of(kind, &id, now).await?;
                    Change::Upsert(doc)
                });
            }
        }
        Ok(out)
    }
}
