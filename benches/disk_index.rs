//! A restarted edge's disk tier: how long indexing the slices already on disk takes, and how
//! much memory the index holds, for the edge's `DiskTier` (a blocking scan into its compact
//! S3-FIFO index, while the edge serves) against the moka index it had before (a scan
//! through `tokio::fs` into a `moka::future::Cache` keyed by file id and slice, awaited
//! before serving).
//!
//! `cargo run --release -p cadenza-benches --bin disk_index [SLICES]` writes `SLICES`
//! (default 400,000: 100 GiB of 256 KiB slices) slice files of 40 slices a file, each a
//! valid record with a 1 KiB body (the scan reads names and sizes, not bodies), under a
//! temporary directory, then runs each index in a process of its own from a cold page cache
//! where it may drop it (as root), and prints the time and resident memory each adds.
//!
//! Then a disk hit: 200 whole 256 KiB slices read back through `DiskTier::get` (read and
//! checked, with the CRC-32 records this build writes and with the SHA-256 records of builds
//! before it), against reading the same files with nothing checked, in the calling thread
//! (what nginx does with its cache files in its event loop), from a warm page cache, in time
//! per slice.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Writes `slices` slice files under `root`, 40 to a file id, in the disk tier's layout.
/// (Records as builds before the CRC wrote them, which the tier still reads: the scan reads
/// names and sizes only.)
fn populate(root: &Path, slices: u64) {
    let record = sha_record(40 * 1024, &[7u8; 1024]);
    for n in 0..slices.div_ceil(40) {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(&n.to_le_bytes());
        let dir = root.join(cadenza_common::FileId::from_bytes(&id).as_str());
        std::fs::create_dir_all(&dir).expect("create a file's directory");
        for slice in 0..40.min(slices - n * 40) {
            std::fs::write(dir.join(slice.to_string()), &record).expect("write a slice");
        }
    }
}

/// The edge's disk tier: open, and wait for its scan. Slices found, the index's own count
/// of its bytes, and the resident size while it is held.
async fn edge(root: &Path) -> (u64, u64, u64) {
    let tier = cadenza_edge::DiskTier::open(root, 4 << 40, 256 << 10)
        .await
        .expect("open the disk tier");
    tier.scanned().await;
    let (_, slices) = tier.usage();
    (slices, tier.index_bytes() as u64, rss_kib())
}

/// The index the edge had before: the same walk through `tokio::fs`, into moka.
async fn moka(root: &Path) -> (u64, u64, u64) {
    let index: moka::future::Cache<(cadenza_common::FileId, u64), u32> =
        moka::future::Cache::builder()
            .max_capacity(16 << 20)
            .support_invalidation_closures()
            .build();
    let mut dirs = tokio::fs::read_dir(root).await.expect("read the root");
    while let Ok(Some(dir)) = dirs.next_entry().await {
        let Some(id) = dir
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<cadenza_common::FileId>().ok())
        else {
            continue;
        };
        let mut files = tokio::fs::read_dir(dir.path()).await.expect("read a dir");
        while let Ok(Some(file)) = files.next_entry().await {
            let name = file.file_name();
            let Some(slice) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            index
                .insert((id.clone(), slice), u32::try_from(len).unwrap_or(u32::MAX))
                .await;
        }
    }
    index.run_pending_tasks().await;
    (index.entry_count(), 0, rss_kib())
}

