//! The catalogue store's contract, run against every backend (SQLite, and PostgreSQL when
//! `CADENZA_POSTGRES_URL` is set): idempotent registration, the job lease life cycle,
//! concurrent leasers, takedown, and label keys.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::HashSet;
use std::time::Duration;

use cadenza_common::{
    AcousticFeatures, ContentKey, FileId, IngestRequest, JobOutcome, Loudness, Quality,
    RenditionRecord, SeekIndex, Territories, TrackId, TrackRegistration, TrackStatus, UploadId,
};
use cadenza_control_plane::{Store, StoreError};

fn registration(label: &str, isrc: Option<&str>, master: &str) -> TrackRegistration {
    TrackRegistration {
        ingest: IngestRequest {
            upload_id: UploadId::random(),
            title: "Title".into(),
            artist: "Artist".into(),
            featuring: vec!["Guest".into()],
            isrc: isrc.map(str::to_owned),
            territories: "DE,FR".parse::<Territories>().unwrap(),
            album: Some("Album".into()),
            track_number: Some(3),
            release_at: Some(1_000),
            licences: Vec::new(),
        },
        label_id: label.to_owned(),
        master_sha256: master.to_owned(),
    }
}

fn completed() -> JobOutcome {
    JobOutcome::Completed {
        renditions: Quality::ALL
            .iter()
            .enumerate()
            .map(|(i, &quality)| RenditionRecord {
                quality,
                file_id: FileId::from_bytes(&[i as u8 + 1; 32]),
                size: 5_000_000_000 + i as u64, // past 32 bits
                bitrate_kbps: quality.kbps(),
                key: ContentKey::random(),
                plaintext_sha256: "ab".repeat(32),
                seek_index: SeekIndex {
                    header_bytes: 4000,
                    frames: 441_000,
                    points: Vec::new(),
                },
            })
            .collect(),
        master_frames: 3_000_000_000, // a long high-rate master: past 32 bits
        master_sample_rate: 384_000,
        loudness: Loudness {
            integrated_lufs: -9.25,
            true_peak_dbtp: -0.5,
            track_gain_db: -4.75,
        },
        features: AcousticFeatures {
            tempo_bpm: Some(120.5),
            spectral_centroid_hz: 2000.0,
            energy_dbfs: -20.0,
            dynamics_db: 12.0,
        },
    }
}

#[tokio::test]
async fn registration_is_idempotent_and_owned() {
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("A", 1).await.unwrap();
        let b = s.ensure_label("B", 1).await.unwrap();
        let reg = registration(&a, Some("USRC17607839"), &"11".repeat(32));
        let first = s.create_track(&reg, 10).await.unwrap();
        assert!(!first.duplicate, "{}", t.name());
        // The same upload again, and the same ISRC and master by another upload.
        let again = s.create_track(&reg, 11).await.unwrap();
        assert!(
            again.duplicate && again.track_id == first.track_id,
            "{}",
            t.name()
        );
        let mut other_upload = reg.clone();
        other_upload.ingest.upload_id = UploadId::random();
        let same = s.create_track(&other_upload, 12).await.unwrap();
        assert_eq!(same.track_id, first.track_id, "{}", t.name());
        // Another label with the same ISRC and master is refused.
        let mut theirs = other_upload.clone();
        theirs.label_id = b.clone();
        theirs.ingest.upload_id = UploadId::random();
        assert!(
            matches!(
                s.create_track(&theirs, 13).await,
                Err(StoreError::Conflict(_))
            ),
            "{}",
            t.name()
        );
        // The same ISRC with a different master is a new track.
        let remaster = registration(&a, Some("USRC17607839"), &"22".repeat(32));
        assert!(!s.create_track(&remaster, 14).await.unwrap().duplicate);
        let view = s.track(&first.track_id).await.unwrap().unwrap();
        assert_eq!(view.status, TrackStatus::Received);
        assert_eq!(view.featuring, ["Guest"]);
        assert_eq!(view.track_number, Some(3));
        assert_eq!(view.release_at, Some(1_000));
        assert_eq!(view.label_id.as_deref(), Some(a.as_str()));
        assert_eq!(view.territories.to_string(), "DE,FR");
    }
}

