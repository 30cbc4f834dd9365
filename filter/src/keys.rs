//! JWKS kept fresh for the whole Envoy: fetched in the background on the root context's tick,
//! published in proxy-wasm shared data so every worker VM parses one copy instead of fetching
//! its own. A valid 200 replaces the keys, even with an empty set; when refreshes fail the keys
//! already known keep serving, but only for `jwks_max_stale` past their TTL
//! ([`jwks::still_trusted`]): then they are dropped and their tokens refused.

use portcullis_core::callout::Endpoint;
use portcullis_core::config::JwksSource;
use portcullis_core::host::KeyLookup;
use portcullis_core::jwks::{self, KeySet};
use proxy_wasm::hostcalls;
use std::collections::HashMap;
use std::sync::Arc;

/// A token with an unknown `kid` triggers at most one re-fetch per URL in this interval, so a
/// flood of made-up kids cannot turn into a flood of JWKS requests.
const UNKNOWN_KID_REFETCH_MS: u64 = 5_000;
/// First retry after a failed fetch; doubles up to the URL's TTL.
const RETRY_MIN_MS: u64 = 500;
const FETCH_TIMEOUT_MS: u64 = 5_000;
const SHARED_PREFIX: &str = "portcullis.jwks.";

#[derive(Debug)]
struct Entry {
    endpoint: Endpoint,
    ttl_ms: u64,
    max_stale_ms: u64,
    keys: Option<Arc<KeySet>>,
    /// CAS version of the shared-data copy last parsed.
    shared_version: Option<u32>,
    fetched_at_ms: u64,
    in_flight: bool,
    /// Consecutive failed fetches by this VM.
    failures: u32,
    next_attempt_ms: u64,
    refetch_requested: bool,
    last_forced_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub struct KeyStore {
    entries: HashMap<String, Entry>,
    /// Bumped whenever any URL's key set changes: cached verifications carry the value they
    /// were made under, and checking it costs no lookup per URL on the request path.
    version: u64,
}

/// What a fetch produced, for metrics and logs.
pub enum FetchOutcome {
    Updated,
    Failed(String),
    Unknown,
}

impl KeyStore {
    /// Changes whenever any key set changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Registers the URLs a configuration needs (new configs may add URLs; old ones stay until
    /// the VM goes, which is harmless: an unused URL is refreshed but never consulted).
    pub fn register(&mut self, sources: &[JwksSource]) {
        for s in sources {
            let e = self
                .entries
                .entry(s.endpoint.url.clone())
                .or_insert_with(|| Entry {
                    endpoint: s.endpoint.clone(),
                    ttl_ms: s.ttl_ms,
                    max_stale_ms: s.max_stale_ms,
                    keys: None,
                    shared_version: None,
                    fetched_at_ms: 0,
                    in_flight: false,
                    failures: 0,
                    next_attempt_ms: 0,
                    refetch_requested: false,
                    last_forced_ms: None,
                });
            e.endpoint = s.endpoint.clone();
            e.ttl_ms = s.ttl_ms.max(1_000);
            e.max_stale_ms = s.max_stale_ms;
        }
    }

    /// Drops key sets whose last successful fetch is older than their TTL plus `jwks_max_stale`
    /// (refreshes have failed since). Returns the URLs dropped; the version changes, so tokens
    /// verified with those keys and cached stop counting too.
    pub fn expire_stale(&mut self, now_ms: u64) -> Vec<String> {
        let mut dropped = Vec::new();
        for (url, e) in &mut self.entries {
            if e.keys.is_some()
                && !jwks::still_trusted(e.fetched_at_ms, e.ttl_ms, e.max_stale_ms, now_ms)
            {
                e.keys = None;
                dropped.push(url.clone());
            }
        }
        if !dropped.is_empty() {
            self.version = self.version.wrapping_add(1);
        }
        dropped
    }

    pub fn lookup(&self, url: &str) -> KeyLookup {
        match self.entries.get(url) {
            Some(Entry { keys: Some(k), .. }) => KeyLookup::Ready(k.clone()),
            // Nothing fetched and nothing failed yet: the first fetch is coming.
            Some(e) if e.failures == 0 => KeyLookup::Pending,
            _ => KeyLookup::Unavailable,
        }
    }

