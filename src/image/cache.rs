//! Bounded caches: least-recently-used by entries and by bytes, and a
//! short-lived map for tag -> digest.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

/// An LRU cache bounded by entry count and by the summed weight of its values.
pub(super) struct Bounded<K: Hash + Eq, V> {
    entries: LruCache<K, (V, usize)>,
    max_bytes: usize,
    bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Bounded {
            entries: LruCache::new(cap),
            max_bytes,
            bytes: 0,
        }
    }

    pub(super) fn get(&mut self, key: &K) -> Option<V> {
        self.entries.get(key).map(|(v, _)| v.clone())
    }

    /// Inserts, evicting the least recently used entries while over either bound.
    /// A value heavier than the whole budget is not kept.
    pub(super) fn insert(&mut self, key: K, value: V, weight: usize) {
        if weight > self.max_bytes {
            return;
        }
        if let Some((_, (_, old))) = self.entries.push(key, (value, weight)) {
            self.bytes -= old;
        }
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((_, (_, w))) => self.bytes -= w,
                None => break,
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Values that expire after a fixed time.
pub(super) struct Expiring<K, V> {
    entries: HashMap<K, (V, Instant)>,
    ttl: Duration,
    max_entries: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Expiring<K, V> {
    pub(super) fn new(ttl: Duration, max_entries: usize) -> Self {
        Expiring {
            entries: HashMap::new(),
            ttl,
            max_entries,
        }
    }

    pub(super) fn get(&mut self, key: &K, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((v, at)) if now.duration_since(*at) < self.ttl => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn insert(&mut self, key: K, value: V, now: Instant) {
        if self.entries.len() >= self.max_entries {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.max_entries {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (value, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_bound_evicts_least_recently_used_first() {
        let mut c = Bounded::new(10, 100);
        c.insert("a", 1, 40);
        c.insert("b", 2, 40);
        assert_eq!(c.get(&"a"), Some(1)); // a is now the most recently used
        c.insert("c", 3, 40);
        assert_eq!((c.get(&"a"), c.get(&"b"), c.get(&"c")), (Some(1), None, Some(3)));
        assert_eq!(c.bytes(), 80);
        c.insert("huge", 4, 1000);
        assert_eq!(c.get(&"huge"), None);
    }

    #[test]
    fn the_entry_bound_holds_too() {
        let mut c = Bounded::new(2, 1 << 20);
        for i in 0..5 {
            c.insert(i, i, 1);
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&4), Some(4));
    }

    #[test]
    fn expired_values_are_gone() {
        let mut c = Expiring::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        c.insert("tag", "sha256:x", t0);
        assert_eq!(c.get(&"tag", t0 + Duration::from_secs(29)), Some("sha256:x"));
        assert_eq!(c.get(&"tag", t0 + Duration::from_secs(31)), None);
    }
}
