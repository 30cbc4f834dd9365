//! The flow and refresh-token rows the request path reads right after writing them, kept in
//! memory so that those reads skip SQLite. Each step of a browser flow reads the row the step
//! before wrote, and each refresh reads the token the refresh before issued; a reader
//! connection re-reads every page of such a read from the WAL, because each commit empties
//! its page cache, and that was about a fifth of the request path's work.
//!
//! The cache follows the committed database, never anything else: rows enter only from
//! writes, through the group commit's [`AfterCommit`] hooks, which run on the committer
//! thread in the order the writes ran, after their batch committed. A read that misses asks
//! the database and caches nothing, so a read racing a write cannot put an old row back.
//! Every write that changes a cached table either says what it did (a flow's step, a
//! rotation) or empties the table's cache (revocations, the purge). One process owns a
//! SQLite store, so no other writer exists. Even so, the decisions stay in the database:
//! every step and every rotation is a compare-and-set there, so a cached row can at worst
//! make a request fail, never let one through twice.

use super::group_commit::AfterCommit;
use crate::crypto::sha256;
use crate::store::{StepRows, StoredFlow, StoredRefreshToken};
use crate::token_cache::{Expiring, TokenCache};
use std::sync::Arc;

/// Rows kept per table. Flows are about 1.5 KB and refresh tokens about 1 KB, so a few MB; a
/// full table first drops expired rows, then everything (rows only ever come back from the
/// database).
const FLOWS: usize = 4096;
const REFRESH_TOKENS: usize = 8192;

impl Expiring for StoredFlow {
    fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

impl Expiring for StoredRefreshToken {
    fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

pub struct RowCache {
    flows: TokenCache<StoredFlow>,
    refresh_tokens: TokenCache<StoredRefreshToken>,
}

impl Default for RowCache {
    fn default() -> Self {
        Self::with_capacity(FLOWS, REFRESH_TOKENS)
    }
}

impl RowCache {
    pub fn with_capacity(flows: usize, refresh_tokens: usize) -> Self {
        Self {
            flows: TokenCache::new(flows),
            refresh_tokens: TokenCache::new(refresh_tokens),
        }
    }

    /// The cached flow `id`, unless it expired (the purge may have deleted it).
    pub fn flow(&self, id: &str, now: i64) -> Option<StoredFlow> {
        let f = self.flows.get(&sha256(id.as_bytes()))?;
        (f.expires_at > now).then(|| StoredFlow::clone(&f))
    }

    /// The cached refresh token `hash`, unless it expired.
    pub fn refresh_token(&self, hash: &[u8; 32], now: i64) -> Option<StoredRefreshToken> {
        let t = self.refresh_tokens.get(hash)?;
        (t.expires_at > now).then(|| StoredRefreshToken::clone(&t))
    }

    fn put_flow(&self, f: StoredFlow) {
        let now = crate::clock::now();
        self.flows.insert(sha256(f.id.as_bytes()), Arc::new(f), now);
    }

    fn put_refresh_tokens(&self, tokens: Vec<StoredRefreshToken>) {
        let now = crate::clock::now();
        for t in tokens {
            self.refresh_tokens.insert(t.hash, Arc::new(t), now);
        }
    }

    /// After a new flow's insert.
    pub fn inserted_flow(self: &Arc<Self>, f: StoredFlow) -> AfterCommit<()> {
        let cache = Arc::clone(self);
        Box::new(move |()| cache.put_flow(f))
    }

    /// After a flow's step (its compare-and-set and the rows it wrote, a code exchange's
    /// refresh token among them); a lost compare-and-set wrote nothing.
    pub fn advanced_flow(self: &Arc<Self>, f: StoredFlow, rows: &StepRows) -> AfterCommit<bool> {
        let cache = Arc::clone(self);
        let tokens = rows.refresh_tokens.clone();
        Box::new(move |won| {
            if *won {
                cache.put_flow(f);
                cache.put_refresh_tokens(tokens);
            }
        })
    }