#[tokio::test]
async fn a_job_is_leased_extended_and_completed_once() {
    for t in support::stores().await {
        let s = &t.store;
        let label = s.ensure_label("L", 1).await.unwrap();
        let track = s
            .create_track(&registration(&label, None, &"33".repeat(32)), 100)
            .await
            .unwrap()
            .track_id;
        let lease = Duration::from_secs(60);
        let first = s.lease_job(100, lease, 3).await.unwrap().unwrap();
        assert_eq!((first.attempt, first.lease_expires_at), (1, 160));
        assert!(
            s.lease_job(120, lease, 3).await.unwrap().is_none(),
            "{}",
            t.name()
        );
        assert_eq!(
            s.track(&track).await.unwrap().unwrap().status,
            TrackStatus::Transcoding
        );
        assert_eq!(
            s.extend_lease(&first.job_id, 1, 150, lease).await.unwrap(),
            Some(210)
        );
        // The worker dies: after the lease runs out another worker takes attempt 2, and the
        // first worker's lease is gone.
        let second = s.lease_job(211, lease, 3).await.unwrap().unwrap();
        assert_eq!(
            (second.job_id.clone(), second.attempt),
            (first.job_id.clone(), 2)
        );
        assert_eq!(
            s.extend_lease(&first.job_id, 1, 212, lease).await.unwrap(),
            None
        );
        s.complete_job(&second.job_id, &completed()).await.unwrap();
        // A repeated report changes nothing.
        s.complete_job(&second.job_id, &completed()).await.unwrap();
        let view = s.track(&track).await.unwrap().unwrap();
        assert_eq!(view.status, TrackStatus::Ready, "{}", t.name());
        assert_eq!(view.renditions.len(), 3);
        assert_eq!(view.duration_ms, Some(3_000_000_000 * 1000 / 384_000));
        assert_eq!(view.loudness.unwrap().integrated_lufs, -9.25);
        assert_eq!(view.features.unwrap().tempo_bpm, Some(120.5));
        let keys = s.renditions(&track).await.unwrap();
        assert_eq!(keys[2].size, 5_000_000_002);
        assert_eq!(
            keys.iter().map(|r| r.quality).collect::<Vec<_>>(),
            Quality::ALL
        );
        assert_eq!(s.job_state(&track).await.unwrap(), Some(("done".into(), 2)));
        assert!(s.lease_job(10_000, lease, 3).await.unwrap().is_none());
    }
}

/// Workers leasing at the same moment never get the same job, and none sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_leasers_each_get_a_different_job() {
    for t in support::stores().await {
        let s = t.store.clone();
        let label = s.ensure_label("L", 1).await.unwrap();
        let jobs = 24;
        for i in 0..jobs {
            s.create_track(&registration(&label, None, &format!("{i:064x}")), 100 + i)
                .await
                .unwrap();
        }
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    loop {
                        match s.lease_job(500, Duration::from_secs(60), 3).await {
                            Ok(Some(lease)) => got.push(lease.job_id.to_string()),
                            Ok(None) => return got,
                            // Not even SQLite's "database is locked": its write
                            // transactions wait for the writer instead.
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(all.len(), jobs as usize, "{}: {all:?}", t.name());
        assert_eq!(
            unique.len(),
            all.len(),
            "{}: a job was leased twice",
            t.name()
        );
    }
}

#[tokio::test]
async fn a_takedown_belongs_to_the_owning_label_and_keeps_its_first_time() {
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("A", 1).await.unwrap();
        let b = s.ensure_label("B", 1).await.unwrap();
        let track = s
            .create_track(&registration(&a, None, &"44".repeat(32)), 100)
            .await
            .unwrap()
            .track_id;
        assert!(!s.take_down(&track, &b, "not theirs", 200).await.unwrap());
        assert!(
            s.track(&track)
                .await
                .unwrap()
                .unwrap()
                .taken_down_at
                .is_none()
        );
        assert!(s.take_down(&track, &a, "rights ended", 300).await.unwrap());
        assert!(s.take_down(&track, &a, "again", 400).await.unwrap());
        assert_eq!(
            s.track(&track).await.unwrap().unwrap().taken_down_at,
            Some(300),
            "{}",
            t.name()
        );
    }
}

