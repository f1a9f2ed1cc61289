//! Search over tracks, albums and artists, as Meilisearch does it: an `fst` term dictionary
//! walked by Levenshtein automata for typos (one from 5 characters, two from 9), the last word
//! taken as a prefix, `roaring` posting lists, and ranking rules (typos, then words in the
//! title, then popularity) applied bucket by bucket so only the top of the ranking is built.
//!
//! The index is a large base segment plus a small delta: an ingest or takedown rebuilds the
//! delta at once (so it is searchable within milliseconds) and hides the base's stale copy;
//! when the delta grows past [`DELTA_LIMIT`] documents, a new base is built on a background
//! thread and swapped in. Only what the listener may play is returned: documents that are not
//! playable everywhere for all time are checked with [`crate::rights::decide`].

mod segment;
mod text;
mod typos;

/// Seeded pseudo-random numbers below `n` (xorshift), for the search tests' generated
/// catalogues and words.
#[cfg(test)]
fn test_numbers(mut seed: u64) -> impl FnMut(usize) -> usize {
    move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    }
}

use std::sync::{Arc, RwLock};
use std::time::Duration;

use cadenza_common::Licence;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

pub use segment::MAX_QUERY_WORDS;
use segment::{QueryWords, Ranked, Segment};
pub use text::{typo_budget, words};

use crate::rights::{self, TrackRights};

/// What a hit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Track,
    Album,
    Artist,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub kind: Kind,
    /// The track, album or artist id.
    pub id: String,
    /// A track's or album's title, an artist's name.
    pub title: String,
    /// The primary artist (tracks and albums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artist: Option<String>,
    /// The album (tracks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub album: Option<String>,
    /// Plays; higher ranks first among equally relevant hits.
    pub popularity: u64,
}

/// What decides whether a listener may find a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRights {
    pub release_at: Option<u64>,
    pub taken_down_at: Option<u64>,
    pub licences: Vec<Licence>,
}

impl DocRights {
    /// `None` when the rights allow everyone always: no check at query time.
    pub fn restricting(self) -> Option<DocRights> {
        let open = self.release_at.is_none()
            && self.taken_down_at.is_none()
            && self.licences.iter().any(|l| {
                l.starts_at.is_none()
                    && l.ends_at.is_none()
                    && l.territories == cadenza_common::Territories::worldwide()
            });
        (!open).then_some(self)
    }
}

/// A document to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDoc {
    pub hit: Hit,
    /// `None`: playable everywhere, always. Otherwise findable where and when any of these
    /// allows: a track's own rights, or one per listed track of an album or artist.
    pub rights: Option<Vec<DocRights>>,
}

/// A change to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert(SearchDoc),
    Remove(Kind, String),
}

/// A query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    pub text: String,
    /// The listener's country; `None` when unknown (then any open licence counts).
    pub country: Option<String>,
    pub offset: usize,
    pub limit: usize,
}

/// Results of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// Documents matching the words, before the rights filter: an upper bound of the total.
    pub estimated_total: u64,
    pub offset: usize,
    pub limit: usize,
}

/// Delta documents beyond which the base is rebuilt.
pub const DELTA_LIMIT: usize = 4096;

/// How long a cached answer may be reused. Any change to the index bypasses the cache at
/// once (answers are keyed by the index's generation); this bounds only how late a licence
/// window's opening or closing shows in search.
const CACHE_TTL: Duration = Duration::from_secs(5);

struct Snapshot {
    generation: u64,
    base: Arc<Segment>,
    /// Base documents replaced by delta documents or removed.
    hidden: RoaringBitmap,
    delta: Arc<Segment>,
    /// Sequence numbers of the delta's documents, by position in `delta_docs`.
    delta_docs: Vec<(u64, SearchDoc)>,
    /// Keys removed since the base was built and not in the delta, with their sequence.
    removed: Vec<(u64, (Kind, String))>,
}

