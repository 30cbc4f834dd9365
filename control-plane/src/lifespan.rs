//! Token lifespans and their bound. Every time a lifespan is added to must stay a sane Unix
//! time: an unbounded per-client lifespan (`"9223372036854775807"`) once wrapped `exp` negative
//! and, at the next rotation, the old key's retirement time, so that the key was purged and every
//! live token died. Lifespans are therefore bounded at registration (and at start for the global
//! one), and the arithmetic saturates anyway.

use std::time::Duration;

/// The default `--max-access-token-ttl`.
pub const DEFAULT_MAX: Duration = Duration::from_secs(24 * 3600);

/// The largest `--max-access-token-ttl` accepted: a retired signing key stays published (and
/// trusted by introspection) for the longest lifespan, so this also bounds how long a rotated
/// or compromised key lingers.
pub const CEILING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Whole seconds of `d` as a Unix-time offset (saturating).
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// `now + ttl`, clamped to `[now, now + CEILING]` whatever `ttl` is.
pub fn expiry(now: i64, ttl: i64) -> i64 {
    now.saturating_add(ttl.clamp(0, secs(CEILING)))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundError {
    #[error("the maximum token lifespan {max:?} exceeds the ceiling of {ceiling:?}", ceiling = CEILING)]
    MaxAboveCeiling { max: Duration },
    #[error(
        "the access token lifespan {ttl:?} exceeds the maximum {max:?} (--max-access-token-ttl)"
    )]
    TtlAboveMax { ttl: Duration, max: Duration },
}

/// Checks the global settings: `max` within [`CEILING`], `ttl` within `max`.
pub fn check_config(ttl: Duration, max: Duration) -> Result<(), BoundError> {
    if max > CEILING {
        return Err(BoundError::MaxAboveCeiling { max });
    }
    if ttl > max {
        return Err(BoundError::TtlAboveMax { ttl, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_saturates_and_is_bounded() {
        assert_eq!(expiry(100, 60), 160);
        assert_eq!(expiry(100, -5), 100);
        assert_eq!(expiry(i64::MAX - 1, 60), i64::MAX);
        assert_eq!(expiry(0, i64::MAX), secs(CEILING));
    }

    #[test]
    fn config_bounds() {
        let h = Duration::from_secs(3600);
        assert!(check_config(h, DEFAULT_MAX).is_ok());
        assert!(check_config(DEFAULT_MAX * 2, DEFAULT_MAX).is_err());
        assert!(check_config(h, CEILING + h).is_err());
    }
}
