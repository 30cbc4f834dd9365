//! Bounded expiring caches for verified tokens and introspection answers, keyed by a 128-bit
//! keyed hash (SipHash-1-3 with its 128-bit output and a per-process random key) so a cache never
//! holds the bearer tokens themselves and nobody who does not know the key can aim a token at
//! another's entry. The key of every presented token is computed on the per-request path: one
//! SipHash pass costs a fraction of SHA-256 (and half of two 64-bit SipHash passes).
//!
//! Eviction is FIFO by insertion: when full, expired entries are swept (at most once per earliest
//! expiry, so a cache full of live entries does not rescan on every insert), then the oldest go.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

pub type CacheKey = u128;

/// Computes cache keys; one per cache owner, a random key chosen at creation.
#[derive(Debug, Clone)]
pub struct Keyer {
    k0: u64,
    k1: u64,
}

impl Default for Keyer {
    /// The key comes from std's `RandomState`, which seeds itself from the OS (WASI's
    /// `random_get` inside Envoy): two of its outputs are as unpredictable as its own keys.
    fn default() -> Self {
        Self {
            k0: RandomState::new().hash_one(0u8),
            k1: RandomState::new().hash_one(1u8),
        }
    }
}

impl Keyer {
    /// The key, for a host to share it between workers.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.k0.to_be_bytes());
        b[8..].copy_from_slice(&self.k1.to_be_bytes());
        b
    }

    /// A keyer from [`Keyer::to_bytes`]; `None` unless exactly 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Keyer> {
        let b: [u8; 16] = b.try_into().ok()?;
        let (k0, k1) = b.split_at(8);
        Some(Keyer {
            k0: u64::from_be_bytes(k0.try_into().ok()?),
            k1: u64::from_be_bytes(k1.try_into().ok()?),
        })
    }

    /// Keyed hash over length-prefixed parts, so `("ab", "c")` and `("a", "bc")` differ.
    pub fn key(&self, parts: &[&[u8]]) -> CacheKey {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        for p in parts {
            h.write_u64(p.len() as u64);
            h.write(p);
        }
        h.finish128().as_u128()
    }
}

/// The config-time part of a cache key: everything about the authenticator that shapes what it
/// asks or how it judges the answer, length-prefixed so no two configurations encode alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope(Vec<u8>);