    /// A token named a kid none of `urls` has. Returns true when a re-fetch was scheduled, so
    /// the request may wait for it.
    pub fn unknown_kid(&mut self, urls: &[String], now_ms: u64) -> bool {
        let mut scheduled = false;
        for url in urls {
            if let Some(e) = self.entries.get_mut(url) {
                let allowed = e
                    .last_forced_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= UNKNOWN_KID_REFETCH_MS);
                if allowed || e.refetch_requested || e.in_flight {
                    if allowed {
                        e.last_forced_ms = Some(now_ms);
                        e.refetch_requested = true;
                    }
                    scheduled = true;
                }
            }
        }
        scheduled
    }

    /// Picks up keys another worker fetched (unless too stale to trust). Returns true when any
    /// key set changed.
    pub fn sync_shared(&mut self, now_ms: u64) -> bool {
        let mut changed = false;
        for (url, e) in &mut self.entries {
            let key = format!("{SHARED_PREFIX}{url}");
            let Ok((Some(bytes), version)) = hostcalls::get_shared_data(&key) else {
                continue;
            };
            if version.is_some() && version == e.shared_version {
                continue;
            }
            e.shared_version = version;
            if bytes.len() < 8 {
                continue;
            }
            let (stamp, body) = bytes.split_at(8);
            let fetched_at = u64::from_be_bytes(stamp.try_into().unwrap_or([0; 8]));
            if let Ok(set) = KeySet::parse(body)
                && (fetched_at >= e.fetched_at_ms || e.keys.is_none())
                && jwks::still_trusted(fetched_at, e.ttl_ms, e.max_stale_ms, now_ms)
            {
                let differs = e
                    .keys
                    .as_ref()
                    .is_none_or(|k| k.fingerprint() != set.fingerprint());
                if differs {
                    e.keys = Some(Arc::new(set));
                    changed = true;
                    self.version = self.version.wrapping_add(1);
                }
                e.fetched_at_ms = fetched_at;
                e.failures = 0;
            }
        }
        changed
    }

    /// URLs whose keys are missing, expired or asked for; marks them in flight.
    pub fn due(&mut self, now_ms: u64) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if e.in_flight || now_ms < e.next_attempt_ms {
                continue;
            }
            let stale = now_ms.saturating_sub(e.fetched_at_ms) >= e.ttl_ms;
            if e.keys.is_none() || stale || e.refetch_requested {
                e.in_flight = true;
                e.refetch_requested = false;
                out.push(e.endpoint.clone());
            }
        }
        out
    }

    /// The dispatch of a fetch failed before it started.
    pub fn dispatch_failed(&mut self, url: &str, now_ms: u64) {
        if let Some(e) = self.entries.get_mut(url) {
            e.in_flight = false;
            Self::backoff(e, now_ms);
        }
    }

    fn backoff(e: &mut Entry, now_ms: u64) {
        e.failures = e.failures.saturating_add(1);
        let delay = RETRY_MIN_MS
            .saturating_mul(1u64 << e.failures.min(16))
            .min(e.ttl_ms);
        e.next_attempt_ms = now_ms.saturating_add(delay);
    }

    /// A fetch answered (`None`: it failed in transport).
    pub fn fetched(
        &mut self,
        url: &str,
        response: Option<(u16, Vec<u8>)>,
        now_ms: u64,
    ) -> FetchOutcome {
        let Some(e) = self.entries.get_mut(url) else {
            return FetchOutcome::Unknown;
        };
        e.in_flight = false;
        let parsed = jwks::from_fetch(response.as_ref().map(|(s, b)| (*s, b.as_slice())));
        match parsed {
            Ok(set) => {
                let body = response.map(|(_, b)| b).unwrap_or_default();
                let mut stored = Vec::with_capacity(body.len() + 8);
                stored.extend_from_slice(&now_ms.to_be_bytes());
                stored.extend_from_slice(&body);
                let key = format!("{SHARED_PREFIX}{url}");
                // Last writer wins: every copy is a complete, valid key set.
                if hostcalls::set_shared_data(&key, Some(&stored), None).is_ok()
                    && let Ok((_, version)) = hostcalls::get_shared_data(&key)
                {
                    e.shared_version = version;
                }
                if e.keys
                    .as_ref()
                    .is_none_or(|k| k.fingerprint() != set.fingerprint())
                {
                    self.version = self.version.wrapping_add(1);
                }
                e.keys = Some(Arc::new(set));
                e.fetched_at_ms = now_ms;
                e.failures = 0;
                e.next_attempt_ms = 0;
                FetchOutcome::Updated
            }
            Err(why) => {
                Self::backoff(e, now_ms);
                FetchOutcome::Failed(why.to_string())
            }
        }
    }

    pub const fn fetch_timeout_ms() -> u64 {
        FETCH_TIMEOUT_MS
    }
}