    /// After a rotation: the old token is no longer active, its successor (and any token in
    /// the rotation's rows) is.
    pub fn rotated(
        self: &Arc<Self>,
        old: [u8; 32],
        new: StoredRefreshToken,
        rows: &StepRows,
    ) -> AfterCommit<bool> {
        let cache = Arc::clone(self);
        let mut tokens = rows.refresh_tokens.clone();
        tokens.push(new);
        Box::new(move |won| {
            if *won {
                cache.refresh_tokens.remove(&old);
                cache.put_refresh_tokens(tokens);
            }
        })
    }

    /// After a write that changed refresh tokens it does not name one by one (a revoked
    /// chain or consent).
    pub fn forget_refresh_tokens<T>(self: &Arc<Self>) -> AfterCommit<T> {
        let cache = Arc::clone(self);
        Box::new(move |_| cache.refresh_tokens.clear())
    }

    /// After the purge of expired rows.
    pub fn forget_all<T>(self: &Arc<Self>) -> AfterCommit<T> {
        let cache = Arc::clone(self);
        Box::new(move |_| {
            cache.flows.clear();
            cache.refresh_tokens.clear();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: &str, stage: i64, exp: i64) -> StoredFlow {
        StoredFlow {
            id: id.into(),
            stage,
            json: "{}".into(),
            expires_at: exp,
        }
    }

    fn token(b: u8, exp: i64) -> StoredRefreshToken {
        StoredRefreshToken {
            hash: [b; 32],
            chain: "c".into(),
            client_id: "app".into(),
            subject: "s".into(),
            active: true,
            used_at: None,
            json: "{}".into(),
            expires_at: exp,
        }
    }

    #[test]
    fn hooks_follow_what_committed() {
        let c = Arc::new(RowCache::default());
        let far = i64::MAX;
        c.inserted_flow(flow("f", 0, far))(&());
        assert_eq!(c.flow("f", 0).unwrap().stage, 0);
        // A lost compare-and-set changes nothing.
        c.advanced_flow(flow("f", 1, far), &StepRows::default())(&false);
        assert_eq!(c.flow("f", 0).unwrap().stage, 0);
        let exchange = StepRows {
            refresh_tokens: vec![token(1, far)],
            ..StepRows::default()
        };
        c.advanced_flow(flow("f", 5, far), &exchange)(&true);
        assert_eq!(c.flow("f", 0).unwrap().stage, 5);
        assert!(c.refresh_token(&[1; 32], 0).unwrap().active);

        c.rotated([1; 32], token(2, far), &StepRows::default())(&false);
        assert!(
            c.refresh_token(&[1; 32], 0).is_some(),
            "the loser changed nothing"
        );
        c.rotated([1; 32], token(2, far), &StepRows::default())(&true);
        assert!(
            c.refresh_token(&[1; 32], 0).is_none(),
            "rotated out: ask the database"
        );
        assert!(c.refresh_token(&[2; 32], 0).is_some());

        c.forget_refresh_tokens::<Vec<StoredRefreshToken>>()(&Vec::new());
        assert!(c.refresh_token(&[2; 32], 0).is_none());
        assert!(c.flow("f", 0).is_some());
        c.forget_all::<usize>()(&0);
        assert!(c.flow("f", 0).is_none());
    }

    #[test]
    fn expired_rows_are_misses_and_capacity_bounds_the_cache() {
        let c = Arc::new(RowCache::with_capacity(2, 2));
        c.inserted_flow(flow("old", 0, 10))(&());
        assert!(c.flow("old", 9).is_some());
        assert!(
            c.flow("old", 10).is_none(),
            "expired: the purge may have taken it"
        );
        for i in 0..10 {
            c.inserted_flow(flow(&format!("f{i}"), 0, i64::MAX))(&());
            c.put_refresh_tokens(vec![token(i, i64::MAX)]);
        }
        assert!(c.flows.len() <= 2 && c.refresh_tokens.len() <= 2);
    }
}
