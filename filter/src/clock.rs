//! The VM's clock. Reading Envoy's clock is a host call, a measurable share of a cache-hit
//! request, while the core needs the exact second only when a token is that close to `exp`,
//! `nbf` or `iat`. So requests get bounds from the last reading (refreshed on every root tick,
//! and after every [`READS_PER_REFRESH`] requests however busy the worker is) and the core reads
//! the clock exactly when the bounds do not settle a decision.
//!
//! The bounds assume the last reading is at most [`MAX_STALENESS_MS`] old. Readings are at most a
//! tick (100 ms) or 64 requests apart, so only a worker stalled for more than a second could
//! break that, and then a token could pass for at most the stall's excess past its `exp`
//! (Envoy's own `jwt_authn` tolerates 60 s of skew by default).

use crate::envoy_host::now_ms;
use portcullis_core::host::TimeBounds;

/// Requests answered from one reading before the clock is read again.
const READS_PER_REFRESH: u32 = 64;
/// How much older than the true time the last reading may be.
const MAX_STALENESS_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct Clock {
    last_ms: u64,
    uses: u32,
}

impl Clock {
    /// Reads the host's clock (milliseconds since the Unix epoch) and remembers the reading.
    pub fn now_ms(&mut self) -> u64 {
        self.last_ms = now_ms();
        self.uses = 0;
        self.last_ms
    }

    /// The current time within bounds, from the last reading when it is fresh enough.
    pub fn bounds(&mut self) -> TimeBounds {
        if self.last_ms == 0 || self.uses >= READS_PER_REFRESH {
            self.now_ms();
        }
        self.uses += 1;
        TimeBounds {
            earliest: self.last_ms / 1000,
            latest: self.last_ms.saturating_add(MAX_STALENESS_MS) / 1000,
        }
    }
}
