//! The edge fleet as the control plane sees it: where each edge is meant to serve, and how
//! healthy it looks from here, so a grant lists the listener's edges best first.
//!
//! Each edge site names the territories it serves (a region's edges serve its countries; a
//! catch-all edge serves `WW`). The control plane probes every edge's `/healthz` and keeps a
//! smoothed round-trip time and a run of failures. A grant lists healthy edges before
//! failing ones, then edges serving the listener's country before the rest, then the
//! fastest first. Ranking is a pure function of those facts.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use cadenza_common::Territories;

/// One edge (or one load-balanced name for a region's edges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSite {
    /// Base URL players use; the file is at `{url}/a/{file_id}`.
    pub url: String,
    /// The countries this edge is meant for.
    pub serves: Territories,
}

impl EdgeSite {
    /// An edge for everyone.
    pub fn worldwide(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            serves: Territories::worldwide(),
        }
    }
}

impl std::str::FromStr for EdgeSite {
    type Err = String;

    /// `URL` (worldwide) or `URL@TERRITORIES`, e.g. `https://edge-se.example@SE,NO,FI`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (url, serves) = match s.rsplit_once('@') {
            Some((url, list)) if !list.contains('/') => (
                url,
                list.parse::<Territories>()
                    .map_err(|e| format!("edge {url}: {e}"))?,
            ),
            _ => (s, Territories::worldwide()),
        };
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("edge {url:?}: expected an http(s) URL"));
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            serves,
        })
    }
}

/// What the probes have seen of one edge.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Health {
    /// Smoothed probe round trip (EWMA, 1/4 weight to the newest); `None` before the first
    /// successful probe.
    pub rtt: Option<Duration>,
    /// Probes failed in a row.
    pub failures: u32,
    /// When the last probe finished.
    pub checked: Option<Instant>,
}

/// Failed probes in a row after which an edge counts as down.
pub const DOWN_AFTER: u32 = 2;

impl Health {
    /// Folds in one probe: its round trip, or `None` for a failure.
    pub fn record(&mut self, outcome: Option<Duration>, now: Instant) {
        self.checked = Some(now);
        match outcome {
            Some(rtt) => {
                self.failures = 0;
                self.rtt = Some(match self.rtt {
                    Some(old) => (old * 3 + rtt) / 4,
                    None => rtt,
                });
            }
            None => self.failures = self.failures.saturating_add(1),
        }
    }

    /// Whether the edge counts as down.
    pub fn is_down(&self) -> bool {
        self.failures >= DOWN_AFTER
    }
}

/// Indices of `sites` best first for a listener in `country` (unknown: no site is local):
/// up before down, local before remote, then by smoothed round trip (unprobed edges after
/// probed ones), then in configured order.
pub fn rank(sites: &[EdgeSite], health: &[Health], country: Option<&str>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sites.len()).collect();
    order.sort_by_key(|&i| {
        let h = health.get(i).copied().unwrap_or_default();
        let local = country.is_some_and(|c| sites[i].serves.allows(c));
        (h.is_down(), !local, h.rtt.is_none(), h.rtt, i)
    });
    order
}

/// The configured edges and their health, shared by grants and the prober.
#[derive(Debug)]
pub struct Fleet {
    sites: Vec<EdgeSite>,
    health: RwLock<Vec<Health>>,
}

impl Fleet {
    /// A fleet of `sites`, none probed yet.
    pub fn new(sites: Vec<EdgeSite>) -> Self {
        let health = RwLock::new(vec![Health::default(); sites.len()]);
        Self { sites, health }
    }

    /// The edges.
    pub fn sites(&self) -> &[EdgeSite] {
        &self.sites
    }

    /// Edge URLs for a grant to a listener in `country`, best first.
    pub fn edges_for(&self, country: Option<&str>) -> Vec<String> {
        let health = self.health.read().unwrap_or_else(|p| p.into_inner());
        rank(&self.sites, &health, country)
            .into_iter()
            .map(|i| self.sites[i].url.clone())
            .collect()
    }

