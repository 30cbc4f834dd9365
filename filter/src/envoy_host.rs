//! The core's [`Host`] over Envoy: clock, the VM's key store, and Envoy's native
//! `verify_signature` foreign function (BoringSSL), with a pure-Rust fallback decided by the core.

use crate::clock::Clock;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use portcullis_core::host::{Host, KeyLookup, TimeBounds};
use portcullis_core::jwks::Key;
use portcullis_core::signature;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Whether this Envoy offers `verify_signature`; learnt on first use.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum NativeVerify {
    #[default]
    Unknown,
    Available,
    Missing,
}

pub struct EnvoyHost<'a> {
    pub clock: &'a mut Clock,
    pub keys: &'a mut KeyStore,
    pub native: &'a mut NativeVerify,
    pub metrics: &'a mut Metrics,
}

pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Host for EnvoyHost<'_> {
    fn now(&mut self) -> u64 {
        self.clock.now_ms() / 1000
    }

    fn time_bounds(&mut self) -> TimeBounds {
        self.clock.bounds()
    }

    fn keys(&mut self, jwks_url: &str) -> KeyLookup {
        self.keys.lookup(jwks_url)
    }

    /// One counter for all URLs: a change anywhere re-verifies every cached token once, and a
    /// cache hit costs no per-URL lookup.
    fn keys_version(&mut self, _jwks_urls: &[String]) -> u64 {
        self.keys.version()
    }

    fn shared_get(&mut self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_shared_data(name).ok().and_then(|(v, _)| v)
    }

    fn shared_set(&mut self, name: &str, value: &[u8]) {
        let _ = hostcalls::set_shared_data(name, Some(value), None);
    }

    fn unknown_kid(&mut self, jwks_urls: &[String]) -> bool {
        let now = self.clock.now_ms();
        self.keys.unknown_kid(jwks_urls, now)
    }

    fn verify_native(
        &mut self,
        alg: portcullis_core::jwks::Algorithm,
        key: &Key,
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        if *self.native == NativeVerify::Missing {
            return None;
        }
        let hash = signature::native_hash(alg)?;
        let args = signature::encode_verify_args(hash, key.spki_der(), signature, message);
        match hostcalls::call_foreign_function("verify_signature", Some(&args)) {
            Ok(Some(result)) => {
                *self.native = NativeVerify::Available;
                let verdict = signature::decode_verify_result(&result).map(|(ok, _)| ok);
                if verdict.is_some() {
                    self.metrics.count("jwt_verify_native", 1);
                }
                verdict
            }
            Ok(None) => None,
            Err(Status::NotFound) => {
                *self.native = NativeVerify::Missing;
                None
            }
            Err(_) => None,
        }
    }
}
