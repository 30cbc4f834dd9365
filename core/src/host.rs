//! The one trait through which the policy core asks its host for anything it cannot compute
//! itself: time, keys fetched by the host, native crypto, caches that outlive a request.
//! The proxy-wasm filter implements it over Envoy; unit tests implement it in memory.

use crate::jwks::{Key, KeySet};
use std::sync::Arc;

/// What the host knows about one JWKS URL.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    /// Keys are available (possibly stale while a refresh runs or the endpoint is down).
    Ready(Arc<KeySet>),
    /// No keys yet; a fetch is in flight. The request waits (bounded by `jwks_max_wait`).
    Pending,
    /// No keys and the last fetch failed: nothing to verify with.
    Unavailable,
}

/// What the host can say about the current time without reading a clock: it lies within
/// `earliest..=latest` (seconds since the Unix epoch). Decisions that come out the same at both
/// ends need no clock read; the others ask [`Host::now`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub earliest: u64,
    pub latest: u64,
}

impl TimeBounds {
    /// Bounds that are one exact instant.
    pub fn exactly(now: u64) -> Self {
        Self {
            earliest: now,
            latest: now,
        }
    }
}

pub trait Host {
    /// Current time, seconds since the Unix epoch, read exactly (may cost a host call).
    fn now(&mut self) -> u64;

    /// The current time within bounds, without a clock read. Hosts that cannot bound their
    /// clock's staleness return [`TimeBounds::exactly`]`(self.now())`.
    fn time_bounds(&mut self) -> TimeBounds {
        TimeBounds::exactly(self.now())
    }

    /// Keys of a JWKS URL. Never blocks; the host fetches in the background.
    fn keys(&mut self, jwks_url: &str) -> KeyLookup;

    /// A value that changes whenever the keys of any of `jwks_urls` change (rotation, first
    /// arrival): a cached verification is used only while it is the same. The default combines
    /// the key sets' fingerprints; a host that counts its key changes can answer cheaper (it runs
    /// on every cache hit).
    fn keys_version(&mut self, jwks_urls: &[String]) -> u64 {
        crate::jwks::combined_fingerprint(jwks_urls.iter().filter_map(|url| match self.keys(url) {
            KeyLookup::Ready(s) => Some(s.fingerprint()),
            _ => None,
        }))
    }

    /// A small value every worker of this host sees (proxy-wasm shared data), by name: caches
    /// that must hold across workers. A host without such a store keeps nothing.
    fn shared_get(&mut self, _name: &str) -> Option<Vec<u8>> {
        None
    }

    /// Stores `value` under `name` for every worker (last writer wins).
    fn shared_set(&mut self, _name: &str, _value: &[u8]) {}

    /// A token carried a `kid` that none of `jwks_urls` has: the host may re-fetch them (rate
    /// limited on its side, so a flood of invented kids costs at most one fetch per interval).
    /// True when a re-fetch is scheduled or under way, so the request may wait for it.
    fn unknown_kid(&mut self, jwks_urls: &[String]) -> bool;

    /// Verifies a signature with the host's native crypto, when it has it. `None` means the host
    /// cannot (unsupported algorithm or no such facility) and the core falls back to pure Rust.
    fn verify_native(
        &mut self,
        alg: jsonwebtoken::Algorithm,
        key: &Key,
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool>;
}