#[tokio::test]
async fn label_keys_verify_only_while_live() {
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("Label A", 1).await.unwrap();
        assert_eq!(s.ensure_label(" Label A ", 2).await.unwrap(), a);
        let b = s.ensure_label("Label B", 1).await.unwrap();
        assert_ne!(a, b);
        let ka = s.create_label_key(&a, 3).await.unwrap();
        let kb = s.create_label_key(&b, 3).await.unwrap();
        assert_eq!(
            s.verify_label_key(&ka.api_key).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(s.verify_label_key(&kb.api_key).await.unwrap(), Some(b));
        let forged = format!("{}{}", &ka.api_key[..ka.api_key.len() - 1], "x");
        assert_eq!(s.verify_label_key(&forged).await.unwrap(), None);
        assert_eq!(s.verify_label_key("nope").await.unwrap(), None);
        assert!(s.revoke_label_key(&ka.api_key, 4).await.unwrap());
        assert_eq!(s.verify_label_key(&ka.api_key).await.unwrap(), None);
        assert!(!s.revoke_label_key(&ka.api_key, 5).await.unwrap());
        assert!(s.ensure_label("", 1).await.is_err(), "{}", t.name());
    }
}

/// Opening the same database twice (a restart, or two control planes starting together)
/// migrates once and keeps what was there.
#[tokio::test]
async fn reopening_migrates_once_and_keeps_the_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("c.sqlite").display()
    )];
    if let Ok(admin) = std::env::var("CADENZA_POSTGRES_URL") {
        urls.push(support::fresh_postgres_database(&admin).await);
    }
    for url in urls {
        let (one, two) = tokio::join!(Store::open(&url), Store::open(&url));
        let (one, two) = (one.unwrap(), two.unwrap());
        let label = one.ensure_label("L", 1).await.unwrap();
        drop((one, two));
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.ensure_label("L", 2).await.unwrap(), label);
    }
    assert!(matches!(
        Store::open("mysql://localhost/x").await,
        Err(StoreError::Invalid(_))
    ));
}

/// Leases and completes every queued job, so the tracks are ready.
async fn finish_all(s: &Store) {
    while let Some(job) = s.lease_job(50, Duration::from_secs(60), 3).await.unwrap() {
        let mut outcome = completed();
        if let JobOutcome::Completed { renditions, .. } = &mut outcome {
            for r in renditions.iter_mut() {
                r.file_id = FileId::random();
            }
        }
        s.complete_job(&job.job_id, &outcome).await.unwrap();
    }
}

