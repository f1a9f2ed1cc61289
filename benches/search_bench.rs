//! Search over a synthetic catalogue: latency of typo'd prefix queries on one core, and
//! recall of the intended track in the top 10, against an exhaustive scan that applies the
//! same typo rules to every document (the peer: slow, but it cannot miss).
//!
//! `cargo run --release -p cadenza-benches --bin search_bench -- [TRACKS] [QUERIES] [SCANNED]`
//! (defaults 1,000,000, 2,000 and 100: the scan peer runs on the first SCANNED queries).

use std::time::Instant;

use cadenza_control_plane::search::{Hit, Kind, Query, SearchDoc, SearchIndex, typo_budget, words};
use search_data::{peak_rss_mb, percentile};

mod search_data;
use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder};

/// The peer: every document, every word, the same typo budgets and prefix rule; documents
/// ranked by total typos, then popularity.
fn scan(docs: &[SearchDoc], query: &str) -> Vec<String> {
    let one = LevenshteinAutomatonBuilder::new(1, true);
    let two = LevenshteinAutomatonBuilder::new(2, true);
    let q = words(query);
    let dfas: Vec<_> = q
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let b = if typo_budget(w) <= 1 { &one } else { &two };
            let budget = typo_budget(w);
            if i + 1 == q.len() {
                (budget, b.build_prefix_dfa(w))
            } else {
                (budget, b.build_dfa(w))
            }
        })
        .collect();
    let mut scored: Vec<(u32, u64, &str)> = Vec::new();
    for d in docs {
        let mut terms = words(&d.hit.title);
        for t in d.hit.artist.iter().chain(d.hit.album.iter()) {
            terms.extend(words(t));
        }
        let mut total = 0u32;
        let mut all = true;
        for (budget, dfa) in &dfas {
            let best = terms
                .iter()
                .filter_map(|t| match dfa.eval(t) {
                    Distance::Exact(k) if k <= *budget => Some(u32::from(k)),
                    _ => None,
                })
                .min();
            match best {
                Some(k) => total += k,
                None => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            scored.push((total, u64::MAX - d.hit.popularity, &d.hit.id));
        }
    }
    scored.sort();
    scored
        .into_iter()
        .take(10)
        .map(|(_, _, id)| id.to_owned())
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tracks: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let scanned: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let made = Instant::now();
    let tracks_made = search_data::catalogue(tracks);
    let docs: Vec<SearchDoc> = tracks_made
        .iter()
        .map(|t| SearchDoc {
            hit: Hit {
                kind: Kind::Track,
                id: t.id.clone(),
                title: t.title.clone(),
                artist: Some(t.artist.clone()),
                album: t.album.clone(),
                popularity: t.plays,
            },
            rights: None,
        })
        .collect();
    let cases = search_data::queries(&tracks_made, queries);
    drop(tracks_made);
    eprintln!("catalogue made in {:.1} s", made.elapsed().as_secs_f64());
    let rss_before = peak_rss_mb();
    let built = Instant::now();
    let index = SearchIndex::new(docs.clone());
    let build_s = built.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(queries);
    let mut found = 0;
    let query = |text: &String| Query {
        text: text.clone(),
        country: None,
        offset: 0,
        limit: 10,
    };
    for (target, text) in &cases {
        let q = query(text);
        let t = Instant::now();
        let r = index.search_uncached(&q, 0);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        found += usize::from(r.hits.iter().any(|h| &h.id == target));
    }
    // For a profiler: the query loop again, N more times, timed apart from the figures.
    let repeat: usize = std::env::var("SEARCH_BENCH_REPEAT")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if repeat > 0 {
        eprintln!("profile window: queries start");
        let t = Instant::now();
        for _ in 0..repeat {
            for (_, text) in &cases {
                std::hint::black_box(index.search_uncached(&query(text), 0));
            }
        }
        let per = t.elapsed().as_secs_f64() * 1000.0 / (repeat * cases.len()) as f64;
        eprintln!("profile window: {repeat} more passes, mean {per:.3} ms per query");
    }
    if std::env::var_os("SEARCH_BENCH_SLOWEST").is_some() {
        let mut slow: Vec<(f64, &str)> = latencies
            .iter()
            .zip(&cases)
            .map(|(l, (_, q))| (*l, q.as_str()))
            .collect();
        slow.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (l, q) in slow.iter().take(15) {
            eprintln!("slow: {l:.3} ms  {q:?}");
        }
    }
    latencies.sort_by(f64::total_cmp);
    let peer_n = cases.len().min(scanned);
    let mut peer_lat = Vec::with_capacity(peer_n);
    let mut peer_found = 0;
    let mut ours_on_peer_set = 0;
    for (target, text) in &cases[..peer_n] {
        let t = Instant::now();
        let ids = scan(&docs, text);
        peer_lat.push(t.elapsed().as_secs_f64() * 1000.0);
        peer_found += usize::from(ids.contains(target));
        let r = index.search_uncached(&query(text), 0);
        ours_on_peer_set += usize::from(r.hits.iter().any(|h| &h.id == target));
    }
    peer_lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!("tracks {tracks}, queries {queries} (typo'd prefixes of popular titles), one thread");
    println!(
        "index: built in {build_s:.1} s; postings + term dictionary {:.1} MB; process peak RSS {:.0} MB (catalogue alone {:.0} MB)",
        index.index_bytes() as f64 / 1e6,
        peak_rss_mb(),
        rss_before
    );
    println!(
        "cadenza search: p50 {p50:.3} ms, p99 {p99:.3} ms, max {:.3} ms; recall@10 {:.1} %",
        latencies[latencies.len() - 1],
        100.0 * found as f64 / queries as f64
    );
    if peer_n == 0 {
        return;
    }
    println!(
        "exhaustive scan (first {peer_n} queries): p50 {:.1} ms, p99 {:.1} ms; recall@10 {:.1} % (cadenza on the same queries: {:.1} %)",
        percentile(&peer_lat, 0.5),
        percentile(&peer_lat, 0.99),
        100.0 * peer_found as f64 / peer_n as f64,
        100.0 * ours_on_peer_set as f64 / peer_n as f64
    );
    println!(
        "ratio: the scan's p50 is {:.0}× cadenza's",
        percentile(&peer_lat, 0.5) / p50
    );
}