/// The search index: a snapshot behind a lock held only to swap it.
pub struct SearchIndex {
    delta_limit: usize,
    current: RwLock<Arc<Snapshot>>,
    next_seq: std::sync::atomic::AtomicU64,
    rebuilding: std::sync::atomic::AtomicBool,
    cache: moka::sync::Cache<(u64, u64, Query), Arc<SearchResults>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("SearchIndex")
            .field("generation", &s.generation)
            .field("base", &s.base)
            .field("delta", &s.delta)
            .finish()
    }
}

impl SearchIndex {
    /// An index over `docs`.
    pub fn new(docs: Vec<SearchDoc>) -> Self {
        Self::with_delta_limit(docs, DELTA_LIMIT)
    }

    /// An index whose base is rebuilt when the delta passes `delta_limit` documents.
    pub fn with_delta_limit(docs: Vec<SearchDoc>, delta_limit: usize) -> Self {
        Self {
            delta_limit,
            current: RwLock::new(Arc::new(Snapshot {
                generation: 0,
                base: Arc::new(Segment::build(docs)),
                hidden: RoaringBitmap::new(),
                delta: Arc::new(Segment::build(Vec::new())),
                delta_docs: Vec::new(),
                removed: Vec::new(),
            })),
            next_seq: 0.into(),
            rebuilding: false.into(),
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Documents in the index (base less hidden, plus delta).
    pub fn len(&self) -> usize {
        let s = self.snapshot();
        s.base.docs().len() - s.hidden.len() as usize + s.delta.docs().len()
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of posting lists and term dictionaries.
    pub fn index_bytes(&self) -> usize {
        let s = self.snapshot();
        s.base.index_bytes() + s.delta.index_bytes()
    }

    /// Adds or replaces a document; searchable when this returns.
    pub fn upsert(self: &Arc<Self>, doc: SearchDoc) {
        let key = (doc.hit.kind, doc.hit.id.clone());
        self.change(key, Some(doc));
    }

    /// Removes a document.
    pub fn remove(self: &Arc<Self>, kind: Kind, id: &str) {
        self.change((kind, id.to_owned()), None);
    }

    /// Applies `changes` in order.
    pub fn apply(self: &Arc<Self>, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Upsert(doc) => self.upsert(doc),
                Change::Remove(kind, id) => self.remove(kind, &id),
            }
        }
    }

    /// Replaces everything with a fresh base over `docs` (at start).
    pub fn reset(&self, docs: Vec<SearchDoc>) {
        self.reset_keeping(docs, u64::MAX);
    }

    /// The sequence number the next change will get: read it before reading the documents
    /// for [`SearchIndex::reset_keeping`].
    pub fn sequence(&self) -> u64 {
        self.next_seq.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the base with one over `docs` (read from the catalogue after
    /// [`SearchIndex::sequence`] returned `since`), keeping every change made from `since`
    /// on, which `docs` may not show. Slow for a large catalogue: call it off the runtime.
    pub fn reset_keeping(&self, docs: Vec<SearchDoc>, since: u64) {
        let base = Arc::new(Segment::build(docs));
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = guard.clone();
        let delta_docs: Vec<(u64, SearchDoc)> = old
            .delta_docs
            .iter()
            .filter(|(s, _)| *s >= since)
            .cloned()
            .collect();
        let removed: Vec<(u64, (Kind, String))> = old
            .removed
            .iter()
            .filter(|(s, _)| *s >= since)
            .cloned()
            .collect();
        let hidden = delta_docs
            .iter()
            .map(|(_, d)| (d.hit.kind, d.hit.id.clone()))
            .chain(removed.iter().map(|(_, k)| k.clone()))
            .filter_map(|(k, id)| base.position(k, &id))
            .collect();
        *guard = Arc::new(Snapshot {
            generation: old.generation + 1,
            base,
            hidden,
            delta: Arc::new(Segment::build(
                delta_docs.iter().map(|(_, d)| d.clone()).collect(),
            )),
            delta_docs,
            removed,
        });
    }

    fn change(self: &Arc<Self>, key: (Kind, String), doc: Option<SearchDoc>) {
        let seq = self
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rebuild = {
            let mut guard = match self.current.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let old = guard.clone();
            let mut delta_docs: Vec<(u64, SearchDoc)> = old
                .delta_docs
                .iter()
                .filter(|(_, d)| (d.hit.kind, &d.hit.id) != (key.0, &key.1))
                .cloned()
                .collect();
            let mut removed: Vec<(u64, (Kind, String))> = old
                .removed
                .iter()
                .filter(|(_, k)| *k != key)
                .cloned()
                .collect();
            match doc {
                Some(d) => delta_docs.push((seq, d)),
                None => removed.push((seq, key.clone())),
            }
            let mut hidden = old.hidden.clone();
            if let Some(n) = old.base.position(key.0, &key.1) {
                hidden.insert(n);
            }
            let delta = Segment::build(delta_docs.iter().map(|(_, d)| d.clone()).collect());
            let big = delta_docs.len() > self.delta_limit;
            *guard = Arc::new(Snapshot {
                generation: old.generation + 1,
                base: old.base.clone(),
                hidden,
                delta: Arc::new(delta),
                delta_docs,
                removed,
            });
            big
        };
        if rebuild
            && !self
                .rebuilding
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let index = self.clone();
            std::thread::spawn(move || index.rebuild_base());
        }
    }

    /// Folds the delta into a new base, then keeps as delta only what changed meanwhile.
    fn rebuild_base(&self) {
        let start = self.snapshot();
        let folded_up_to = start.delta_docs.iter().map(|(s, _)| *s).max();
        let mut docs: Vec<SearchDoc> = start
            .base
            .docs()
            .iter()
            .enumerate()
            .filter(|(n, _)| !start.hidden.contains(*n as u32))
            .map(|(_, d)| d.clone())
            .collect();
        docs.extend(start.delta_docs.iter().map(|(_, d)| d.clone()));
        let base = Arc::new(Segment::build(docs));
        {
            let mut guard = match self.current.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = guard.clone();
            if !Arc::ptr_eq(&now.base, &start.base) {
                // A reset replaced the base meanwhile: this one is stale.
                drop(guard);
                self.rebuilding
                    .store(false, std::sync::atomic::Ordering::Release);
                return;
            }
            let newer: Vec<(u64, SearchDoc)> = now
                .delta_docs
                .iter()
                .filter(|(s, _)| folded_up_to.is_none_or(|f| *s > f))
                .cloned()
                .collect();
            // What was removed after the rebuild began is still hidden in the new base.
            let removed_since: Vec<(u64, (Kind, String))> = now
                .removed
                .iter()
                .filter(|r| !start.removed.contains(r))
                .cloned()
                .collect();
            let hidden = newer
                .iter()
                .map(|(_, d)| (d.hit.kind, d.hit.id.clone()))
                .chain(removed_since.iter().map(|(_, k)| k.clone()))
                .filter_map(|(k, id)| base.position(k, &id))
                .collect();
            *guard = Arc::new(Snapshot {
                generation: now.generation + 1,
                base,
                hidden,
                delta: Arc::new(Segment::build(
                    newer.iter().map(|(_, d)| d.clone()).collect(),
                )),
                delta_docs: newer,
                removed: removed_since,
            });
        }
        self.rebuilding
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Answers `query` at `now`, from the cache when the same query was answered on this
    /// generation of the index in the last few seconds.
    pub fn search(&self, query: &Query, now: u64) -> Arc<SearchResults> {
        let snapshot = self.snapshot();
        // Answers are kept per index generation and per few seconds of the clock.
        let key = (
            snapshot.generation,
            now / CACHE_TTL.as_secs(),
            query.clone(),
        );
        if let Some(hit) = self.cache.get(&key) {
            return hit;
        }
        let results = Arc::new(search_snapshot(&snapshot, query, now));
        self.cache.insert(key, results.clone());
        results
    }

    /// Answers `query` without the cache (for benchmarks).
    pub fn search_uncached(&self, query: &Query, now: u64) -> SearchResults {
        search_snapshot(&self.snapshot(), query, now)
    }
}

fn playable(doc: &SearchDoc, country: Option<&str>, now: u64) -> bool {
    doc.rights.as_ref().is_none_or(|all| {
        all.iter().any(|r| {
            rights::decide(
                &TrackRights {
                    release_at: r.release_at,
                    taken_down_at: r.taken_down_at,
                    licences: &r.licences,
                },
                country,
                now,
            )
            .is_ok()
        })
    })
}

/// The rights of an album or artist from those of its listed tracks: `None` (open) when
/// any track is open, else every track's.
pub fn grouping_rights<'a>(
    tracks: impl IntoIterator<Item = &'a Option<Vec<DocRights>>>,
) -> Option<Vec<DocRights>> {
    let mut all = Vec::new();
    for rights in tracks {
        all.extend(rights.as_ref()?.iter().cloned());
    }
    Some(all)
}

fn search_snapshot(s: &Snapshot, query: &Query, now: u64) -> SearchResults {
    let terms = QueryWords::new(&words(&query.text));
    let want = query.offset.saturating_add(query.limit);
    let country = query.country.as_deref();
    let (base_hits, base_total) = s.base.search(&terms, want, |n| {
        !s.hidden.contains(n) && (!s.base.is_restricted(n) || playable(s.base.doc(n), country, now))
    });
    let (delta_hits, delta_total) = s.delta.search(&terms, want, |n| {
        !s.delta.is_restricted(n) || playable(s.delta.doc(n), country, now)
    });
    // Each list is in rank order; merge them by class, then popularity.
    let key =
        |seg: &Segment, r: &Ranked| (r.class, std::cmp::Reverse(seg.doc(r.doc).hit.popularity));
    let mut merged: Vec<&Hit> = Vec::with_capacity(want);
    let (mut i, mut j) = (0, 0);
    while merged.len() < want && (i < base_hits.len() || j < delta_hits.len()) {
        let take_base = match (base_hits.get(i), delta_hits.get(j)) {
            (Some(b), Some(d)) => key(&s.base, b) <= key(&s.delta, d),
            (Some(_), None) => true,
            _ => false,
        };
        if take_base {
            merged.push(&s.base.doc(base_hits[i].doc).hit);
            i += 1;
        } else {
            merged.push(&s.delta.doc(delta_hits[j].doc).hit);
            j += 1;
        }
    }
    SearchResults {
        hits: merged.into_iter().skip(query.offset).cloned().collect(),
        estimated_total: base_total + delta_total,
        offset: query.offset,
        limit: query.limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(id: &str, title: &str, artist: &str, popularity: u64) -> SearchDoc {
        SearchDoc {
            hit: Hit {
                kind: Kind::Track,
                id: id.into(),
                title: title.into(),
                artist: Some(artist.into()),
                album: None,
                popularity,
            },
            rights: None,
        }
    }

    fn ids(r: &SearchResults) -> Vec<&str> {
        r.hits.iter().map(|h| h.id.as_str()).collect()
    }

    fn q(text: &str) -> Query {
        Query {
            text: text.into(),
            country: None,
            offset: 0,
            limit: 10,
        }
    }

    fn index() -> Arc<SearchIndex> {
        Arc::new(SearchIndex::new(vec![
            track("wonderwall", "Wonderwall", "Oasis", 900),
            track("wonderful", "Wonderful Tonight", "Eric Clapton", 500),
            track("wander", "Wanderer", "Dion", 800),
            track("oasis-song", "Champagne Supernova", "Oasis", 700),
            track("supernova", "Supernova", "Liz Phair", 100),
            track("oasis-tribute", "Oasis", "Tribute Band", 1),
        ]))
    }

    #[test]
    fn prefixes_typos_and_ranking() {
        let idx = index();
        // A prefix: popularity orders equally good matches.
        // A prefix: exact matches first, popularity among them, then one typo ("wander").
        assert_eq!(
            ids(&idx.search(&q("wonder"), 0)),
            ["wonderwall", "wonderful", "wander"]
        );
        // One typo from five characters: "wondar" is one from "wonder", two from "wander".
        assert_eq!(
            ids(&idx.search(&q("wondar"), 0)),
            ["wonderwall", "wonderful"]
        );
        // Short prefixes, which come from the precomputed lists, at every length.
        for p in ["w", "wo", "won", "wond", "wonde"] {
            let found = idx.search(&q(p), 0);
            let found = ids(&found);
            assert!(
                found.contains(&"wonderwall") && found.contains(&"wonderful"),
                "{p}: {found:?}"
            );
        }
        // No typo allowed under five characters.
        assert!(idx.search(&q("wqnd"), 0).hits.is_empty());
        // Two typos from nine: transposed and dropped letters.
        assert_eq!(ids(&idx.search(&q("wodnerwal"), 0)), ["wonderwall"]);
        // Fewer typos beat popularity; a title match beats an artist match.
        assert_eq!(
            ids(&idx.search(&q("supernova"), 0)),
            ["oasis-song", "supernova"],
            "both titles hold the word exactly: popularity decides"
        );
        // A title match beats a more popular artist match.
        assert_eq!(
            ids(&idx.search(&q("oasis"), 0)),
            ["oasis-tribute", "wonderwall", "oasis-song"]
        );
        assert_eq!(ids(&idx.search(&q("oasis wonder"), 0)), ["wonderwall"]);
        let exact_first = idx.search(&q("wandere"), 0);
        assert_eq!(ids(&exact_first)[0], "wander");
    }

    #[test]
    fn rare_title_matches_behind_thousands_of_artist_matches_still_rank_first() {
        // 3,000 popular tracks by "Stone Roses" and two obscure ones with "stone" in the
        // title: the bucket walk gives up before it reaches them, and the bitmap way must
        // still put them first.
        let mut docs: Vec<SearchDoc> = (0..3000)
            .map(|i| {
                track(
                    &format!("roses-{i}"),
                    &format!("Song {i}"),
                    "Stone Roses",
                    10_000 - i,
                )
            })
            .collect();
        docs.push(track("cold", "Stone Cold", "Nobody", 2));
        docs.push(track("age", "Stoned Age", "Someone", 1));
        let idx = Arc::new(SearchIndex::new(docs));
        for text in ["stone", "ston", "stoen"] {
            let found = idx.search(&q(text), 0);
            let found = ids(&found);
            // The last word is a prefix: "stoen" is one typo from "stone", a prefix of
            // "stoned" too.
            let expect_titled = ["cold", "age"];
            assert_eq!(&found[..expect_titled.len()], expect_titled, "{text}");
            assert_eq!(found[expect_titled.len()], "roses-0", "{text}");
        }
        // Walked and settled early: the first documents are titled.
        let idx = Arc::new(SearchIndex::new(
            (0..3000)
                .map(|i| track(&format!("t{i}"), &format!("Stone {i}"), "X", 10_000 - i))
                .collect(),
        ));
        assert_eq!(ids(&idx.search(&q("stone"), 0))[..3], ["t0", "t1", "t2"]);
    }

    #[test]
    fn the_delta_reflects_changes_at_once_and_hides_stale_base_copies() {
        let idx = index();
        idx.upsert(track("new", "Wonderland", "Newcomer", 10_000));
        assert_eq!(ids(&idx.search(&q("wonder"), 0))[0], "new");
        idx.remove(Kind::Track, "wonderwall");
        assert_eq!(
            ids(&idx.search(&q("wonder"), 0)),
            ["new", "wonderful", "wander"]
        );
        idx.upsert(track(
            "wonderful",
            "Wonderful Tonight",
            "Eric Clapton",
            20_000,
        ));
        assert_eq!(
            ids(&idx.search(&q("wonder"), 0)),
            ["wonderful", "new", "wander"]
        );
        assert_eq!(idx.len(), 6);
        // Offset pages on.
        let page = idx.search(
            &Query {
                offset: 1,
                limit: 1,
                ..q("wonder")
            },
            0,
        );
        assert_eq!(ids(&page), ["new"]);
    }

    #[test]
    fn a_rebuilt_base_keeps_every_change() {
        const LIMIT: usize = 64;
        let idx = index();
        let idx = Arc::new(SearchIndex::with_delta_limit(
            idx.snapshot().base.docs().to_vec(),
            LIMIT,
        ));
        for i in 0..=LIMIT {
            idx.upsert(track(&format!("t{i}"), &format!("Filler {i}"), "Band", 1));
        }
        idx.remove(Kind::Track, "wander");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while idx.rebuilding.load(std::sync::atomic::Ordering::Acquire)
            || idx.snapshot().delta_docs.len() > LIMIT
        {
            assert!(
                std::time::Instant::now() < deadline,
                "rebuild did not finish"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(idx.len(), 6 + LIMIT + 1 - 1);
        assert!(idx.search(&q("wanderer"), 0).hits.is_empty());
        assert_eq!(ids(&idx.search(&q("filler 64"), 0)), ["t64"]);
    }

    #[test]
    fn a_reset_keeps_changes_made_while_its_documents_were_read() {
        let idx = index();
        let since = idx.sequence();
        // Read from the catalogue: every document, re-ranked; meanwhile a track arrives
        // and another is taken down.
        let docs: Vec<SearchDoc> = idx.snapshot().base.docs().to_vec();
        idx.upsert(track("late", "Wonder Late", "Newcomer", 50_000));
        idx.remove(Kind::Track, "wonderwall");
        idx.reset_keeping(docs, since);
        assert_eq!(
            ids(&idx.search(&q("wonder"), 0))[..2],
            ["late", "wonderful"]
        );
        assert_eq!(idx.len(), 6);
    }

    #[test]
    fn only_what_plays_in_the_listeners_country_is_found() {
        let idx = index();
        let mut gb_only = track("gb", "Wonder Years", "Local", 5_000);
        let gb = DocRights {
            release_at: None,
            taken_down_at: None,
            licences: vec![Licence::always("GB".parse().unwrap())],
        }
        .restricting()
        .map(|r| vec![r]);
        assert!(gb.is_some());
        gb_only.rights = gb.clone();
        idx.upsert(gb_only);
        // An album with one British and one Swedish track is found in both, not elsewhere.
        let se = DocRights {
            release_at: None,
            taken_down_at: None,
            licences: vec![Licence::always("SE".parse().unwrap())],
        }
        .restricting()
        .map(|r| vec![r]);
        let mut album = track("gbse", "Wonder Album", "Local", 4_000);
        album.hit.kind = Kind::Album;
        album.rights = grouping_rights([&gb, &se]);
        assert_eq!(album.rights.as_ref().map(Vec::len), Some(2));
        assert_eq!(
            grouping_rights([&gb, &None]),
            None,
            "an open track opens its album"
        );
        idx.upsert(album);
        let from = |country: &str| Query {
            country: Some(country.into()),
            ..q("wonder")
        };
        assert_eq!(ids(&idx.search(&from("GB"), 0))[0], "gb");
        assert!(!ids(&idx.search(&from("SE"), 0)).contains(&"gb"));
        assert!(ids(&idx.search(&from("GB"), 0)).contains(&"gbse"));
        assert!(ids(&idx.search(&from("SE"), 0)).contains(&"gbse"));
        assert!(!ids(&idx.search(&from("JP"), 0)).contains(&"gbse"));
    }
}