#[tokio::test]
async fn artists_and_albums_are_entities_shared_by_name() {
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("A", 1).await.unwrap();
        let b = s.ensure_label("B", 1).await.unwrap();
        let mut first = registration(&a, None, &"01".repeat(32));
        first.ingest.track_number = Some(2);
        first.ingest.title = "Second".into();
        let mut second = registration(&a, None, &"02".repeat(32));
        second.ingest.track_number = Some(1);
        second.ingest.title = "First".into();
        // Another label, the same artist written differently, on no album.
        let mut single = registration(&b, None, &"03".repeat(32));
        single.ingest.artist = "  ARTIST ".into();
        single.ingest.album = None;
        single.ingest.featuring = Vec::new();
        single.ingest.title = "Single".into();
        let mut tracks = Vec::new();
        for r in [&first, &second, &single] {
            tracks.push(s.create_track(r, 10).await.unwrap().track_id);
        }
        finish_all(s).await;
        let mut views = Vec::new();
        for id in &tracks {
            views.push(s.track(id).await.unwrap().unwrap());
        }
        let artist = views[0].artist_id.clone().unwrap();
        assert!(
            views.iter().all(|v| v.artist_id.as_ref() == Some(&artist)),
            "{}",
            t.name()
        );
        let album = views[0].album_id.clone().unwrap();
        assert_eq!(views[1].album_id.as_ref(), Some(&album));
        assert_eq!(views[2].album_id, None);

        let page = s.album(&album, 100).await.unwrap().unwrap();
        assert_eq!(page.title, "Album");
        assert_eq!(page.artist, "Artist");
        let order: Vec<_> = page.tracks.iter().map(|t| t.title.as_str()).collect();
        assert_eq!(order, ["First", "Second"], "{}", t.name());
        assert_eq!(
            page.tracks[0].duration_ms,
            Some(3_000_000_000 * 1000 / 384_000)
        );

        let artist_page = s.artist(&artist, 100, 500, None).await.unwrap().unwrap();
        assert_eq!(artist_page.name, "Artist");
        assert_eq!(artist_page.albums.len(), 1);
        assert_eq!(artist_page.tracks.len(), 3);
        assert_eq!(artist_page.next_cursor, None);
        // Pages of one: each track once, in the same order, and no cursor after the last.
        let mut paged = Vec::new();
        let mut cursor: Option<cadenza_control_plane::TrackCursor> = None;
        loop {
            let page = s
                .artist(&artist, 100, 1, cursor.as_ref())
                .await
                .unwrap()
                .unwrap();
            assert!(page.tracks.len() <= 1);
            paged.extend(page.tracks.iter().map(|t| t.track_id.clone()));
            match page.next_cursor {
                Some(next) => cursor = Some(next.parse().unwrap()),
                None => break,
            }
            assert!(paged.len() <= 3, "pagination does not end");
        }
        let whole: Vec<_> = artist_page
            .tracks
            .iter()
            .map(|t| t.track_id.clone())
            .collect();
        assert_eq!(paged, whole);
        // The featured artist is credited on the album tracks only.
        let guest = s
            .artist_by_name("guest")
            .await
            .unwrap()
            .expect("featured artist is an entity");
        let guest_page = s.artist(&guest, 100, 500, None).await.unwrap().unwrap();
        assert_eq!(guest_page.tracks.len(), 2);
        assert!(guest_page.albums.is_empty());

        // A taken-down track leaves the listings.
        s.take_down(&tracks[1], &a, "rights", 200).await.unwrap();
        let page = s.album(&album, 300).await.unwrap().unwrap();
        assert_eq!(page.tracks.len(), 1);
        assert_eq!(
            s.artist(&artist, 300, 500, None)
                .await
                .unwrap()
                .unwrap()
                .tracks
                .len(),
            2
        );
        assert!(
            s.album(&cadenza_common::AlbumId::random(), 1)
                .await
                .unwrap()
                .is_none()
        );
    }
}

#[tokio::test]
async fn licence_windows_are_stored_and_checked() {
    use cadenza_common::Licence;
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("A", 1).await.unwrap();
        let mut reg = registration(&a, None, &"04".repeat(32));
        reg.ingest.licences = vec![
            "WW,-CN@5000000000..".parse::<Licence>().unwrap(),
            "GB,SE@..5000000000".parse().unwrap(),
        ];
        let id = s.create_track(&reg, 10).await.unwrap().track_id;
        let view = s.track(&id).await.unwrap().unwrap();
        assert_eq!(view.licences.len(), 2);
        assert_eq!(view.licences[0].territories.to_string(), "GB,SE");
        assert_eq!(view.licences[0].ends_at, Some(5_000_000_000));
        assert_eq!(view.licences[1].starts_at, Some(5_000_000_000));

        // Without windows, the territories hold for all time.
        let plain = s
            .create_track(&registration(&a, None, &"05".repeat(32)), 10)
            .await
            .unwrap();
        let view = s.track(&plain.track_id).await.unwrap().unwrap();
        assert_eq!(view.licences, [Licence::always("DE,FR".parse().unwrap())]);

        // A window that ends before it starts is refused, and nothing is recorded.
        let mut bad = registration(&a, None, &"06".repeat(32));
        bad.ingest.licences = vec![Licence {
            territories: Territories::worldwide(),
            starts_at: Some(20),
            ends_at: Some(10),
        }];
        assert!(matches!(
            s.create_track(&bad, 10).await,
            Err(StoreError::Invalid(_))
        ));
        bad.ingest.licences.clear();
        assert!(!s.create_track(&bad, 10).await.unwrap().duplicate);
    }
}

