//! Client secrets: PBKDF2-SHA256 hashes in PHC format (never the plaintext), and a bounded cache
//! of successful verifications so the token endpoint does not pay the slow hash per request.
//!
//! The cache key is HMAC-SHA256 under a per-process random key of `client_id || 0x00 || secret`:
//! a memory dump reveals no secret, and an entry only counts while the client's version (bumped
//! on every change) still matches.

use crate::crypto::{b64url, random_bytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ring::{hmac, pbkdf2};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

/// Hydra's default cost; the PHC string records it so it can be raised later.
pub const ITERATIONS: u32 = 25_000;
const HASH_LEN: usize = 32;
pub const MIN_SECRET_LEN: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the operating system random generator failed")]
    Random,
}

/// `$pbkdf2-sha256$i=25000,l=32$<salt>$<hash>` (standard base64 without padding).
pub fn hash_secret(secret: &str) -> Result<String, SecretError> {
    let salt = random_bytes::<16>().map_err(|_| SecretError::Random)?;
    let mut out = [0u8; HASH_LEN];
    let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        secret.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "$pbkdf2-sha256$i={ITERATIONS},l={HASH_LEN}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Constant-time verification against a PHC string; false for malformed hashes.
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    let parts: Vec<&str> = phc.split('$').collect();
    let [_, "pbkdf2-sha256", params, salt, hash] = parts.as_slice() else {
        return false;
    };
    let mut iterations = None;
    for p in params.split(',') {
        if let Some(v) = p.strip_prefix("i=") {
            iterations = v.parse::<u32>().ok().and_then(NonZeroU32::new);
        }
    }
    let (Some(iterations), Ok(salt), Ok(hash)) = (
        iterations,
        STANDARD_NO_PAD.decode(salt),
        STANDARD_NO_PAD.decode(hash),
    ) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        secret.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// A random secret like Hydra generates (32 random bytes, base64url).
pub fn generate_secret() -> Result<String, SecretError> {
    random_bytes::<32>()
        .map(|b| b64url(&b))
        .map_err(|_| SecretError::Random)
}

pub struct VerificationCache {
    key: hmac::Key,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], (String, u64)>>,
}

impl VerificationCache {
    pub fn new(capacity: usize) -> Result<Self, SecretError> {
        let k = random_bytes::<32>().map_err(|_| SecretError::Random)?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k),
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn cache_key(&self, client_id: &str, secret: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(client_id.as_bytes());
        ctx.update(&[0]);
        ctx.update(secret.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// True when this (client, secret) pair was verified against the client's current `version`.
    pub fn check(&self, client_id: &str, secret: &str, version: u64) -> bool {
        let key = self.cache_key(client_id, secret);
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        // The map lookup already compared the keyed hash; compare the identity in constant time
        // too so a hit cannot be timed against another client's entry.
        entries.get(&key).is_some_and(|(id, v)| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                id.as_bytes(),
                client_id.as_bytes(),
            )) && *v == version
        })
    }

    pub fn insert(&self, client_id: &str, secret: &str, version: u64) {
        let key = self.cache_key(client_id, secret);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity && !entries.contains_key(&key) {
                // Evict arbitrary entries (a tenth): cheap, and a miss only costs one slow hash.
                let drop: Vec<[u8; 32]> = entries
                    .keys()
                    .take((self.capacity / 10).max(1))
                    .copied()
                    .collect();
                for k in drop {
                    entries.remove(&k);
                }
            }
            entries.insert(key, (client_id.to_string(), version));
        }
    }

    /// Drops every entry of `client_id` (its secret or registration changed).
    pub fn invalidate(&self, client_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (id, _)| id != client_id);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_right_secret() {
        let h = hash_secret("s3cr3t-value").unwrap();
        assert!(h.starts_with("$pbkdf2-sha256$i=25000,l=32$"));
        assert!(!h.contains("s3cr3t-value"));
        assert!(verify_secret("s3cr3t-value", &h));
        assert!(!verify_secret("s3cr3t-valuf", &h));
        assert!(!verify_secret("s3cr3t-value", "$bcrypt$junk"));
        assert!(!verify_secret("x", "not-a-phc"));
        // Salted: two hashes of one secret differ.
        assert_ne!(h, hash_secret("s3cr3t-value").unwrap());
    }

    #[test]
    fn cache_hits_only_for_same_secret_and_version() {
        let c = VerificationCache::new(100).unwrap();
        c.insert("client", "secret", 1);
        assert!(c.check("client", "secret", 1));
        assert!(!c.check("client", "secret", 2));
        assert!(!c.check("client", "other", 1));
        assert!(!c.check("other", "secret", 1));
    }

    #[test]
    fn cache_invalidation_drops_client_entries() {
        let c = VerificationCache::new(100).unwrap();
        c.insert("a", "s1", 1);
        c.insert("a", "s2", 1);
        c.insert("b", "s1", 1);
        c.invalidate("a");
        assert!(!c.check("a", "s1", 1));
        assert!(!c.check("a", "s2", 1));
        assert!(c.check("b", "s1", 1));
    }

    #[test]
    fn cache_is_bounded() {
        let c = VerificationCache::new(20).unwrap();
        for i in 0..100 {
            c.insert(&format!("c{i}"), "s", 1);
        }
        assert!(c.len() <= 20);
        assert!(c.check("c99", "s", 1));
    }
}
