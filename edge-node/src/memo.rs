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
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards: enough that the runtime's workers seldom meet on one lock.
const SHARDS: usize = 16;

use crate::cache::Hasher;

type Shard<K, V> = Mutex<HashMap<K, Entry<V>, Hasher>>;

pub(crate) struct Memo<K, V> {
    shards: Box<[Shard<K, V>]>,
    /// Entries a shard holds at most.
    per_shard: usize,
    /// How long an entry is believed; `None`: until dropped.
    ttl: Option<Duration>,
    hasher: Hasher,
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
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::default())))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            ttl,
            hasher: Hasher::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, V> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        &self.shards[i]
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard(key).lock().ok()?;
        let entry = shard.get(key)?;
        match entry.until {
            Some(until) if Instant::now() >= until => None,
            _ => Some(entry.value.clone()),
        }
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        let Ok(mut shard) = self.shard(&key).lock() else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            let now = Instant::now();
            shard.retain(|_, e| e.until.is_none_or(|until| until > now));
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        let until = self.ttl.map(|ttl| Instant::now() + ttl);
        shard.insert(key, Entry { value, until });
    }

    pub(crate) fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Ok(mut shard) = self.shard(key).lock() {
            shard.remove(key);
        }
    }

    /// Entries held, expired ones included until a full shard drops them.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_put_until_it_expires_or_is_removed() {
        let memo: Memo<String, u64> = Memo::new(100, Some(Duration::from_millis(50)));
        memo.insert("a".to_owned(), 1);
        memo.insert("b".to_owned(), 2);
        assert_eq!(memo.get("a"), Some(1));
        memo.insert("a".to_owned(), 3);
        assert_eq!(memo.get("a"), Some(3));
        memo.remove("b");
        assert_eq!(memo.get("b"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(memo.get("a"), None, "expired");
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
        let memo: Memo<u64, u64> = Memo::new(SHARDS * 100, Some(Duration::from_secs(1)));
        let n = SHARDS as u64 * 50;
        for i in 0..n {
            memo.insert(i, i);
        }
        std::thread::sleep(Duration::from_millis(1100));
        for i in n..2 * n {
            memo.insert(i, i);
        }
        assert!((n..2 * n).all(|i| memo.get(&i) == Some(i)));
        assert!(memo.len() <= SHARDS * 100);
    }
}
