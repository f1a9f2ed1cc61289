//! The regional shield tier: the edges of a region agree, file by file, on one owner, so the
//! region asks the origin for each slice once rather than once per edge.
//!
//! The owner of a file is picked by rendezvous (highest-random-weight) hashing: every edge
//! scores every peer as SHA-256(peer URL, file id) and the highest score wins. Every edge
//! computes the same owner from the same peer list without talking to the others, and
//! adding or removing one edge moves only the files that edge gains or loses. A non-owner
//! fetches a missing slice from the owner (which collapses the region's requests into one
//! origin fetch), and from the origins when the owner is down; owners sit behind circuit
//! breakers like the origins do.

use std::time::Instant;

use cadenza_common::FileId;

use crate::upstream::Upstreams;

/// This edge's view of its region.
#[derive(Debug)]
pub struct Shield {
    /// The region's edges by the URL each serves peers on, this one included.
    peers: Upstreams,
    urls: Vec<String>,
    /// Which of `urls` is this edge.
    me: usize,
}

/// An edge URL without a trailing slash, so peers spell each other the same way.
fn normal(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

impl Shield {
    /// The region `peers` (this edge's own URL `me` included, or added if missing); a
    /// peer's breaker opens after `threshold` failures for `cooldown`.
    pub fn new(me: &str, peers: &[String], threshold: u32, cooldown: std::time::Duration) -> Self {
        let me = normal(me);
        let mut urls: Vec<String> = peers.iter().map(|p| normal(p)).collect();
        if !urls.contains(&me) {
            urls.push(me.clone());
        }
        urls.sort();
        urls.dedup();
        let me = urls.iter().position(|u| *u == me).unwrap_or_default();
        Self {
            peers: Upstreams::new(urls.clone(), threshold, cooldown),
            urls,
            me,
        }
    }

    /// The index of the edge that owns `id` in the region.
    pub fn owner_index(&self, id: &FileId) -> usize {
        self.urls
            .iter()
            .enumerate()
            .max_by_key(|(_, url)| score(url, id))
            .map_or(0, |(i, _)| i)
    }

    /// The owner of `id` to ask first, when it is another edge whose breaker is closed at
    /// `now`: its index (for [`Shield::record`]) and URL.
    pub fn fetch_from(&self, id: &FileId, now: Instant) -> Option<(usize, &str)> {
        let owner = self.owner_index(id);
        if owner == self.me || self.peers.is_open(owner, now) {
            return None;
        }
        Some((owner, self.urls[owner].as_str()))
    }

    /// Records how a request to peer `i` went.
    pub fn record(&self, i: usize, ok: bool, now: Instant) {
        self.peers.record(i, ok, now);
    }

    /// Whether this edge owns `id`.
    pub fn owns(&self, id: &FileId) -> bool {
        self.owner_index(id) == self.me
    }
}

/// A peer's weight for a file: the first 8 bytes of SHA-256(url, 0, id).
fn score(url: &str, id: &FileId) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(url.as_bytes());
    ctx.update(&[0]);
    ctx.update(id.as_str().as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn region(me: &str, n: usize) -> Shield {
        let peers: Vec<String> = (0..n).map(|i| format!("https://edge{i}:443")).collect();
        Shield::new(me, &peers, 3, Duration::from_secs(10))
    }

    #[test]
    fn every_edge_agrees_on_the_owner_and_owners_are_spread_evenly() {
        let views: Vec<Shield> = (0..3)
            .map(|i| region(&format!("https://edge{i}:443/"), 3))
            .collect();
        let mut owned = [0usize; 3];
        for _ in 0..3000 {
            let id = FileId::random();
            let owners: Vec<usize> = views.iter().map(|v| v.owner_index(&id)).collect();
            assert!(owners.iter().all(|o| *o == owners[0]), "views disagree");
            assert_eq!(views.iter().filter(|v| v.owns(&id)).count(), 1);
            owned[owners[0]] += 1;
        }
        for n in owned {
            assert!((800..1200).contains(&n), "uneven ownership: {owned:?}");
        }
    }

    #[test]
    fn removing_an_edge_moves_only_its_files() {
        let four = region("https://edge0:443", 4);
        let three = region("https://edge0:443", 3);
        for _ in 0..2000 {
            let id = FileId::random();
            let before = &four.urls[four.owner_index(&id)];
            let after = &three.urls[three.owner_index(&id)];
            if before != "https://edge3:443" {
                assert_eq!(before, after, "a file moved between edges that stayed");
            }
        }
    }

    #[test]
    fn a_failing_owner_is_skipped_until_its_cooldown_ends() {
        let me = region("https://edge0:443", 3);
        let id = (0..)
            .map(|_| FileId::random())
            .find(|id| !me.owns(id))
            .unwrap();
        let t0 = Instant::now();
        let (owner, _) = me.fetch_from(&id, t0).unwrap();
        for _ in 0..3 {
            me.record(owner, false, t0);
        }
        assert!(me.fetch_from(&id, t0 + Duration::from_secs(1)).is_none());
        assert!(me.fetch_from(&id, t0 + Duration::from_secs(11)).is_some());
        // Files this edge owns never go to a peer.
        let mine = (0..)
            .map(|_| FileId::random())
            .find(|id| me.owns(id))
            .unwrap();
        assert!(me.fetch_from(&mine, t0).is_none());
    }
}