#[tokio::test]
async fn search_documents_follow_the_catalogue() {
    use cadenza_control_plane::search::{Change, Kind, Query, SearchIndex};
    for t in support::stores().await {
        let s = &t.store;
        let a = s.ensure_label("A", 1).await.unwrap();
        let mut reg = registration(&a, None, &"07".repeat(32));
        reg.ingest.title = "Wonderwall".into();
        reg.ingest.artist = "Oasis".into();
        let id = s.create_track(&reg, 10).await.unwrap().track_id;
        // Not ready yet: nothing to find.
        assert!(s.search_docs(100).await.unwrap().is_empty(), "{}", t.name());
        finish_all(s).await;
        s.add_plays(&[(id.clone(), 5)]).await.unwrap();
        s.add_plays(&[(id.clone(), 2)]).await.unwrap();
        let docs = s.search_docs(100).await.unwrap();
        // Plays are every document's popularity: the track's own, summed for its album and
        // artists.
        assert!(
            docs.iter().all(|d| d.hit.popularity == 7),
            "{}: {docs:?}",
            t.name()
        );
        let kinds: HashSet<Kind> = docs.iter().map(|d| d.hit.kind).collect();
        assert_eq!(docs.len(), 4, "track, album, artist and guest: {docs:?}");
        assert_eq!(kinds.len(), 3);
        let track = docs
            .iter()
            .find(|d| d.hit.kind == Kind::Track)
            .unwrap()
            .clone();
        assert_eq!(track.hit.album.as_deref(), Some("Album"));
        // DE,FR only and embargoed until 1000: checked at query time.
        assert!(track.rights.is_some());

        let index = std::sync::Arc::new(SearchIndex::new(docs));
        let find = |text: &str, country: &str, now: u64| {
            index
                .search(
                    &Query {
                        text: text.into(),
                        country: Some(country.into()),
                        offset: 0,
                        limit: 10,
                    },
                    now,
                )
                .hits
                .iter()
                .map(|h| h.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(find("wonderwal", "DE", 2_000), [Kind::Track]);
        assert!(find("wonderwal", "DE", 500).is_empty(), "embargoed");
        assert!(
            find("wonderwal", "GB", 2_000).is_empty(),
            "not licensed in GB"
        );
        // Albums and artists are found where and when one of their tracks plays: the artist
        // by name, then the track and its album (tied) by their artist.
        let found = find("oasis", "DE", 2_000);
        assert_eq!(found.first(), Some(&Kind::Artist));
        assert_eq!(
            found[1..].iter().copied().collect::<HashSet<_>>(),
            HashSet::from([Kind::Track, Kind::Album])
        );
        assert!(
            find("oasis", "GB", 2_000).is_empty(),
            "no track plays in GB"
        );
        assert!(find("oasis", "DE", 500).is_empty(), "embargoed");
        // A change to the track carries the same rights to its album and artists.
        let changes = s.search_changes_for(&id, 2_000).await.unwrap();
        let groupings: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Upsert(d) if d.hit.kind != Kind::Track => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(groupings.len(), 3, "{}: {changes:?}", t.name());
        assert!(
            groupings.iter().all(|d| d.rights == track.rights),
            "{}: {groupings:?}",
            t.name()
        );

        s.take_down(&id, &a, "rights", 3_000).await.unwrap();
        let changes = s.search_changes_for(&id, 3_001).await.unwrap();
        assert!(
            changes.contains(&Change::Remove(Kind::Track, id.as_str().to_owned())),
            "{changes:?}"
        );
        // Its album and artists have no listed track left.
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::Remove(..)))
                .count(),
            4,
            "{}: {changes:?}",
            t.name()
        );
        index.apply(changes);
        assert!(find("oasis", "GB", 3_001).is_empty());
    }
}

