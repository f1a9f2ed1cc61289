//! Search over a synthetic catalogue: latency of typo'd prefix queries on one core, and
//! recall of the intended track in the top 10, against an exhaustive scan that applies the
//! same typo rules to every document (the peer: slow, but it cannot miss).
//!
//! `cargo run --release -p cadenza-benches --bin search_bench -- [TRACKS] [QUERIES] [SCANNED]`
//! (defaults 1,000,000, 2,000 and 100: the scan peer runs on the first SCANNED queries).

use std::time::Instant;

use cadenza_control_plane::search::{Hit, Kind, Query, SearchDoc, SearchIndex, typo_budget, words};
use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder};

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// An index in `0..n` drawn with probability ∝ 1/(i+1) (Zipf, s = 1).
    fn zipf(&mut self, n: usize) -> usize {
        let h = (n as f64).ln() + 0.5772;
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * h).exp() - 1.0).clamp(0.0, (n - 1) as f64) as usize
    }
}

const COMMON: &[&str] = &[
    "love",
    "night",
    "heart",
    "baby",
    "time",
    "life",
    "light",
    "dream",
    "world",
    "fire",
    "girl",
    "home",
    "blue",
    "dance",
    "rain",
    "summer",
    "river",
    "sweet",
    "wild",
    "gold",
    "moon",
    "star",
    "city",
    "road",
    "song",
    "soul",
    "angel",
    "devil",
    "forever",
    "tonight",
    "little",
    "never",
    "remember",
    "tomorrow",
    "yesterday",
    "heaven",
    "shadow",
    "stone",
    "ocean",
    "paradise",
    "broken",
    "hello",
    "goodbye",
    "lonely",
    "freedom",
    "wonder",
];
const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ve", "sto", "na", "ri", "del", "mar", "tin", "bel", "co", "ru", "sa",
    "fen", "lia", "dor", "an", "es", "qui", "zo", "ber", "ta", "gon", "vi", "len", "mo",
];

fn made_up_word(rng: &mut Rng) -> String {
    let n = 2 + rng.below(3);
    (0..n)
        .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
        .collect()
}

fn capitalised(w: &str) -> String {
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// A vocabulary: common title words first, then made-up ones; drawn Zipf-wise, so a few
/// words are everywhere and most are rare, as in real catalogues.
fn vocabulary(rng: &mut Rng, n: usize) -> Vec<String> {
    let mut v: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
    while v.len() < n {
        v.push(made_up_word(rng));
    }
    v
}

fn phrase(rng: &mut Rng, vocab: &[String], max_words: usize) -> String {
    let n = 1 + rng.zipf(max_words);
    (0..n)
        .map(|_| capitalised(&vocab[rng.zipf(vocab.len())]))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One random edit (substitution, deletion, insertion or transposition) at a random place.
fn typo(rng: &mut Rng, word: &str) -> String {
    let mut c: Vec<char> = word.chars().collect();
    let i = rng.below(c.len());
    let letter = (b'a' + rng.below(26) as u8) as char;
    match rng.below(4) {
        0 => c[i] = letter,
        1 => {
            c.remove(i);
        }
        2 => c.insert(i, letter),
        _ if i + 1 < c.len() => c.swap(i, i + 1),
        _ => c[i] = letter,
    }
    c.into_iter().collect()
}

/// What a listener types for `title`: its words with the last cut to a prefix, and the typos
/// the rules allow put in at random (half the time each).
fn typed(rng: &mut Rng, title: &str) -> String {
    let mut ws = words(title);
    if let Some(last) = ws.last_mut() {
        let n = last.chars().count();
        if n > 4 {
            let keep = 4 + rng.below(n - 3);
            *last = last.chars().take(keep).collect();
        }
    }
    ws.iter()
        .map(|w| {
            let mut out = w.clone();
            for _ in 0..typo_budget(w) {
                if rng.below(2) == 0 {
                    let t = typo(rng, &out);
                    // A typo that shortens the word may lower its budget: keep within it.
                    if typo_budget(&t) >= typo_budget(w) {
                        out = t;
                    }
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

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
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 60_000);
    let artists: Vec<String> = (0..(tracks / 10).max(1))
        .map(|_| phrase(&mut rng, &vocab, 3))
        .collect();
    let made = Instant::now();
    let docs: Vec<SearchDoc> = (0..tracks)
        .map(|i| {
            let artist = artists[rng.zipf(artists.len())].clone();
            SearchDoc {
                hit: Hit {
                    kind: Kind::Track,
                    id: format!("t{i:07}"),
                    title: phrase(&mut rng, &vocab, 5),
                    artist: Some(artist),
                    album: (rng.below(3) > 0).then(|| phrase(&mut rng, &vocab, 4)),
                    // Plays fall off as a power law of a random rank.
                    popularity: 10_000_000 / (1 + rng.below(tracks) as u64),
                },
                rights: None,
            }
        })
        .collect();
    eprintln!("catalogue made in {:.1} s", made.elapsed().as_secs_f64());
    let rss_before = peak_rss_mb();
    let built = Instant::now();
    let index = SearchIndex::new(docs.clone());
    let build_s = built.elapsed().as_secs_f64();
    // Listeners look for popular tracks: targets drawn by plays rank.
    let mut by_plays: Vec<usize> = (0..tracks).collect();
    by_plays.sort_by_key(|&i| std::cmp::Reverse(docs[i].hit.popularity));
    let cases: Vec<(String, String)> = (0..queries)
        .map(|_| {
            let d = &docs[by_plays[rng.zipf(tracks.min(100_000))]];
            (d.hit.id.clone(), typed(&mut rng, &d.hit.title))
        })
        .collect();
    let mut latencies = Vec::with_capacity(queries);
    let mut found = 0;
    for (target, text) in &cases {
        let q = Query {
            text: text.clone(),
            country: None,
            offset: 0,
            limit: 10,
        };
        let t = Instant::now();
        let r = index.search_uncached(&q, 0);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        found += usize::from(r.hits.iter().any(|h| &h.id == target));
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
        let r = index.search_uncached(
            &Query {
                text: text.clone(),
                country: None,
                offset: 0,
                limit: 10,
            },
            0,
        );
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
