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

thread_local! {
    /// This thread's repeatable source of randomness, once [`seed_jitter`] set one.
    static SEEDED: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes the scheduler's randomness on this thread (jitter, spreading, the first poll's
/// delay) a repeatable sequence from `seed`. For tests on tokio's paused clock, whose tasks
/// all run on the test's thread: the same seed gives the same run. Never called by `run`.
pub fn seed_jitter(seed: u64) {
    use rand::SeedableRng;
    SEEDED.with(|s| *s.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// A random number in `range`: from this thread's seeded source when [`seed_jitter`] set
/// one, else from the operating system's.
pub(crate) fn random_in<R>(range: R) -> f64
where
    R: rand::distr::uniform::SampleRange<f64>,
{
    SEEDED.with(|s| match s.borrow_mut().as_mut() {
        Some(rng) => rng.random_range(range),
        None => rand::rng().random_range(range),
    })
}

/// `d` scaled by a random factor in [0.9, 1.1].
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(random_in(0.9..=1.1))
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
    d.mul_f64(random_in(0.0..=1.0))
}

/// When an instance's next full GET is due: the first of its own slots (`phase` of the
/// `period`, in [0, 1), counted from `epoch`) at least `min_gap` after `at`. Each instance
/// keeps one slot per period, so the full GETs of many instances spread evenly over the
/// period whenever their earlier GETs ran (a bulk apply fetched over many intervals does not
/// bunch their next full GETs together).
pub fn full_refresh_slot(
    epoch: Instant,
    at: Instant,
    min_gap: Duration,
    period: Duration,
    phase: f64,
) -> Instant {
    let first = epoch + period.mul_f64(phase.clamp(0.0, 1.0));
    let earliest = at + min_gap;
    if period.is_zero() || earliest <= first {
        return first.max(earliest);
    }
    let behind = (earliest - first).as_secs_f64() / period.as_secs_f64();
    let mut slot = first + period.mul_f64(behind.ceil());
    // Float rounding must not put the slot before `earliest`.
    while slot < earliest {
        slot += period;
    }
    slot
}

/// What the timing decision reads of one PpioInstance at a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub now: Instant,
    /// When the next poll is due, as remembered for the current generation; `None`: never
    /// polled since start-up, or the spec changed since.
    pub next_poll: Option<Instant>,
    /// The refresh annotation asks for a poll not answered yet.
    pub refresh_requested: bool,
    /// When a poll for a refresh request last ran.
    pub last_forced: Option<Instant>,
    /// First sight since start-up of an object whose status already answers its generation.
    pub observed_before_start: bool,
    /// The instance's refresh interval.
    pub refresh: Duration,
}

/// What a reconcile does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Poll now.
    Poll,
    /// Nothing now; look again at this instant.
    Wait(Instant),
    /// Schedule the first poll after start-up at this instant (nothing now).
    FirstPoll(Instant),
}

/// When to poll, as a pure function of what is known (`spread` in [0, 1) places a first poll
/// after start-up within the interval).
pub fn decide(d: &Due, spread: f64) -> Decision {
    if d.refresh_requested {
        // At most one poll per MIN_REFRESH_GAP for refresh requests.
        return match d.last_forced.map(|at| at + MIN_REFRESH_GAP) {
            Some(ready) if ready > d.now => Decision::Wait(ready),
            _ => Decision::Poll,
        };
    }
    match d.next_poll {
        Some(at) if at > d.now => Decision::Wait(at),
        Some(_) => Decision::Poll,
        None if d.observed_before_start => {
            Decision::FirstPoll(d.now + d.refresh.mul_f64(spread.clamp(0.0, 1.0)))
        }
        None => Decision::Poll,
    }
}

pub(crate) fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(now: Instant) -> Due {
        Due {
            now,
            next_poll: None,
            refresh_requested: false,
            last_forced: None,
            observed_before_start: false,
            refresh: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_new_object_polls_now_and_a_known_one_waits_for_its_time() {
        let now = Instant::now();
        assert_eq!(decide(&due(now), 0.5), Decision::Poll);
        let later = now + Duration::from_secs(30);
        let known = Due {
            next_poll: Some(later),
            ..due(now)
        };
        assert_eq!(decide(&known, 0.5), Decision::Wait(later));
        let overdue = Due {
            next_poll: Some(now - Duration::from_secs(1)),
            ..due(now)
        };
        assert_eq!(decide(&overdue, 0.5), Decision::Poll);
    }

    #[test]
    fn after_a_restart_first_polls_spread_over_the_interval() {
        let now = Instant::now();
        let d = Due {
            observed_before_start: true,
            ..due(now)
        };
        assert_eq!(decide(&d, 0.0), Decision::FirstPoll(now));
        assert_eq!(
            decide(&d, 0.5),
            Decision::FirstPoll(now + Duration::from_secs(30))
        );
        assert_eq!(
            decide(&d, 7.0),
            Decision::FirstPoll(now + Duration::from_secs(60))
        );
    }

    #[test]
    fn a_refresh_request_polls_now_but_at_most_every_ten_seconds() {
        let now = Instant::now();
        let asked = Due {
            refresh_requested: true,
            next_poll: Some(now + Duration::from_secs(50)),
            ..due(now)
        };
        assert_eq!(decide(&asked, 0.5), Decision::Poll);
        let again = Due {
            last_forced: Some(now - Duration::from_secs(3)),
            ..asked
        };
        assert_eq!(
            decide(&again, 0.5),
            Decision::Wait(now + Duration::from_secs(7))
        );
        let later = Due {
            last_forced: Some(now - Duration::from_secs(11)),
            ..asked
        };
        assert_eq!(decide(&later, 0.5), Decision::Poll);
    }

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
    fn full_refresh_slots_spread_evenly_however_bunched_the_earlier_gets() {
        let epoch = Instant::now();
        let period = Duration::from_secs(1800);
        let n = 3000u32;
        // Every first GET ran within the first two minutes (a bulk apply).
        let mut per_minute = [0u32; 30];
        for i in 0..n {
            let phase = (f64::from(i) + 0.5) / f64::from(n);
            let at = epoch + Duration::from_millis(u64::from(i) * 40);
            let mut slot = full_refresh_slot(epoch, at, period / 2, period, phase);
            assert!(slot >= at + period / 2, "slot {i} too soon");
            assert!(slot < at + period / 2 + period, "slot {i} too late");
            // From then on, a GET at each slot: one per period, in the same minute of it.
            for _ in 0..3 {
                let next = full_refresh_slot(epoch, slot, period / 2, period, phase);
                assert_eq!(next - slot, period);
                slot = next;
            }
            let minute = ((slot - epoch).as_secs() % 1800) / 60;
            per_minute[minute as usize] += 1;
        }
        // 3000 instances over 30 minutes: 100 full GETs in every minute.
        assert!(per_minute.iter().all(|c| *c == 100), "{per_minute:?}");
        // Never before `at + min_gap`, even on a period boundary.
        let at = epoch + period;
        assert_eq!(
            full_refresh_slot(epoch, at, Duration::ZERO, period, 0.0),
            at
        );
        assert_eq!(
            full_refresh_slot(epoch, epoch, Duration::ZERO, period, 0.5),
            epoch + period / 2
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
