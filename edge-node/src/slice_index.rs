//! The disk tier's index: which slices are on disk and how many bytes each file holds, kept
//! in about 60 bytes a slice, with S3-FIFO eviction (Yang et al., "FIFO queues are all you
//! need for cache eviction", SOSP 2023).
//!
//! A disk of a few terabytes holds millions of slices, so the index is what the disk tier
//! costs in memory: moka spent about 420 bytes on each (its entries, deques, timestamps and a
//! `String` file id), 3.3 GB for 2 TB of 256 KiB slices. Here a slice is one 32-byte slot in a
//! slab, a 4-byte slot number in a hash table and another in one of two FIFO queues, and the
//! ghost of an evicted one is a 2-byte tag.
//!
//! S3-FIFO: a new slice enters a small queue (a tenth of the room); leaving it, a slice read
//! again meanwhile moves to the main queue, one that was not is evicted and leaves a ghost
//! tag. A slice whose ghost is found when it comes back goes straight to the main queue.
//! Leaving the main queue, a slice read since it last passed (a counter up to 3, one off per
//! pass) goes round again; one that was not is evicted. One-hit wonders (a track played once
//! and skipped) go quickly, as TinyLFU's admission keeps them out of moka's memory tier.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A slice: its file id's bytes and its index in the file.
pub type Key = ([u8; 20], u32);

/// Where a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Small,
    Main,
    /// Removed (a purge, a damaged file) while its number still waits in a queue; the slot is
    /// reused once the queue lets it go.
    Removed,
    /// On the free list.
    Free,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    bytes: u32,
    /// Reads since it entered its queue or last passed the main queue's head, up to 3.
    freq: u8,
    place: Place,
}

/// Slices on disk, at most `capacity` of them.
pub struct SliceIndex {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    small: VecDeque<u32>,
    main: VecDeque<u32>,
    /// Live slots in each queue (queues may also hold removed ones).
    in_small: usize,
    in_main: usize,
    /// 16-bit tags of slices evicted from the small queue, at `hash & mask`; 0 is none.
    ghosts: Box<[u16]>,
    capacity: usize,
    bytes: u64,
    hasher: foldhash::fast::FixedState,
}

impl std::fmt::Debug for SliceIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SliceIndex({} of {})", self.len(), self.capacity)
    }
}

