//! A bounded map for facts that are cheap to lose and looked up on every request: tokens
//! whose signature was checked, and object sizes.
//!
//! The slice cache needs moka's admission and recency policy; these do not. A moka lookup
//! also records the read for that policy, and the edge made about five per request: moka
//! was about a third of the edge's user-space samples serving cache hits over cleartext
//! HTTP/1.1 (8.4 % of its core, against 24 % for its binary and libc together).
//! A memo is a few locked hash-map shards. A shard that fills drops its expired entries,
//! and if none had expired, all of them: a dropped fact is learned again (a signature
//! checked again, a size read from a cached slice), never wrong.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Shards: enough that the runtime's workers seldom meet on one lock.
const SHARDS: usize = 16;

use crate::cache::Hasher;

/// Hash maps behind locks, a key's shard picked by its hash: the edge's maps looked up on
/// every request ([`Memo`], [`crate::resident::Resident`]).
pub(crate) struct Shards<K, V> {
    shards: [Mutex<HashMap<K, V, Hasher>>; SHARDS],
    hasher: Hasher,
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::with_hasher(Hasher::default()))),
            hasher: Hasher::default(),
        }
    }
}

impl<K, V> Shards<K, V> {
    /// The locked shard `key` belongs in. A map has no invariant of ours that a panic
    /// elsewhere could have broken, so a poisoned lock is taken as it is.
    pub(crate) fn lock<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V, Hasher>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries in all shards.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

pub(crate) struct Memo<K, V> {
    shards: Shards<K, Entry<V>>,
    /// Entries a shard holds at most.
    per_shard: usize,
    /// How long an entry is believed; `None`: until dropped.
    ttl: Option<Duration>,
}

struct Entry<V> {
    value: V,
    /// When the entry stops being believed (with a TTL).
    until: Option<Instant>,
}

impl<K, V> std::fmt::Debug for Memo<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("per_shard", &self.per_shard)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    /// A memo of at most about `capacity` entries, each believed for `ttl` when given.
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Self {
            shards: Shards::default(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            ttl,
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards.lock(key);
        let entry = shard.get(key)?;
        match entry.until {
            Some(until) if Instant::now() >= until => None,
            _ => Some(entry.value.clone()),
        }
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let until = self.ttl.map(|ttl| Instant::now() + ttl);
        self.insert_until(key, value, until);
    }

    /// Inserts an entry believed until `until`: [`Memo::insert`] with the deadline given,
    /// which lets a test make expired entries without waiting for them to expire.
    fn insert_until(&self, key: K, value: V, until: Option<Instant>) {
        let mut shard = self.shards.lock(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let now = Instant::now();
            shard.retain(|_, e| e.until.is_none_or(|until| until > now));
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(key, Entry { value, until });
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards.lock(key).remove(key);
    }

    /// Entries held, expired ones included until a full shard drops them.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_put_until_it_expires_or_is_removed() {
        let memo: Memo<String, u64> = Memo::new(100, Some(Duration::from_secs(3600)));
        memo.insert("a".to_owned(), 1);
        memo.insert("b".to_owned(), 2);
        assert_eq!(memo.get("a"), Some(1));
        memo.insert("a".to_owned(), 3);
        assert_eq!(memo.get("a"), Some(3));
        memo.remove("b");
        assert_eq!(memo.get("b"), None);
        memo.insert_until("a".to_owned(), 4, Some(Instant::now()));
        assert_eq!(memo.get("a"), None, "expired");
        // The TTL is what `insert` believes an entry for: none at all here.
        let at_once: Memo<String, u64> = Memo::new(100, Some(Duration::ZERO));
        at_once.insert("a".to_owned(), 1);
        assert_eq!(at_once.get("a"), None, "expired");
    }

    #[test]
    fn stays_within_its_bound() {
        let memo: Memo<u64, u64> = Memo::new(1000, None);
        for i in 0..100_000 {
            memo.insert(i, i * 2);
            assert_eq!(memo.get(&i), Some(i * 2));
        }
        let per_shard = 1000usize.div_ceil(SHARDS);
        assert!(memo.len() <= SHARDS * per_shard, "{} entries", memo.len());
        // The most recent entries survive a shard's clearing more often than not.
        let recent = (99_000..100_000).filter(|i| memo.get(i).is_some()).count();
        assert!(recent > 150, "{recent} of the last 1000 held");
    }

    #[test]
    fn a_full_shard_drops_expired_entries_first() {
        // The entries to be dropped are made already expired, not left to expire: a test
        // that slept past a TTL and then raced it failed once on a loaded CI machine.
        let memo: Memo<u64, u64> = Memo::new(SHARDS * 100, Some(Duration::from_secs(3600)));
        let n = SHARDS as u64 * 50;
        let past = Instant::now();
        for i in 0..n {
            memo.insert_until(i, i, Some(past));
        }
        assert!((0..n).all(|i| memo.get(&i).is_none()), "expired");
        for i in n..2 * n {
            memo.insert(i, i);
        }
        assert!((n..2 * n).all(|i| memo.get(&i) == Some(i)));
        assert!(memo.len() <= SHARDS * 100);
    }
}