impl KeyScope {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one field (its length first, so `"ab","c"` and `"a","bc"` differ).
    pub fn field(mut self, bytes: impl AsRef<[u8]>) -> Self {
        let bytes = bytes.as_ref();
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a list as one field of length-prefixed items, so `["a b"]` and `["a","b"]`,
    /// or `["a"],[]` and `[],["a"]`, differ.
    pub fn list<S: AsRef<[u8]>>(self, items: impl IntoIterator<Item = S>) -> Self {
        let inner = items.into_iter().fold(KeyScope::new(), KeyScope::field);
        self.field(inner.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Keys are already uniformly random: the map uses their low bits instead of hashing again.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    expires_at: u64,
    seq: u64,
}

#[derive(Debug)]
pub struct ExpiringCache<V> {
    capacity: usize,
    map: HashMap<CacheKey, Entry<V>, BuildHasherDefault<PassThrough>>,
    /// Insertion order; entries whose `seq` no longer matches the map are stale and skipped.
    order: VecDeque<(CacheKey, u64)>,
    next_seq: u64,
    /// No entry expires before this; sweeping earlier would find nothing.
    earliest_expiry: u64,
}

impl<V> ExpiringCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
            earliest_expiry: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The value, unless absent or expired (`now >= expires_at`; expired entries are removed).
    pub fn get(&mut self, key: &CacheKey, now: u64) -> Option<&V> {
        if self.map.get(key).is_some_and(|e| now >= e.expires_at) {
            self.map.remove(key);
            return None;
        }
        self.map.get(key).map(|e| &e.value)
    }

    /// The value and its expiry (unix seconds), without deciding whether it has expired: for
    /// callers that first work out whether they need an exact clock.
    pub fn peek(&self, key: &CacheKey) -> Option<(&V, u64)> {
        self.map.get(key).map(|e| (&e.value, e.expires_at))
    }

    pub fn remove(&mut self, key: &CacheKey) -> Option<V> {
        self.map.remove(key).map(|e| e.value)
    }

    /// Stores `value` until `expires_at` (unix seconds). Already-expired values are not stored.
    pub fn insert(&mut self, key: CacheKey, value: V, expires_at: u64, now: u64) {
        if self.capacity == 0 || expires_at <= now {
            return;
        }
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            if now >= self.earliest_expiry {
                self.sweep(now);
            }
            while self.map.len() >= self.capacity {
                let Some((old, seq)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&old).is_some_and(|e| e.seq == seq) {
                    self.map.remove(&old);
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.earliest_expiry = self.earliest_expiry.min(expires_at);
        self.map.insert(
            key,
            Entry {
                value,
                expires_at,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Re-inserted and removed keys leave stale order entries; compact before they pile up.
        if self.order.len() > 2 * self.capacity.max(8) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    fn sweep(&mut self, now: u64) {
        self.map.retain(|_, e| now < e.expires_at);
        self.earliest_expiry = self
            .map
            .values()
            .map(|e| e.expires_at)
            .min()
            .unwrap_or(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u32) -> CacheKey {
        CacheKey::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    }

    #[test]
    fn key_is_length_prefixed() {
        let keyer = Keyer::default();
        let cache_key = |parts: &[&[u8]]| keyer.key(parts);
        assert_ne!(cache_key(&[b"ab", b"c"]), cache_key(&[b"a", b"bc"]));
        assert_ne!(cache_key(&[b"abc"]), cache_key(&[b"abc", b""]));
        assert_eq!(cache_key(&[b"a", b"bc"]), cache_key(&[b"a", b"bc"]));
        // Another owner's keys give other hashes.
        assert_ne!(Keyer::default().key(&[b"a"]), keyer.key(&[b"a"]));
    }

    #[test]
    fn key_scopes_are_unambiguous() {
        let one = |items: &[&str]| KeyScope::new().list(items).field("x");
        assert_ne!(one(&["a b"]), one(&["a", "b"]));
        assert_ne!(one(&["ab"]), one(&["a", "b"]));
        assert_ne!(
            KeyScope::new().list(["a"]).list::<&str>([]),
            KeyScope::new().list::<&str>([]).list(["a"])
        );
        assert_ne!(
            KeyScope::new().field("a").field(""),
            KeyScope::new().field("a")
        );
        assert_eq!(one(&["a", "b"]), one(&["a", "b"]));
    }

    #[test]
    fn expired_entries_are_misses_and_removed() {
        let mut c = ExpiringCache::new(4);
        c.insert(k(1), "v", 110, 100);
        assert_eq!(c.get(&k(1), 109), Some(&"v"));
        assert_eq!(c.get(&k(1), 110), None);
        assert!(c.is_empty());
        c.insert(k(2), "old", 100, 100);
        assert!(c.is_empty(), "already expired values are not stored");
    }

    #[test]
    fn evicts_expired_before_live() {
        let mut c = ExpiringCache::new(3);
        c.insert(k(1), 1, 1000, 0);
        c.insert(k(2), 2, 10, 0);
        c.insert(k(3), 3, 1000, 0);
        c.insert(k(4), 4, 1000, 20);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k(1), 20), Some(&1), "oldest live entry kept");
        assert_eq!(c.get(&k(2), 20), None);
        assert_eq!(c.get(&k(4), 20), Some(&4));
    }

    #[test]
    fn evicts_oldest_when_all_live() {
        let mut c = ExpiringCache::new(2);
        c.insert(k(1), 1, 1000, 0);
        c.insert(k(2), 2, 1000, 0);
        c.insert(k(3), 3, 1000, 0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&k(1), 0), None);
        assert_eq!(c.get(&k(2), 0), Some(&2));
        assert_eq!(c.get(&k(3), 0), Some(&3));
    }

    #[test]
    fn reinsert_updates_value_and_order() {
        let mut c = ExpiringCache::new(2);
        c.insert(k(1), 1, 1000, 0);
        c.insert(k(2), 2, 1000, 0);
        c.insert(k(1), 11, 1000, 0); // now k(2) is the oldest
        c.insert(k(3), 3, 1000, 0);
        assert_eq!(c.get(&k(1), 0), Some(&11));
        assert_eq!(c.get(&k(2), 0), None);
        assert_eq!(c.get(&k(3), 0), Some(&3));
    }

    #[test]
    fn stays_bounded_under_churn() {
        let mut c = ExpiringCache::new(16);
        for i in 0..10_000u32 {
            c.insert(k(i % 40), i, 1_000_000, u64::from(i));
            assert!(c.len() <= 16);
            assert!(c.order.len() <= 2 * 16 + 1);
        }
        let mut zero = ExpiringCache::new(0);
        zero.insert(k(1), 1, 10, 0);
        assert!(zero.is_empty());
    }

    /// Every worker keeps one of these for the life of the VM, so what bounds sidecar memory is
    /// the allocation, not only the entry count: a stream of distinct tokens, re-sent tokens
    /// and expiries must leave both the table and the order queue within a small multiple of the
    /// configured capacity.
    #[test]
    fn allocation_is_bounded_by_capacity() {
        const CAP: usize = 500;
        let mut c = ExpiringCache::new(CAP);
        for i in 0..50_000u32 {
            let now = u64::from(i);
            // Mostly fresh keys, some replayed, some already near expiry.
            let key = if i % 3 == 0 { k(i % 97) } else { k(i) };
            let expires = if i % 5 == 0 { now + 2 } else { now + 1_000_000 };
            c.insert(key, [0u8; 64], expires, now);
            assert!(c.len() <= CAP, "{} entries over capacity {CAP}", c.len());
        }
        assert_eq!(c.len(), CAP, "a full cache keeps capacity entries");
        assert!(
            c.map.capacity() <= 2 * CAP,
            "table allocated for {} entries",
            c.map.capacity()
        );
        assert!(
            c.order.capacity() <= 4 * CAP + 16,
            "order queue allocated for {} entries",
            c.order.capacity()
        );
    }

    #[test]
    fn per_vm_caches_take_the_configured_capacity() {
        let caches = crate::authn::Caches::new(123);
        assert_eq!(caches.jwt.capacity(), 123);
        assert_eq!(caches.introspection.capacity(), 123);
        assert!(caches.jwt.is_empty() && caches.introspection.is_empty());
    }
}
