//! Opaque-token rows kept in memory by the shared store, so that introspecting a token again
//! needs no round trip to the database. A row never changes after insertion; it only goes away
//! (revocation, its client's deletion, expiry). So a cached row stays right for as long as
//! every deletion reaches the cache:
//! - deletions made here evict at once ([`OpaqueTokenCache::evict`]);
//! - deletions anywhere reach every replica through the change feed, which evicts the rows
//!   named (or clears the cache when a statement deleted many);
//! - while the feed is down, deletions elsewhere go unheard: the cache answers nothing and is
//!   cleared, and starts again empty once the feed is back ([`OpaqueTokenCache::resynced`]).
//!
//! Expiry is the caller's to check on every hit, as for a row read from the database.

use super::{StoreResult, StoredOpaqueToken};
use crate::token_cache::{Expiring, TokenCache};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

impl Expiring for StoredOpaqueToken {
    fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

pub struct OpaqueTokenCache {
    rows: TokenCache<StoredOpaqueToken>,
    /// Whether deletions elsewhere reach this cache (the change feed is connected); `capacity`
    /// 0 keeps it false for good.
    current: AtomicBool,
    enabled: bool,
}

impl OpaqueTokenCache {
    /// Answers nothing until [`Self::resynced`]; `capacity` 0 disables it.
    pub fn new(capacity: usize) -> Self {
        Self {
            rows: TokenCache::new(capacity),
            current: AtomicBool::new(false),
            enabled: capacity > 0,
        }
    }

    /// The cached row, if the cache can vouch for it now.
    pub fn get(&self, hash: &[u8; 32]) -> Option<StoredOpaqueToken> {
        if !self.current.load(Ordering::SeqCst) {
            return None;
        }
        self.rows.get(hash).map(|r| (*r).clone())
    }

    /// The cached row, or `read`'s (cached if no deletion or loss of the feed happened while
    /// it was read: the row read may be the one deleted).
    pub fn get_or_read(
        &self,
        hash: &[u8; 32],
        now: i64,
        read: impl FnOnce() -> StoreResult<Option<StoredOpaqueToken>>,
    ) -> StoreResult<Option<StoredOpaqueToken>> {
        if let Some(row) = self.get(hash) {
            return Ok(Some(row));
        }
        let generation = self.rows.generation();
        let fill = self.current.load(Ordering::SeqCst);
        let row = read()?;
        if fill
            && let Some(r) = &row
            && r.expires_at > now
        {
            self.rows
                .insert_if_unchanged(generation, *hash, Arc::new(r.clone()), now);
        }
        Ok(row)
    }

    pub fn evict(&self, hash: &[u8; 32]) {
        self.rows.remove(hash);
    }

    /// Evicts every row of `client_id` (the client was deleted).
    pub fn evict_client(&self, client_id: &str) {
        self.rows.retain(|r| r.client_id != client_id);
    }

    /// Evicts the rows a step deleted (strict rotation of a browser grant's access token).
    pub fn evict_all(&self, hashes: &[[u8; 32]]) {
        for h in hashes {
            self.rows.remove(h);
        }
    }

    /// Evicts the access tokens of the browser grant `grant_id` (its refresh chain was revoked).
    pub fn evict_grant(&self, grant_id: &str) {
        self.rows
            .retain(|r| r.grant_id.as_deref() != Some(grant_id));
    }

    /// Evicts the browser grants' access tokens of `subject` (of one client, or all): their
    /// consent was revoked. `client_credentials` tokens stay.
    pub fn evict_subject(&self, subject: &str, client_id: Option<&str>) {
        self.rows.retain(|r| {
            r.grant_id.is_none()
                || r.subject != subject
                || client_id.is_some_and(|c| c != r.client_id)
        });
    }

    /// Many rows went at once: forget them all.
    pub fn clear(&self) {
        self.rows.clear();
    }

    /// The change feed is down: deletions elsewhere are no longer heard.
    pub fn lost(&self) {
        self.current.store(false, Ordering::SeqCst);
        self.rows.clear();
    }

    /// The change feed is (re)connected: what was cached before may have been deleted
    /// unheard, so start empty.
    pub fn resynced(&self) {
        self.rows.clear();
        if self.enabled {
            self.current.store(true, Ordering::SeqCst);
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: u8, client: &str) -> StoredOpaqueToken {
        StoredOpaqueToken {
            hash: [b; 32],
            client_id: client.into(),
            subject: client.into(),
            scopes: vec!["read".into()],
            audience: vec![],
            issued_at: 100,
            expires_at: 1_000,
            grant_id: None,
            ext: None,
        }
    }

    fn read(r: &StoredOpaqueToken) -> impl FnOnce() -> StoreResult<Option<StoredOpaqueToken>> {
        let r = r.clone();
        move || Ok(Some(r))
    }

    #[test]
    fn answers_only_while_the_feed_is_connected() {
        let cache = OpaqueTokenCache::new(10);
        let t = row(1, "c");
        // Before the feed connects: read through, nothing kept.
        cache.get_or_read(&t.hash, 200, read(&t)).unwrap();
        assert!(cache.get(&t.hash).is_none());
        cache.resynced();
        cache.get_or_read(&t.hash, 200, read(&t)).unwrap();
        assert_eq!(cache.get(&t.hash), Some(t.clone()));
        cache.lost();
        assert!(cache.get(&t.hash).is_none());
        assert!(cache.is_empty());
        cache.get_or_read(&t.hash, 200, read(&t)).unwrap();
        assert!(cache.get(&t.hash).is_none(), "not refilled while lost");
        cache.resynced();
        assert!(
            cache.get(&t.hash).is_none(),
            "starts empty after the feed is back"
        );
    }

    #[test]
    fn evictions_and_a_racing_read() {
        let cache = OpaqueTokenCache::new(10);
        cache.resynced();
        let (a, b, c) = (row(1, "x"), row(2, "x"), row(3, "y"));
        for t in [&a, &b, &c] {
            cache.get_or_read(&t.hash, 200, read(t)).unwrap();
        }
        cache.evict(&a.hash);
        assert!(cache.get(&a.hash).is_none());
        cache.evict_client("x");
        assert!(cache.get(&b.hash).is_none());
        assert!(cache.get(&c.hash).is_some());
        // A read that saw the row before its deletion was heard does not cache it.
        let got = cache
            .get_or_read(&a.hash, 200, || {
                cache.evict(&a.hash);
                Ok(Some(a.clone()))
            })
            .unwrap();
        assert_eq!(got, Some(a.clone()));
        assert!(cache.get(&a.hash).is_none());
        // Expired rows and unknown tokens are not kept.
        let old = row(4, "y");
        cache.get_or_read(&old.hash, 1_000, read(&old)).unwrap();
        assert!(cache.get(&old.hash).is_none());
        assert_eq!(cache.get_or_read(&[9; 32], 200, || Ok(None)).unwrap(), None);
    }

    #[test]
    fn capacity_zero_disables_it() {
        let cache = OpaqueTokenCache::new(0);
        cache.resynced();
        let t = row(1, "c");
        cache.get_or_read(&t.hash, 200, read(&t)).unwrap();
        assert!(cache.get(&t.hash).is_none());
        assert!(cache.is_empty());
    }
}
