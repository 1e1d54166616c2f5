//! When to poll: the refresh interval, faster while an instance is in transition, slowly
//! once it is gone, and the error backoff; all jittered so that objects do not fire together.

use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;

use crate::vocabulary::state;

/// Instances in a transitional state are polled at least this often.
pub const TRANSITION_POLL: Duration = Duration::from_secs(10);
/// An instance PPIO no longer knows is polled at most this often.
pub const GONE_POLL: Duration = Duration::from_secs(300);
/// A first "not found" is confirmed by a second poll this long after, before it is reported
/// (a proxy's hiccup or a brief 404 right after creation is not "gone").
pub const CONFIRM_GONE: Duration = Duration::from_secs(5);
/// The refresh annotation makes a PpioInstance poll at most this often.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(10);
/// The longest pause a 429's `Retry-After` imposes on every PpioInstance of its key.
pub const MAX_KEY_PAUSE: Duration = Duration::from_secs(300);
/// The first error backoff.
pub const BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest error backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `d` scaled by a random factor in [0.9, 1.1].
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The error backoff after `failures` consecutive failures (1 = the first): 5s doubling up
/// to 5 min, jittered.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    jitter(BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_MAX))
}

/// The delay until the next poll after a successful observation in `state`.
pub fn poll_interval(refresh: Duration, observed: &str) -> Duration {
    if state::STABLE.contains(&observed) {
        refresh
    } else {
        refresh.min(TRANSITION_POLL)
    }
}

/// A small random delay in [0, d], so objects released together do not fire together.
pub(crate) fn jitter_up(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.0..=1.0))
}

pub(crate) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_minutes() {
        let secs = |n| backoff(n).as_secs_f64();
        assert!((4.5..=5.5).contains(&secs(1)), "{}", secs(1));
        assert!((9.0..=11.0).contains(&secs(2)));
        assert!((18.0..=22.0).contains(&secs(3)));
        assert!((270.0..=330.0).contains(&secs(10)));
        assert!((270.0..=330.0).contains(&secs(200)));
    }

    #[test]
    fn transitional_states_poll_fast() {
        let m = Duration::from_secs(300);
        assert_eq!(poll_interval(m, "running"), m);
        assert_eq!(poll_interval(m, "exited"), m);
        assert_eq!(poll_interval(m, "removed"), m);
        assert_eq!(poll_interval(m, "starting"), TRANSITION_POLL);
        assert_eq!(poll_interval(m, "somethingNew"), TRANSITION_POLL);
        assert_eq!(
            poll_interval(Duration::from_secs(10), "pulling"),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(100)).as_secs_f64();
            assert!((90.0..=110.0).contains(&j));
        }
    }
}
