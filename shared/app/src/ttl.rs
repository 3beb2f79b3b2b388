//! What the warm-function caches (definitions, mappings, secrets) share: a map whose entries
//! count as absent once older than its time to live.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlMap<K, V> {
    ttl: Duration,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// The value stored under `key` less than the time to live ago.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entries = self.entries.lock().ok()?;
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, value)| value.clone())
    }

    /// Stores `value` as of now. (A poisoned lock only costs a cache miss later.)
    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, (Instant::now(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_time_to_live() {
        let fresh = TtlMap::new(Duration::from_secs(60));
        fresh.insert("a".to_string(), 1);
        assert_eq!(fresh.get("a"), Some(1));
        assert_eq!(fresh.get("b"), None);
        let expired = TtlMap::new(Duration::ZERO);
        expired.insert("a".to_string(), 1);
        assert_eq!(expired.get("a"), None);
    }
}