impl SliceIndex {
    /// Room for `capacity` slices (at least 1; the ghost tags, 4 to 8 bytes for each, are
    /// allocated zeroed up front and touched as slices are evicted).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        // Tags are overwritten where they collide, so the table has two to four places per
        // slice held: most ghosts last as long as a slice's stay in the main queue.
        let ghosts = capacity.saturating_mul(2).next_power_of_two().min(1 << 30);
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            in_small: 0,
            in_main: 0,
            ghosts: vec![0u16; ghosts].into_boxed_slice(),
            capacity,
            bytes: 0,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed_cafe),
        }
    }

    /// Slices indexed.
    pub fn len(&self) -> usize {
        self.in_small + self.in_main
    }

    /// Whether no slice is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the slices indexed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes the index holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.table.allocation_size()
            + self.slots.capacity() * size_of::<Slot>()
            + self.free.capacity() * 4
            + (self.small.capacity() + self.main.capacity()) * 4
            + self.ghosts.len() * 2
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &Key) -> Option<u32> {
        let slots = &self.slots;
        self.table
            .find(self.hash(key), |&s| slots[s as usize].key == *key)
            .copied()
    }

    /// Whether `key` is indexed (not counted as a read).
    pub fn contains(&self, key: &Key) -> bool {
        self.find(key).is_some()
    }

    /// The bytes of `key`'s file if it is indexed, counting a read.
    pub fn get(&mut self, key: &Key) -> Option<u32> {
        let s = self.find(key)?;
        let slot = &mut self.slots[s as usize];
        slot.freq = (slot.freq + 1).min(3);
        Some(slot.bytes)
    }

    /// Indexes `key`'s file of `bytes` (if it is indexed already, its size is updated), and
    /// returns the slices evicted to make room, whose files the caller removes.
    pub fn insert(&mut self, key: Key, bytes: u32) -> Vec<Key> {
        if let Some(s) = self.find(&key) {
            let slot = &mut self.slots[s as usize];
            self.bytes = self.bytes - u64::from(slot.bytes) + u64::from(bytes);
            slot.bytes = bytes;
            return Vec::new();
        }
        let mut evicted = Vec::new();
        while self.len() >= self.capacity {
            match self.evict() {
                Some(key) => evicted.push(key),
                None => break,
            }
        }
        let hash = self.hash(&key);
        let ghost = self.ghost_at(hash);
        let returning = self.ghosts[ghost.0] == ghost.1;
        if returning {
            self.ghosts[ghost.0] = 0;
        }
        let place = if returning { Place::Main } else { Place::Small };
        let slot = Slot {
            key,
            bytes,
            freq: 0,
            place,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                // Grown by a quarter at a time, not doubled: the slab is most of the index.
                if self.slots.len() == self.slots.capacity() {
                    self.slots.reserve_exact((self.slots.len() / 4).max(1024));
                }
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, s, |&s| hasher.hash_one(slots[s as usize].key));
        if returning {
            self.main.push_back(s);
            self.in_main += 1;
        } else {
            self.small.push_back(s);
            self.in_small += 1;
        }
        self.bytes += u64::from(bytes);
        evicted
    }

    /// The indexed slices of `file`, by a pass over every slot (for a purge that cannot list
    /// the file's directory).
    pub fn keys_of(&self, file: &[u8; 20]) -> Vec<Key> {
        self.slots
            .iter()
            .filter(|s| matches!(s.place, Place::Small | Place::Main) && s.key.0 == *file)
            .map(|s| s.key)
            .collect()
    }

    /// Forgets `key`; the bytes it had, if it was indexed.
    pub fn remove(&mut self, key: &Key) -> Option<u32> {
        let s = self.unlink(key)?;
        let slot = &mut self.slots[s as usize];
        match slot.place {
            Place::Small => self.in_small -= 1,
            Place::Main => self.in_main -= 1,
            Place::Removed | Place::Free => {}
        }
        slot.place = Place::Removed;
        self.bytes -= u64::from(slot.bytes);
        Some(slot.bytes)
    }

    /// Takes `key` out of the hash table; its slot.
    fn unlink(&mut self, key: &Key) -> Option<u32> {
        let slots = &self.slots;
        let entry = self
            .table
            .find_entry(self.hash(key), |&s| slots[s as usize].key == *key)
            .ok()?;
        Some(entry.remove().0)
    }

    fn ghost_at(&self, hash: u64) -> (usize, u16) {
        let at = (hash as usize) & (self.ghosts.len() - 1);
        (at, (hash >> 48) as u16 | 1)
    }

    /// Evicts one slice: from the small queue while it holds its tenth of the room (or the
    /// main queue is empty), else from the main queue.
    fn evict(&mut self) -> Option<Key> {
        loop {
            if self.in_small == 0 && self.in_main == 0 {
                return None;
            }
            let from_small =
                self.in_small > 0 && (self.in_small * 10 >= self.capacity || self.in_main == 0);
            let queue = if from_small {
                &mut self.small
            } else {
                &mut self.main
            };
            let s = queue.pop_front()?;
            let slot = &mut self.slots[s as usize];
            match slot.place {
                Place::Removed => {
                    slot.place = Place::Free;
                    self.free.push(s);
                }
                Place::Free => {}
                Place::Small if slot.freq > 0 => {
                    slot.freq = 0;
                    slot.place = Place::Main;
                    self.main.push_back(s);
                    self.in_small -= 1;
                    self.in_main += 1;
                }
                Place::Main if slot.freq > 0 => {
                    slot.freq -= 1;
                    self.main.push_back(s);
                }
                Place::Small | Place::Main => {
                    let key = slot.key;
                    if from_small {
                        let hash = self.hash(&key);
                        let (at, tag) = self.ghost_at(hash);
                        self.ghosts[at] = tag;
                    }
                    self.remove(&key);
                    let slot = &mut self.slots[s as usize];
                    slot.place = Place::Free;
                    self.free.push(s);
                    return Some(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(file: u8, slice: u32) -> Key {
        ([file; 20], slice)
    }

    #[test]
    fn holds_at_most_its_capacity_and_counts_bytes() {
        let mut index = SliceIndex::new(10);
        let mut evicted = Vec::new();
        for i in 0..25 {
            evicted.extend(index.insert(key(1, i), 100 + i));
            assert!(index.len() <= 10);
        }
        assert_eq!(index.len(), 10);
        assert_eq!(evicted.len(), 15);
        let held: Vec<u32> = (0..25).filter(|&i| index.contains(&key(1, i))).collect();
        let expected: u64 = held.iter().map(|&i| u64::from(100 + i)).sum();
        assert_eq!(index.bytes(), expected);
        for k in &evicted {
            assert!(!index.contains(k), "{k:?} evicted but still indexed");
        }
        // Updating a slice's size changes the count, not the number of slices.
        let (&first, _) = held.split_first().unwrap();
        assert!(index.insert(key(1, first), 1).is_empty());
        assert_eq!(index.bytes(), expected - u64::from(100 + first) + 1);
        assert_eq!(index.len(), 10);
    }

    #[test]
    fn slices_read_again_outlast_a_scan_of_slices_read_once() {
        let mut index = SliceIndex::new(100);
        // A working set of 50 slices, each read a few times.
        for i in 0..50 {
            index.insert(key(1, i), 1);
        }
        for _ in 0..3 {
            for i in 0..50 {
                assert_eq!(index.get(&key(1, i)), Some(1));
            }
        }
        // A scan of 1,000 slices read once each (tracks played once and skipped).
        for i in 0..1000 {
            index.insert(key(2, i), 1);
        }
        let kept = (0..50).filter(|&i| index.contains(&key(1, i))).count();
        assert_eq!(kept, 50, "the working set survives the scan");
        assert!(index.len() <= 100);
    }

    #[test]
    fn a_slice_evicted_young_and_asked_for_again_goes_to_the_main_queue() {
        let mut index = SliceIndex::new(20);
        index.insert(key(1, 0), 1);
        for i in 0..21 {
            index.insert(key(2, i), 1);
        }
        assert!(!index.contains(&key(1, 0)));
        index.insert(key(1, 0), 1);
        assert_eq!(
            index.slots[index.find(&key(1, 0)).unwrap() as usize].place,
            Place::Main
        );
        // Another 30 newcomers pass through the small queue without displacing it.
        for i in 0..30 {
            index.insert(key(3, i), 1);
        }
        assert!(index.contains(&key(1, 0)));
    }

    #[test]
    fn a_files_slices_are_found_by_a_pass_over_the_index() {
        let mut index = SliceIndex::new(100);
        for slice in 0..5 {
            index.insert(key(1, slice), 10);
            index.insert(key(2, slice), 10);
        }
        index.remove(&key(1, 3));
        let mut found = index.keys_of(&[1; 20]);
        found.sort();
        assert_eq!(found, [key(1, 0), key(1, 1), key(1, 2), key(1, 4)]);
        assert!(index.keys_of(&[3; 20]).is_empty());
    }

    #[test]
    fn removed_slices_free_their_room_and_slots_are_reused() {
        let mut index = SliceIndex::new(8);
        for i in 0..8 {
            index.insert(key(1, i), 10);
        }
        for i in 0..4 {
            index.insert(key(2, i), 10);
        }
        assert_eq!(index.len(), 8);
        let had = (0..4).filter(|&i| index.contains(&key(2, i))).count();
        let removed = (0..4).filter_map(|i| index.remove(&key(2, i))).count();
        assert_eq!(removed, had);
        assert_eq!(index.remove(&key(2, 0)), None);
        assert_eq!(index.len(), 8 - had);
        assert_eq!(index.bytes(), 10 * (8 - had) as u64);
        // Churn far past the slab's size: the slab does not grow past what is held plus
        // what waits in the queues.
        for i in 0..10_000 {
            index.insert(key(3, i), 10);
            if i % 3 == 0 {
                index.remove(&key(3, i));
            }
        }
        assert!(index.len() <= 8);
        assert!(index.slots.len() <= 16, "{} slots", index.slots.len());
        assert_eq!(index.bytes(), 10 * index.len() as u64);
    }

    #[test]
    fn a_full_index_costs_at_most_64_bytes_a_slice() {
        let capacity = 300_000;
        let mut index = SliceIndex::new(capacity);
        let mut file = [0u8; 20];
        for n in 0u32..3 * capacity as u32 {
            file[..4].copy_from_slice(&(n / 40).to_le_bytes());
            index.insert((file, n % 40), 262_192);
            if n % 7 == 0 {
                index.get(&(file, n % 40));
            }
        }
        assert_eq!(index.len(), capacity);
        let each = index.heap_bytes() / capacity;
        println!("{each} bytes a slice ({} in all)", index.heap_bytes());
        assert!(each <= 64, "{each} bytes a slice");
    }

    proptest::proptest! {
        /// Whatever is inserted, read and removed: the index holds at most its capacity, its
        /// byte count is the sum of what it holds, every slice it holds was inserted last with
        /// those bytes, and what it evicted is not held.
        #[test]
        fn the_index_agrees_with_a_plain_map(
            capacity in 1usize..40,
            ops in proptest::collection::vec((0u8..4, 0u8..3, 0u32..30, 1u32..1000), 1..400),
        ) {
            let mut index = SliceIndex::new(capacity);
            let mut model = std::collections::HashMap::new();
            for (op, file, slice, bytes) in ops {
                let k = key(file, slice);
                match op {
                    0 | 1 => {
                        for gone in index.insert(k, bytes) {
                            proptest::prop_assert!(gone != k);
                            proptest::prop_assert!(model.remove(&gone).is_some());
                        }
                        model.insert(k, bytes);
                    }
                    2 => {
                        proptest::prop_assert_eq!(index.get(&k), model.get(&k).copied());
                    }
                    _ => {
                        proptest::prop_assert_eq!(index.remove(&k), model.remove(&k));
                    }
                }
                proptest::prop_assert!(index.len() <= capacity);
                proptest::prop_assert_eq!(index.len(), model.len());
                proptest::prop_assert_eq!(index.bytes(), model.values().map(|&b| u64::from(b)).sum::<u64>());
            }
            for (k, bytes) in &model {
                proptest::prop_assert_eq!(index.get(k), Some(*bytes));
            }
        }
    }
}
