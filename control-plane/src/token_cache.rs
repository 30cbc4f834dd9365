//! A bounded map from a token's SHA-256 to what is known about it (a verified JWT, an opaque
//! token's row), so that the token a gateway presents again and again costs a hash and a map
//! lookup. The map is a shortcut, never the truth: callers re-check expiry and whatever else
//! can change on every hit.
//!
//! Bounded: when full, expired entries go first and, if it is still full, everything (a flood
//! of distinct tokens costs refills, never memory).
//!
//! Removals advance a generation. A value read from the database before a removal must not be
//! cached after it ([`TokenCache::insert_if_unchanged`]): otherwise a lookup racing a
//! revocation would put the revoked token back for good.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A cached value's lifetime (Unix seconds), for making room.
pub trait Expiring {
    fn expires_at(&self) -> i64;
}

pub struct TokenCache<V> {
    capacity: usize,
    inner: RwLock<Inner<V>>,
}

struct Inner<V> {
    entries: HashMap<[u8; 32], Arc<V>>,
    generation: u64,
}

impl<V> Inner<V> {
    fn removed(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

impl<V: Expiring> TokenCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: RwLock::new(Inner {
                entries: HashMap::new(),
                generation: 0,
            }),
        }
    }

    /// A poisoned lock answers nothing: the caller asks the truth instead.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<V>> {
        self.inner.read().ok()?.entries.get(key).cloned()
    }

    pub fn insert(&self, key: [u8; 32], value: Arc<V>, now: i64) {
        if let Ok(mut inner) = self.inner.write() {
            self.make_room(&mut inner, now);
            inner.entries.insert(key, value);
        }
    }

    /// Where removals stand; take it before reading the value to cache.
    pub fn generation(&self) -> u64 {
        self.inner.read().map_or(u64::MAX, |i| i.generation)
    }

    /// Caches `value` unless something was removed since `generation` was taken (the value
    /// may be what was removed). Returns whether it was cached.
    pub fn insert_if_unchanged(
        &self,
        generation: u64,
        key: [u8; 32],
        value: Arc<V>,
        now: i64,
    ) -> bool {
        let Ok(mut inner) = self.inner.write() else {
            return false;
        };
        if inner.generation != generation {
            return false;
        }
        self.make_room(&mut inner, now);
        inner.entries.insert(key, value);
        true
    }

    pub fn remove(&self, key: &[u8; 32]) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.remove(key);
            inner.removed();
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.retain(|_, v| keep(v));
            inner.removed();
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.clear();
            inner.removed();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |i| i.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Making room drops only what no lookup could use (expired) or everything; neither can
    /// resurrect anything, so it leaves the generation alone.
    fn make_room(&self, inner: &mut Inner<V>, now: i64) {
        if inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, v| v.expires_at() > now);
            if inner.entries.len() >= self.capacity {
                inner.entries.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Exp(i64);

    impl Expiring for Exp {
        fn expires_at(&self) -> i64 {
            self.0
        }
    }

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = TokenCache::new(100);
        for i in 0..10_000 {
            cache.insert(key(i), Arc::new(Exp(2_000)), 1_000);
            assert!(cache.len() <= 100, "{} entries after {i}", cache.len());
        }
        for i in 10_000..20_000 {
            let g = cache.generation();
            assert!(cache.insert_if_unchanged(g, key(i), Arc::new(Exp(2_000)), 1_000));
            assert!(cache.len() <= 100);
        }
        // The newest entry is always kept.
        assert!(cache.get(&key(19_999)).is_some());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let cache = TokenCache::new(3);
        cache.insert(key(1), Arc::new(Exp(10)), 0);
        cache.insert(key(2), Arc::new(Exp(500)), 0);
        cache.insert(key(3), Arc::new(Exp(500)), 0);
        cache.insert(key(4), Arc::new(Exp(500)), 100);
        assert!(cache.get(&key(1)).is_none());
        for k in 2..=4 {
            assert!(cache.get(&key(k)).is_some(), "{k}");
        }
    }

    #[test]
    fn a_fill_that_raced_a_removal_is_dropped() {
        let cache = TokenCache::new(10);
        for remove in [
            &(|c: &TokenCache<Exp>| c.remove(&key(1))) as &dyn Fn(&TokenCache<Exp>),
            &|c| c.retain(|_| true),
            &|c| c.clear(),
        ] {
            cache.remove(&key(1));
            let before = cache.generation();
            remove(&cache);
            assert!(!cache.insert_if_unchanged(before, key(1), Arc::new(Exp(9)), 0));
            assert!(cache.get(&key(1)).is_none());
            let now = cache.generation();
            assert!(cache.insert_if_unchanged(now, key(1), Arc::new(Exp(9)), 0));
            assert!(cache.get(&key(1)).is_some());
        }
        // Inserting (and making room) does not invalidate other fills.
        let g = cache.generation();
        cache.insert(key(2), Arc::new(Exp(9)), 0);
        assert_eq!(cache.generation(), g);
    }
}
