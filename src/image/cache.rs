//! The inspector's caches, on moka: least-recently-used by entries and by
//! bytes (verdicts, platforms, layer findings), and by time (tag -> digest).

use std::hash::Hash;
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// A cache bounded by entry count and by the summed weight of its values,
/// evicting the least recently used. Each entry weighs at least
/// `max_bytes / max_entries`, which is how one moka bound (weight) holds
/// both; a value heavier than the whole budget is not kept.
pub(super) struct Bounded<K, V> {
    entries: Cache<K, (V, usize)>,
}

impl<K, V> Bounded<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn new(max_entries: usize, max_bytes: usize) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let entries = Cache::builder()
            .max_capacity(max_bytes as u64)
            .weigher(move |_: &K, (_, bytes): &(V, usize)| u32::try_from((*bytes).max(floor)).unwrap_or(u32::MAX))
            .eviction_policy(EvictionPolicy::lru())
            .build();
        Bounded { entries }
    }

    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    pub(super) fn insert(&self, key: K, value: V, bytes: usize) {
        self.entries.insert(key, (value, bytes));
    }

    /// Entries held, once pending evictions are done.
    pub(super) fn len(&self) -> usize {
        self.entries.run_pending_tasks();
        self.entries.entry_count() as usize
    }

    /// The values' own bytes (not the floor), once pending evictions are done.
    pub(super) fn bytes(&self) -> usize {
        self.entries.run_pending_tasks();
        self.entries.iter().map(|(_, (_, bytes))| bytes).sum()
    }
}

/// Values that expire `ttl` after they were written; at most `max_entries`.
pub(super) fn expiring<K, V>(ttl: Duration, max_entries: u64) -> Cache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder().max_capacity(max_entries).time_to_live(ttl).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_bound_evicts_least_recently_used_first() {
        let c = Bounded::new(10, 100);
        c.insert("a", 1, 40);
        c.insert("b", 2, 40);
        c.len();
        assert_eq!(c.get(&"a"), Some(1)); // a is now the most recently used
        c.insert("c", 3, 40);
        c.len();
        assert_eq!((c.get(&"a"), c.get(&"b"), c.get(&"c")), (Some(1), None, Some(3)));
        assert_eq!(c.bytes(), 80);
        c.insert("huge", 4, 1000);
        c.len();
        assert_eq!(c.get(&"huge"), None);
    }

    #[test]
    fn the_entry_bound_holds_too() {
        let c = Bounded::new(2, 1 << 20);
        for i in 0..5 {
            c.insert(i, i, 1);
            c.len();
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&4), Some(4));
    }
}
