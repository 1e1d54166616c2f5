//! Each API key's request budget: a steady rate with a burst allowance, shared by every
//! PpioInstance that uses the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock;

/// A request rate per API key: a steady rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Requests per second per key; `None`: unlimited.
    pub per_second: Option<f64>,
    /// Requests that may go at once before the rate applies.
    pub burst: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_second: Some(DEFAULT_REQUESTS_PER_SECOND),
            burst: DEFAULT_BURST,
        }
    }
}

/// The default request rate per API key.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 10.0;
/// The default burst per API key.
pub const DEFAULT_BURST: u32 = 20;

/// Per-key leaky buckets: the virtual time of each key's next request slot.
#[derive(Debug, Default)]
pub struct Buckets {
    next_slot: Mutex<HashMap<u64, Instant>>,
}

impl Buckets {
    /// Reserves a request slot for `key` at `now`; returns how long to wait for it. Every
    /// reserved slot is used: the poll comes back at its slot (see `poll`), so the key's
    /// horizon is its backlog divided by its rate, never more.
    pub fn reserve(&self, budget: Budget, key: u64, now: Instant) -> Duration {
        let Some(rate) = budget.per_second.filter(|r| *r > 0.0) else {
            return Duration::ZERO;
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let allowance = interval.saturating_mul(budget.burst.saturating_sub(1));
        let mut slots = lock(&self.next_slot);
        let floor = now.checked_sub(allowance).unwrap_or(now);
        let next = slots.entry(key).or_insert(floor);
        let slot = (*next).max(floor);
        *next = slot + interval;
        slot.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_the_rate_per_key() {
        let buckets = Buckets::default();
        let budget = Budget {
            per_second: Some(2.0),
            burst: 3,
        };
        let t0 = Instant::now();
        let waits: Vec<f64> = (0..6)
            .map(|_| buckets.reserve(budget, 1, t0).as_secs_f64())
            .collect();
        assert_eq!(waits, [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]);
        // Another key has a budget of its own.
        assert_eq!(buckets.reserve(budget, 2, t0), Duration::ZERO);
        // After a quiet while the burst is available again, but not more.
        let later = t0 + Duration::from_secs(60);
        let waits: Vec<f64> = (0..4)
            .map(|_| buckets.reserve(budget, 1, later).as_secs_f64())
            .collect();
        assert_eq!(waits, [0.0, 0.0, 0.0, 0.5]);
        let unlimited = Budget {
            per_second: None,
            burst: 1,
        };
        assert!((0..100).all(|_| buckets.reserve(unlimited, 3, t0) == Duration::ZERO));
    }
}