/// Registers a track and completes its job with fresh file ids; returns the track and the
/// renditions sent.
async fn ready_track(s: &Store, label: &str, master: &str) -> (TrackId, Vec<RenditionRecord>) {
    s.create_track(&registration(label, None, master), 10)
        .await
        .unwrap();
    let job = s
        .lease_job(50, Duration::from_secs(60), 3)
        .await
        .unwrap()
        .unwrap();
    let mut outcome = completed();
    let JobOutcome::Completed { renditions, .. } = &mut outcome else {
        unreachable!()
    };
    for r in renditions.iter_mut() {
        r.file_id = FileId::random();
    }
    let sent = renditions.clone();
    let track = s.complete_job(&job.job_id, &outcome).await.unwrap();
    assert_eq!(s.renditions(&track).await.unwrap(), sent);
    (track, sent)
}

/// The stored form of each rendition's key: (clear key hex, sealed key).
async fn stored_keys(s: &Store) -> Vec<(String, Option<String>)> {
    use sqlx::Row;
    sqlx::query("SELECT key_hex, sealed_key FROM renditions ORDER BY file_id")
        .fetch_all(s.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("key_hex"), r.get("sealed_key")))
        .collect()
}

#[tokio::test]
async fn content_keys_are_sealed_at_rest_and_a_master_key_rotation_reseals_them() {
    use cadenza_control_plane::{KeyRing, MasterKey};
    for t in support::stores().await {
        let clear = &t.store;
        let a = clear.ensure_label("A", 1).await.unwrap();
        // A catalogue from before envelope encryption: keys in the clear.
        let early = ready_track(clear, &a, &"08".repeat(32)).await;
        assert!(
            stored_keys(clear)
                .await
                .iter()
                .all(|(k, s)| k.len() == 32 && s.is_none())
        );

        let first = MasterKey::generate();
        let sealed = clear
            .clone()
            .with_master_keys(KeyRing::new(first.clone(), []));
        let late = ready_track(&sealed, &a, &"09".repeat(32)).await;
        assert_eq!(sealed.reseal_keys().await.unwrap(), 3, "{}", t.name());
        let prefix = format!("v1:{}:", first.id());
        let keys = stored_keys(&sealed).await;
        assert!(
            keys.iter()
                .all(|(k, s)| k.is_empty() && s.as_deref().is_some_and(|s| s.starts_with(&prefix))),
            "{keys:?}"
        );

        // Rotation: a new master key seals everything again; the content keys are the same.
        let second = MasterKey::generate();
        let rotated = clear
            .clone()
            .with_master_keys(KeyRing::new(second.clone(), [first.clone()]));
        assert_eq!(rotated.reseal_keys().await.unwrap(), 6);
        assert_eq!(rotated.reseal_keys().await.unwrap(), 0, "idempotent");
        let only_new = clear.clone().with_master_keys(KeyRing::new(second, []));
        let only_old = clear.clone().with_master_keys(KeyRing::new(first, []));
        for (track, sent) in [&early, &late] {
            assert_eq!(&only_new.renditions(track).await.unwrap(), sent);
            // The retired key opens nothing any more, and without a key nothing opens.
            assert!(matches!(
                only_old.renditions(track).await,
                Err(StoreError::Internal(_))
            ));
            assert!(matches!(
                clear.renditions(track).await,
                Err(StoreError::Internal(_))
            ));
        }

        // A sealed key moved to another rendition does not open there.
        sqlx::query(
            "UPDATE renditions SET sealed_key = (SELECT sealed_key FROM renditions WHERE file_id = $1)
             WHERE file_id = $2",
        )
        .bind(early.1[0].file_id.as_str())
        .bind(early.1[1].file_id.as_str())
        .execute(clear.pool())
        .await
        .unwrap();
        assert!(matches!(
            only_new.renditions(&early.0).await,
            Err(StoreError::Corrupt(_))
        ));
    }
}

