//! The synthetic catalogue and queries both search benchmarks use (`search_bench` and the
//! tantivy peer in `search-peer/`), made the same way from the same seed. Self-contained: the
//! peer builds without the rest of Cadenza.

#![allow(dead_code)] // each includer uses part of it

/// One synthetic track.
#[derive(Debug, Clone)]
pub struct Track {
    pub id: String,
    pub title: String,
    pub artist: String,
    pub album: Option<String>,
    pub plays: u64,
}

/// Lowercase ASCII words: the synthetic data is ASCII, so this splits as Cadenza's search
/// and tantivy's default tokenizer both do.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Typos a query word may carry: none below 5 characters, one from 5, two from 9.
pub fn typo_budget(word: &str) -> u8 {
    match word.chars().count() {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

/// xorshift64*: reproducible, no dependency.
pub struct Rng(pub u64);

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
pub fn typed(rng: &mut Rng, title: &str) -> String {
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

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `tracks` synthetic tracks: titles of 1–5 words and artists of 1–3 words drawn Zipf-wise
/// from common title words and made-up syllable words; two thirds on an album; plays a power
/// law of a random rank.
pub fn catalogue(tracks: usize) -> Vec<Track> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 60_000);
    let artists: Vec<String> = (0..(tracks / 10).max(1))
        .map(|_| phrase(&mut rng, &vocab, 3))
        .collect();
    (0..tracks)
        .map(|i| {
            let artist = artists[rng.zipf(artists.len())].clone();
            Track {
                id: format!("t{i:07}"),
                title: phrase(&mut rng, &vocab, 5),
                artist,
                album: (rng.below(3) > 0).then(|| phrase(&mut rng, &vocab, 4)),
                plays: 10_000_000 / (1 + rng.below(tracks) as u64),
            }
        })
        .collect()
}

/// `n` queries, each (target id, typed text): a popular track's title as a listener types it.
pub fn queries(tracks: &[Track], n: usize) -> Vec<(String, String)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut by_plays: Vec<usize> = (0..tracks.len()).collect();
    by_plays.sort_by_key(|&i| (std::cmp::Reverse(tracks[i].plays), i));
    (0..n)
        .map(|_| {
            let t = &tracks[by_plays[rng.zipf(tracks.len().min(100_000))]];
            (t.id.clone(), typed(&mut rng, &t.title))
        })
        .collect()
}