fn drop_page_cache() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if let Some(mode @ ("edge" | "moka")) = first.as_deref() {
        let root = args.next().expect("a directory");
        let root = Path::new(&root);
        let before = rss_kib();
        let began = Instant::now();
        let (slices, index_bytes, after) = if mode == "edge" {
            edge(root).await
        } else {
            moka(root).await
        };
        let secs = began.elapsed().as_secs_f64();
        let grew = after.saturating_sub(before);
        println!("{secs} {grew} {slices} {index_bytes}");
        return;
    }
    let slices: u64 = first.and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let began = Instant::now();
    populate(dir.path(), slices);
    println!(
        "{slices} slice files written in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let me = std::env::current_exe().expect("this program");
    let mut results = Vec::new();
    for mode in ["edge", "moka"] {
        let cold = drop_page_cache();
        let out = Command::new(&me)
            .args([mode, &dir.path().display().to_string()])
            .output()
            .expect("run a mode");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [secs, kib, found, index_bytes] = f[..] else {
            panic!("{mode}: {line} {}", String::from_utf8_lossy(&out.stderr));
        };
        println!(
            "{:<28} {:>8.2} s  {:>8.1} MiB resident  {:>6.0} B a slice  ({found} slices{}{})",
            if mode == "edge" {
                "edge (scan, S3-FIFO index)"
            } else {
                "before (tokio::fs, moka)"
            },
            secs,
            kib / 1024.0,
            kib * 1024.0 / found.max(1.0),
            if cold { ", cold page cache" } else { "" },
            if index_bytes > 0.0 {
                format!(", index {:.1} MiB", index_bytes / f64::from(1 << 20))
            } else {
                String::new()
            }
        );
        results.push((secs, kib));
    }
    let [(es, ek), (ms, mk)] = results[..] else {
        return;
    };
    println!(
        "edge / moka: time {:.2}x, resident memory {:.2}x",
        es / ms,
        ek / mk
    );
    disk_hits().await;
}

/// A 256 KiB slice record as builds before the CRC wrote it (SHA-256).
fn sha_record(object_len: u64, body: &[u8]) -> Vec<u8> {
    let mut record = b"CZS1".to_vec();
    record.extend_from_slice(&object_len.to_le_bytes());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&record[4..16]);
    ctx.update(body);
    record.extend_from_slice(ctx.finish().as_ref());
    record.extend_from_slice(body);
    record
}

/// µs a slice over `DISK_ROUNDS` passes over the `DISK_FILES` files, each read with `read`.
async fn pass<F: Future<Output = ()>>(read: impl Fn(usize) -> F) -> f64 {
    let began = Instant::now();
    for _ in 0..DISK_ROUNDS {
        for i in 0..DISK_FILES {
            read(i).await;
        }
    }
    began.elapsed().as_secs_f64() * 1e6 / f64::from(DISK_ROUNDS) / DISK_FILES as f64
}

const DISK_FILES: usize = 200;
const DISK_ROUNDS: u32 = 5;

/// Time per 256 KiB slice read back: the edge's tier (CRC records, SHA records) and a plain
/// read of the same files.
async fn disk_hits() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tier = cadenza_edge::DiskTier::open(dir.path(), 1 << 30, 256 << 10)
        .await
        .expect("open the disk tier");
    tier.scanned().await;
    let body: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let body = bytes::Bytes::from(body);
    let ids: Vec<cadenza_common::FileId> = (0..DISK_FILES)
        .map(|_| cadenza_common::FileId::random())
        .collect();
    for id in &ids {
        tier.put(id, 0, 1 << 20, &body, tier.epoch()).await;
    }
    let path = |id: &cadenza_common::FileId| dir.path().join(id.as_str()).join("0");
    let (tier, ids) = (&tier, &ids);
    let by_tier = move |i: usize| async move {
        tier.get(&ids[i], 0).await.expect("a slice the tier wrote");
    };
    let plainly = move |i: usize| {
        std::fs::read(path(&ids[i])).expect("a slice file");
        std::future::ready(())
    };
    let (mut crc, mut plain, mut sha) = (f64::MAX, f64::MAX, f64::MAX);
    // The two alternate, so a slower moment of the machine counts against both.
    for _ in 0..3 {
        crc = crc.min(pass(by_tier).await);
        plain = plain.min(pass(plainly).await);
    }
    // The same slices as builds before the CRC wrote them.
    for id in ids {
        std::fs::write(path(id), sha_record(1 << 20, &body)).expect("write a slice");
    }
    for _ in 0..3 {
        sha = sha.min(pass(by_tier).await);
    }
    println!(
        "disk hit, 256 KiB slice, warm page cache (best of 3): edge {crc:.1} µs (CRC-32 \
         records), {sha:.1} µs (earlier builds' SHA-256 records), plain read {plain:.1} µs"
    );
    println!(
        "edge / plain read: {:.2}x; CRC-32 / SHA-256 records: {:.2}x",
        crc / plain,
        crc / sha
    );
}