#[tokio::test]
async fn accounts_sign_in_refresh_once_and_are_exported_and_deleted() {
    use cadenza_control_plane::{ClientKind, Refreshed};
    for t in support::stores().await {
        let s = &t.store;
        let user = s
            .create_user("Ann@Example.com", "correct horse", 10)
            .await
            .unwrap();
        assert!(matches!(
            s.create_user(" ann@example.COM", "another one", 11).await,
            Err(StoreError::Conflict(_))
        ));
        for (email, pass) in [("not-an-email", "long enough"), ("b@example.com", "short")] {
            assert!(matches!(
                s.create_user(email, pass, 12).await,
                Err(StoreError::Invalid(_))
            ));
        }
        assert_eq!(
            s.sign_in("ann@example.com", "correct horse")
                .await
                .unwrap()
                .as_deref(),
            Some(user.as_str())
        );
        assert_eq!(
            s.sign_in("ann@example.com", "wrong horse").await.unwrap(),
            None
        );
        assert_eq!(
            s.sign_in("nobody@example.com", "correct horse")
                .await
                .unwrap(),
            None
        );

        let app = s
            .create_client("Player", ClientKind::FirstParty, 10)
            .await
            .unwrap();
        assert!(app.client_secret.is_none());
        let svc = s
            .create_client("Label backend", ClientKind::Service, 10)
            .await
            .unwrap();
        let secret = svc.client_secret.clone().unwrap();
        assert_eq!(
            s.verify_client(&app.client_id, None).await.unwrap(),
            Some(ClientKind::FirstParty)
        );
        assert_eq!(
            s.verify_client(&app.client_id, Some("x")).await.unwrap(),
            None
        );
        assert_eq!(
            s.verify_client(&svc.client_id, Some(&secret))
                .await
                .unwrap(),
            Some(ClientKind::Service)
        );
        assert_eq!(
            s.verify_client(&svc.client_id, Some("wrong"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(s.verify_client(&svc.client_id, None).await.unwrap(), None);

        // A refresh token works once, for its client, until it expires.
        let first = s
            .issue_refresh(&user, &app.client_id, 100, 1_000)
            .await
            .unwrap();
        assert_eq!(
            s.use_refresh(&first, &svc.client_id, 101, 1_000)
                .await
                .unwrap(),
            Refreshed::Refused
        );
        let Refreshed::Rotated {
            user_id,
            token: second,
        } = s
            .use_refresh(&first, &app.client_id, 102, 1_000)
            .await
            .unwrap()
        else {
            panic!("{}: the first use rotates", t.name());
        };
        assert_eq!(user_id, user);
        let expired = s
            .issue_refresh(&user, &app.client_id, 100, 5)
            .await
            .unwrap();
        assert_eq!(
            s.use_refresh(&expired, &app.client_id, 105, 1_000)
                .await
                .unwrap(),
            Refreshed::Refused
        );
        // The first token again: someone holds a copy; every session of the user ends.
        assert_eq!(
            s.use_refresh(&first, &app.client_id, 103, 1_000)
                .await
                .unwrap(),
            Refreshed::Refused
        );
        assert_eq!(
            s.use_refresh(&second, &app.client_id, 104, 1_000)
                .await
                .unwrap(),
            Refreshed::Refused
        );
        for junk in ["", "rt_", "rt_x_y", "bearer"] {
            assert_eq!(
                s.use_refresh(junk, &app.client_id, 104, 1_000)
                    .await
                    .unwrap(),
                Refreshed::Refused
            );
        }

        let export = s.export_user(&user).await.unwrap().unwrap();
        assert_eq!(export.email, "ann@example.com");
        assert_eq!(export.sessions.len(), 3);
        assert!(export.sessions.iter().all(|x| x.revoked_at.is_some()));
        let text = serde_json::to_string(&export).unwrap();
        assert!(
            !text.contains("argon2"),
            "no password hash in an export: {text}"
        );

        assert!(s.delete_user(&user).await.unwrap());
        assert!(!s.delete_user(&user).await.unwrap());
        assert!(s.export_user(&user).await.unwrap().is_none());
        assert_eq!(
            s.sign_in("ann@example.com", "correct horse").await.unwrap(),
            None
        );
        // The email can be used again.
        s.create_user("ann@example.com", "correct horse", 200)
            .await
            .unwrap();
    }
}
