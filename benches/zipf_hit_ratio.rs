//! Byte hit ratio of the edge's memory-tier policy against a plain LRU of the same size, on
//! the same Zipf-distributed trace of plays.
//!
//! The edge caches 256 KiB slices in moka bounded by slice count (capacity / slice size, as
//! `slice_capacity` in `edge-node/src/cache.rs`), with moka's default policy (TinyLFU
//! admission, LRU eviction), and indexes its disk tier with S3-FIFO (`SliceIndex`). This
//! program builds the same memory tier, the disk tier's index, and a textbook LRU, and
//! replays a trace of plays through each: a play picks a track by Zipf popularity and reads its slices front to back,
//! stopping early when the listener skips. Every cache sees every slice request; a miss
//! inserts the slice. The first fifth of the trace warms the caches and is not counted.
//!
//! `cargo run --release -p cadenza-benches --bin zipf_hit_ratio [PLAYS] [ZIPF_S]`

use std::collections::{BTreeMap, HashMap};

const SLICE: u64 = 256 * 1024;
const TRACKS: usize = 20_000;

/// xorshift64*: a fixed, seeded sequence, so every run replays the same trace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One slice request: (track, slice index, bytes).
type Request = (u32, u32, u32);

/// Plays as slice requests. Tracks are 8–48 slices (2–12 MiB, a rendition of 1.5–9 minutes at
/// 160–320 kbps); a third of plays are skipped after 1–6 slices.
fn trace(plays: usize, zipf_s: f64, rng: &mut Rng) -> (Vec<Request>, u64) {
    let slices: Vec<u32> = (0..TRACKS).map(|_| 8 + rng.below(41) as u32).collect();
    let catalogue: u64 = slices.iter().map(|&n| u64::from(n) * SLICE).sum();
    // Popularity rank r has weight 1 / r^s; rank order is shuffled against track ids.
    let mut cdf = Vec::with_capacity(TRACKS);
    let mut total = 0.0;
    for r in 1..=TRACKS {
        total += 1.0 / (r as f64).powf(zipf_s);
        cdf.push(total);
    }
    let mut order: Vec<u32> = (0..TRACKS as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut out = Vec::new();
    for _ in 0..plays {
        let u = rng.unit() * total;
        let rank = cdf.partition_point(|&c| c < u).min(TRACKS - 1);
        let track = order[rank];
        let n = slices[track as usize];
        let read = if rng.below(3) == 0 {
            (1 + rng.below(6) as u32).min(n)
        } else {
            n
        };
        for s in 0..read {
            out.push((track, s, SLICE as u32));
        }
    }
    (out, catalogue)
}

/// A byte-weighted LRU: the least recently used slices go first.
struct Lru {
    capacity: u64,
    used: u64,
    tick: u64,
    by_key: HashMap<u64, (u64, u32)>,
    by_age: BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            tick: 0,
            by_key: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Whether `key` was cached; caches it either way.
    fn access(&mut self, key: u64, bytes: u32) -> bool {
        self.tick += 1;
        if let Some((age, size)) = self.by_key.get(&key).copied() {
            self.by_age.remove(&age);
            self.by_age.insert(self.tick, key);
            self.by_key.insert(key, (self.tick, size));
            return true;
        }
        while self.used + u64::from(bytes) > self.capacity {
            let Some((_, old)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, size)) = self.by_key.remove(&old) {
                self.used -= u64::from(size);
            }
        }
        self.by_key.insert(key, (self.tick, bytes));
        self.by_age.insert(self.tick, key);
        self.used += u64::from(bytes);
        false
    }
}

fn key(track: u32, slice: u32) -> u64 {
    (u64::from(track) << 32) | u64::from(slice)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let plays: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let zipf_s: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0.9);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (requests, catalogue) = trace(plays, zipf_s, &mut rng);
    let warm = requests.len() / 5;
    println!(
        "{plays} plays, Zipf s = {zipf_s}, {TRACKS} tracks ({:.1} GiB), {} slice requests ({} warm-up)",
        catalogue as f64 / (1u64 << 30) as f64,
        requests.len(),
        warm
    );
    // What a cache that held the measured part's most requested slices all along would have
    // served: the best any policy that does not see the future can do on a trace whose
    // popularity does not change, a ceiling for the columns before it.
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for &(track, slice, _) in &requests[warm..] {
        *counts.entry(key(track, slice)).or_default() += 1;
    }
    let mut by_count: Vec<u64> = counts.into_values().collect();
    by_count.sort_unstable_by(|a, b| b.cmp(a));
    let measured = (requests.len() - warm) as f64;
    println!(
        "{:>10} {:>14} {:>16} {:>14} {:>10} {:>8} {:>17}",
        "cache", "moka (memory)", "S3-FIFO (disk)", "plain LRU", "memory", "disk", "most requested"
    );
    for percent in [1u64, 2, 5, 10] {
        let capacity = catalogue * percent / 100;
        // The edge's builder: as many slices as fit (`edge-node/src/cache.rs`).
        let edge: moka::future::Cache<u64, u32> = moka::future::Cache::builder()
            .max_capacity((capacity / SLICE).max(1))
            .build();
        // The disk tier's index, as many slices as fit.
        let mut disk = cadenza_edge::SliceIndex::new((capacity / SLICE).max(1) as usize);
        let mut lru = Lru::new(capacity);
        let mut total = 0u64;
        let mut hits = [0u64; 3];
        for (i, &(track, slice, bytes)) in requests.iter().enumerate() {
            let k = key(track, slice);
            let mut was = [false; 3];
            was[0] = edge.get(&k).await.is_some();
            if !was[0] {
                edge.insert(k, bytes).await;
            }
            // moka applies admission and eviction in batches; settle them at a fixed pace so
            // the run is repeatable.
            if i % 512 == 0 {
                edge.run_pending_tasks().await;
            }
            let mut file = [0u8; 20];
            file[..4].copy_from_slice(&track.to_le_bytes());
            was[1] = disk.get(&(file, slice)).is_some();
            if !was[1] {
                disk.insert((file, slice), bytes);
            }
            was[2] = lru.access(k, bytes);
            if i >= warm {
                total += u64::from(bytes);
                for (hit, was) in hits.iter_mut().zip(was) {
                    *hit += u64::from(bytes) * u64::from(was);
                }
            }
        }
        let [e, d, l] = hits.map(|h| 100.0 * h as f64 / total as f64);
        let held = (capacity / SLICE) as usize;
        let best = 100.0 * by_count.iter().take(held).sum::<u64>() as f64 / measured;
        println!(
            "{:>9}% {:>13.1}% {:>15.1}% {:>13.1}% {:>+10.1} {:>+8.1} {:>16.1}%",
            percent,
            e,
            d,
            l,
            e - l,
            d - l,
            best
        );
    }
}
