//! Which whole slices the memory tier holds, one bit per slice of each file.
//!
//! Every request asks whether the slice before it is held (does it continue a read?) and
//! whether the slices after it are (what to read ahead). Asked of moka, that was three
//! lookups per request (with the default read-ahead of 2) beside the one or two that serve
//! it; here it is two locked shards and bit tests. Profiled on cleartext HTTP/1.1 cache hits,
//! moka fell from 6.9 % of the edge's core to 4.5 % (benches/README.md). The slice cache sets
//! a bit before moka admits the slice and clears it from moka's eviction listener (which
//! moka also calls for a slice its admission turns away), so a bit is set while the slice is
//! held. A slice evicted and fetched again at the same moment may leave its bit clear while
//! it is held; a purge clears a file's bits at once, before moka has dropped its slices.
//! These answers only steer read-ahead, never what is served.

use crate::memo::Shards;

/// A file's held slices: bit `i % 64` of word `i / 64` for slice `i`.
type Bits = Vec<u64>;

#[derive(Default)]
pub(crate) struct Resident {
    files: Shards<[u8; 20], Bits>,
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resident").finish_non_exhaustive()
    }
}

fn word_and_bit(index: u64) -> (usize, u64) {
    ((index / 64) as usize, 1 << (index % 64))
}

impl Resident {
    /// Slice `index` of `file` is held.
    pub(crate) fn add(&self, file: &[u8; 20], index: u64) {
        let (word, bit) = word_and_bit(index);
        let mut shard = self.files.lock(file);
        let bits = shard.entry(*file).or_default();
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        bits[word] |= bit;
    }

    /// Slice `index` of `file` is no longer held; a file with none held is forgotten.
    pub(crate) fn remove(&self, file: &[u8; 20], index: u64) {
        let (word, bit) = word_and_bit(index);
        let mut shard = self.files.lock(file);
        let Some(bits) = shard.get_mut(file) else {
            return;
        };
        if let Some(w) = bits.get_mut(word) {
            *w &= !bit;
        }
        if bits.iter().all(|&w| w == 0) {
            shard.remove(file);
        }
    }

    /// No slice of `file` is held (a purge).
    pub(crate) fn forget(&self, file: &[u8; 20]) {
        self.files.lock(file).remove(file);
    }

    /// Whether slice `index` of `file` is held.
    pub(crate) fn has(&self, file: &[u8; 20], index: u64) -> bool {
        let (word, bit) = word_and_bit(index);
        self.files
            .lock(file)
            .get(file)
            .and_then(|bits| bits.get(word))
            .is_some_and(|w| w & bit != 0)
    }

    /// The slices of `file` in `indexes` that are not held, in order.
    pub(crate) fn absent(&self, file: &[u8; 20], indexes: std::ops::Range<u64>) -> Vec<u64> {
        let shard = self.files.lock(file);
        let bits = shard.get(file).map_or(&[][..], Vec::as_slice);
        indexes
            .filter(|&i| {
                let (word, bit) = word_and_bit(i);
                bits.get(word).is_none_or(|w| w & bit == 0)
            })
            .collect()
    }

    /// Files with a slice held.
    #[cfg(test)]
    pub(crate) fn files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_for_each_slice_and_forgets_a_file_with_none_left() {
        let resident = Resident::default();
        let (a, b) = ([1; 20], [2; 20]);
        for i in [0, 63, 64, 200] {
            resident.add(&a, i);
        }
        resident.add(&b, 5);
        for i in [0, 63, 64, 200] {
            assert!(resident.has(&a, i), "slice {i}");
        }
        assert!(!resident.has(&a, 1));
        assert!(!resident.has(&a, 1000), "past the last word");
        assert!(!resident.has(&b, 0));
        assert_eq!(resident.absent(&a, 62..66), vec![62, 65]);
        assert_eq!(resident.absent(&[3; 20], 0..2), vec![0, 1]);
        resident.remove(&a, 64);
        assert!(!resident.has(&a, 64));
        assert!(resident.has(&a, 63));
        for i in [0, 63, 200] {
            resident.remove(&a, i);
        }
        resident.remove(&a, 7);
        assert_eq!(resident.files(), 1, "only b is left");
        resident.forget(&b);
        assert!(!resident.has(&b, 5));
        assert_eq!(resident.files(), 0);
    }
}