    /// Records a probe of site `i`.
    pub fn record(&self, i: usize, outcome: Option<Duration>, now: Instant) {
        let mut health = self.health.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = health.get_mut(i) {
            h.record(outcome, now);
        }
    }

    /// What the probes have seen, per site.
    pub fn health(&self) -> Vec<Health> {
        self.health
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(url: &str, serves: &str) -> EdgeSite {
        format!("{url}@{serves}").parse().unwrap()
    }

    fn up(ms: u64) -> Health {
        let mut h = Health::default();
        h.record(Some(Duration::from_millis(ms)), Instant::now());
        h
    }

    fn down() -> Health {
        let mut h = up(1);
        h.record(None, Instant::now());
        h.record(None, Instant::now());
        h
    }

    #[test]
    fn grants_list_healthy_local_fast_edges_first() {
        let sites = [
            site("https://ww.example", "WW"),
            site("https://se-a.example", "SE,NO"),
            site("https://se-b.example", "SE,NO"),
            site("https://gb.example", "GB"),
        ];
        let names = |health: &[Health], country: Option<&str>| -> Vec<&str> {
            rank(&sites, health, country)
                .into_iter()
                .map(|i| sites[i].url.as_str())
                .collect()
        };
        let health = [up(40), up(9), up(5), up(3)];
        // A Swede: the three edges that serve Sweden by speed, then the British one.
        assert_eq!(
            names(&health, Some("SE")),
            [
                "https://se-b.example",
                "https://se-a.example",
                "https://ww.example",
                "https://gb.example"
            ]
        );
        // A Briton: the two that serve Britain, then the Swedish ones by speed.
        assert_eq!(
            names(&health, Some("GB")),
            [
                "https://gb.example",
                "https://ww.example",
                "https://se-b.example",
                "https://se-a.example"
            ]
        );
        // Country unknown: by speed alone.
        assert_eq!(
            names(&health, None),
            [
                "https://gb.example",
                "https://se-b.example",
                "https://se-a.example",
                "https://ww.example"
            ]
        );
        // The fastest Swedish edge goes down: it drops to the very end.
        let health = [up(40), up(9), down(), up(3)];
        assert_eq!(
            names(&health, Some("SE")),
            [
                "https://se-a.example",
                "https://ww.example",
                "https://gb.example",
                "https://se-b.example"
            ]
        );
        // Before any probe: local first, then configured order.
        let fresh = [Health::default(); 4];
        assert_eq!(
            names(&fresh, Some("NO")),
            [
                "https://ww.example",
                "https://se-a.example",
                "https://se-b.example",
                "https://gb.example"
            ]
        );
    }

    #[test]
    fn one_failed_probe_is_not_down_and_a_success_clears_failures() {
        let mut h = up(10);
        h.record(None, Instant::now());
        assert!(!h.is_down());
        h.record(None, Instant::now());
        assert!(h.is_down());
        h.record(Some(Duration::from_millis(30)), Instant::now());
        assert!(!h.is_down());
        // Smoothed: a quarter of the way from 10 ms to 30 ms.
        assert_eq!(h.rtt, Some(Duration::from_millis(15)));
    }

    #[test]
    fn edge_sites_parse_with_and_without_territories() {
        assert_eq!(
            "https://edge.example/".parse::<EdgeSite>().unwrap(),
            EdgeSite::worldwide("https://edge.example")
        );
        let se: EdgeSite = "https://user@edge-se.example@SE,NO".parse().unwrap();
        assert_eq!(se.url, "https://user@edge-se.example");
        assert!(se.serves.allows("NO") && !se.serves.allows("GB"));
        assert!("edge.example@SE".parse::<EdgeSite>().is_err());
        assert!("https://edge.example@S".parse::<EdgeSite>().is_err());
    }
}
