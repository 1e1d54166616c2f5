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

impl Budget {
    /// The time between two requests at the steady rate; `None`: unlimited.
    pub fn interval(&self) -> Option<Duration> {
        let rate = self.per_second.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(1.0 / rate))
    }
}

/// The default request rate per API key.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 10.0;
/// The default burst per API key.
pub const DEFAULT_BURST: u32 = 20;

/// A request slot reserved in a key's budget. Sweeps of the key's LIST go before every
/// reserved GET ([`Buckets::reserve_first`]): each page a sweep takes moves the slots of the
/// GETs already waiting one request later, and a reservation is measured against that shift
/// when it is used ([`Buckets::redeem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The slot when it was reserved (or last looked at).
    pub slot: Instant,
    /// The key's displacement at that time.
    pub shift: Duration,
    /// Taken ahead of the waiting GETs, in line with the walks ([`Buckets::reserve_ahead`]):
    /// only walk pages move it.
    pub ahead: bool,
    /// Taken in a namespace's fair share ([`Buckets::reserve_fair`]): ahead of the routine
    /// GETs, behind the urgent ones.
    pub fair: bool,
}

impl Reservation {
    /// Whether this slot serves a GET that is `urgent`: a routine or fair slot does not (the
    /// GET became urgent while it waited behind the urgent ones), an urgent one does.
    pub fn serves(&self, urgent: bool) -> bool {
        self.ahead || !urgent
    }
}

/// One key's virtual clock: the next free slot for a routine GET, for an urgent GET and for
/// a sweep page, and how far the ones ahead have pushed the GETs waiting so far. Pages go
/// before every GET; urgent GETs before routine ones.
#[derive(Debug, Clone, Copy)]
struct Slots {
    next: Instant,
    fair_next: Instant,
    urgent_next: Instant,
    sweep_next: Instant,
    /// How far pages, urgent and fair GETs pushed the routine GETs.
    shift: Duration,
    /// How far pages and urgent GETs pushed the fair GETs.
    fair_shift: Duration,
    /// How far pages pushed the urgent GETs.
    urgent_shift: Duration,
}

impl Slots {
    /// A request that goes before the routine GETs takes one of their slots: each routine
    /// GET waiting moves one request (`interval`) later.
    fn go_before_routine(&mut self, now: Instant, floor: Instant, interval: Duration) {
        if self.next > now {
            self.shift += interval;
        }
        self.next = self.next.max(floor) + interval;
    }

    /// The next routine slot, taken.
    fn routine(&mut self, floor: Instant, interval: Duration) -> Reservation {
        let slot = self.next.max(floor);
        self.next = slot + interval;
        Reservation {
            slot,
            shift: self.shift,
            ahead: false,
            fair: false,
        }
    }

    /// A request that goes before the fair GETs (a walk page, an urgent GET) moves them too.
    fn go_before_fair(&mut self, now: Instant, floor: Instant, interval: Duration) {
        if self.fair_next > now {
            self.fair_shift += interval;
        }
        self.fair_next = self.fair_next.max(floor) + interval;
        self.go_before_routine(now, floor, interval);
    }
}

impl From<Instant> for Slots {
    /// A key seen for the first time: its whole burst is free from `floor` on.
    fn from(floor: Instant) -> Slots {
        Slots {
            next: floor,
            fair_next: floor,
            urgent_next: floor,
            sweep_next: floor,
            shift: Duration::ZERO,
            fair_shift: Duration::ZERO,
            urgent_shift: Duration::ZERO,
        }
    }
}

/// Per-key leaky buckets: the virtual time of each key's next request slot, and how much of
/// each key each namespace has asked for lately.
#[derive(Debug, Default)]
pub struct Buckets {
    keys: Mutex<HashMap<u64, Slots>>,
    shares: Mutex<HashMap<u64, Shares>>,
}

/// How long a namespace's routine GETs count towards its recent use of a key: the time
/// constant of its decaying count.
pub const SHARE_MEMORY: Duration = Duration::from_secs(120);

/// The routine GETs each namespace asked of one key lately (counts decaying with
/// [`SHARE_MEMORY`]), for the fair share between namespaces.
#[derive(Debug, Default)]
struct Shares {
    /// By namespace: the decayed count and when it was last brought up to date.
    by_namespace: HashMap<String, (f64, Instant)>,
}

impl Shares {
    /// Counts one routine GET of `namespace`; whether the namespace is within its fair share:
    /// it asked less lately than the average namespace using the key (a key used by one
    /// namespace alone has no share to keep).
    fn ask(&mut self, namespace: &str, now: Instant) -> bool {
        let decay = |(count, at): (f64, Instant)| {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            count * (-dt / SHARE_MEMORY.as_secs_f64()).exp()
        };
        // Bring every count to now; forget namespaces that asked nothing for a long while.
        self.by_namespace.retain(|_, entry| {
            *entry = (decay(*entry), now);
            entry.0 >= 0.01
        });
        // A namespace already counted is found without a copy of its name.
        let own = match self.by_namespace.get_mut(namespace) {
            Some(entry) => entry,
            None => self
                .by_namespace
                .entry(namespace.to_string())
                .or_insert((0.0, now)),
        };
        own.0 += 1.0;
        let own = own.0;
        let total: f64 = self.by_namespace.values().map(|(c, _)| c).sum();
        own < total / self.by_namespace.len() as f64
    }
}

impl Buckets {
    /// Reserves a request slot for `key` at `now`; returns how long to wait for it. Every
    /// reserved slot is used: the poll comes back at its slot (see `poll`), so the key's
    /// horizon is its backlog divided by its rate, never more.
    pub fn reserve(&self, budget: Budget, key: u64, now: Instant) -> Duration {
        self.reserve_slot(budget, key, now)
            .slot
            .saturating_duration_since(now)
    }

    /// [`Buckets::reserve`], returning the reservation itself.
    pub fn reserve_slot(&self, budget: Budget, key: u64, now: Instant) -> Reservation {
        let Some((interval, floor)) = pacing(budget, now) else {
            return Reservation {
                slot: now,
                shift: Duration::ZERO,
                ahead: false,
                fair: false,
            };
        };
        let mut keys = lock(&self.keys);
        slots_of(&mut keys, key, now, floor).routine(floor, interval)
    }

    /// A slot for a page of a sweep: ahead of every GET waiting for the key's budget (their
    /// slots move one request later), paced at the key's rate with its burst. Returns how
    /// long to wait for it.
    pub fn reserve_first(&self, budget: Budget, key: u64, now: Instant) -> Duration {
        let Some((interval, floor)) = pacing(budget, now) else {
            return Duration::ZERO;
        };
        let mut keys = lock(&self.keys);
        let slots = slots_of(&mut keys, key, now, floor);
        let slot = slots.sweep_next.max(floor);
        slots.sweep_next = slot + interval;
        // GETs wait for slots ahead: each of them moves one request later.
        slots.go_before_fair(now, floor, interval);
        if slots.urgent_next > now {
            slots.urgent_shift += interval;
        }
        slots.urgent_next = slots.urgent_next.max(floor) + interval;
        slot.saturating_duration_since(now)
    }

    /// A slot ahead of every routine GET waiting for the key's budget (full refreshes, GETs
    /// by interval), for the GETs that cannot wait behind them: a transition followed, a first
    /// sight, a changed item, a refresh request, a "gone" to confirm. Walk pages still go
    /// first ([`Buckets::reserve_first`]).
    pub fn reserve_ahead(&self, budget: Budget, key: u64, now: Instant) -> Reservation {
        let Some((interval, floor)) = pacing(budget, now) else {
            return Reservation {
                slot: now,
                shift: Duration::ZERO,
                ahead: true,
                fair: false,
            };
        };
        let mut keys = lock(&self.keys);
        let slots = slots_of(&mut keys, key, now, floor);
        let slot = slots.urgent_next.max(floor);
        slots.urgent_next = slot + interval;
        slots.go_before_fair(now, floor, interval);
        Reservation {
            slot,
            shift: slots.urgent_shift,
            ahead: true,
            fair: false,
        }
    }

    /// A slot for a routine GET of a PpioInstance in `namespace`. While the key's routine
    /// GETs queue, a namespace that asked the key for no more than the average namespace
    /// lately goes ahead of them (behind the urgent GETs): one namespace's backlog (a bulk
    /// apply, thousands of PpioInstances) cannot stretch the intervals of another's few.
    /// Otherwise, or when nothing queues, the routine line ([`Buckets::reserve_slot`]).
    pub fn reserve_fair(
        &self,
        budget: Budget,
        key: u64,
        namespace: &str,
        now: Instant,
    ) -> Reservation {
        let within_share = {
            let mut shares = lock(&self.shares);
            if !shares.contains_key(&key) {
                // A new key: drop the keys that asked nothing for a long while.
                let quiet = SHARE_MEMORY * 10;
                shares.retain(|_, s| {
                    s.by_namespace
                        .values()
                        .any(|(_, at)| now.saturating_duration_since(*at) < quiet)
                });
            }
            shares.entry(key).or_default().ask(namespace, now)
        };
        let Some((interval, floor)) = pacing(budget, now) else {
            return self.reserve_slot(budget, key, now);
        };
        let mut keys = lock(&self.keys);
        let slots = slots_of(&mut keys, key, now, floor);
        let queued = slots.next.max(floor) > now;
        if !(within_share && queued) {
            return slots.routine(floor, interval);
        }
        let slot = slots.fair_next.max(floor);
        slots.fair_next = slot + interval;
        slots.go_before_routine(now, floor, interval);
        Reservation {
            slot,
            shift: slots.fair_shift,
            ahead: false,
            fair: true,
        }
    }

    /// Forgets a key no longer in use.
    pub fn forget(&self, key: u64) {
        lock(&self.keys).remove(&key);
        lock(&self.shares).remove(&key);
    }

    /// A reservation, moved by the sweeps that went ahead of it since it was made. `Ok`: its
    /// slot has come; `Err`: the reservation to come back with.
    pub fn redeem(&self, key: u64, r: Reservation, now: Instant) -> Result<(), Reservation> {
        let shift = lock(&self.keys).get(&key).map_or(r.shift, |slots| {
            if r.ahead {
                slots.urgent_shift
            } else if r.fair {
                slots.fair_shift
            } else {
                slots.shift
            }
        });
        let slot = r.slot + shift.saturating_sub(r.shift);
        if slot <= now {
            Ok(())
        } else {
            Err(Reservation { slot, shift, ..r })
        }
    }
}

/// A key whose slots all lie this far in the past holds nothing a new entry would not: its
/// entry goes (a key of GETs alone, rotated away, is never forgotten by its sweeps).
const KEY_IDLE: Duration = Duration::from_secs(3600);

/// The slots of `key`, a new entry (its burst free from `floor`) when it has none; a new key
/// first drops the idle ones.
fn slots_of(keys: &mut HashMap<u64, Slots>, key: u64, now: Instant, floor: Instant) -> &mut Slots {
    if !keys.contains_key(&key) {
        prune_idle(keys, now);
    }
    keys.entry(key).or_insert_with(|| Slots::from(floor))
}

/// Drops the keys idle for [`KEY_IDLE`].
fn prune_idle(keys: &mut HashMap<u64, Slots>, now: Instant) {
    if let Some(idle_since) = now.checked_sub(KEY_IDLE) {
        keys.retain(|_, s| {
            s.next.max(s.sweep_next).max(s.urgent_next).max(s.fair_next) > idle_since
        });
    }
}

/// The interval between two requests and the earliest slot (`now` less the burst allowance);
/// `None`: unlimited.
fn pacing(budget: Budget, now: Instant) -> Option<(Duration, Instant)> {
    let interval = budget.interval()?;
    let allowance = interval.saturating_mul(budget.burst.saturating_sub(1));
    Some((interval, now.checked_sub(allowance).unwrap_or(now)))
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

    #[test]
    fn sweeps_go_before_the_gets_already_waiting() {
        let buckets = Buckets::default();
        let budget = Budget {
            per_second: Some(1.0),
            burst: 1,
        };
        let t0 = Instant::now();
        let first = buckets.reserve_slot(budget, 1, t0);
        let second = buckets.reserve_slot(budget, 1, t0);
        assert_eq!(buckets.redeem(1, first, t0), Ok(()));
        assert_eq!(second.slot, t0 + Duration::from_secs(1));
        // Two sweep pages go first: at once (the first GET took the slot at t0, but sweeps
        // are paced on their own) and a second later; the waiting GET moves two slots.
        assert_eq!(buckets.reserve_first(budget, 1, t0), Duration::ZERO);
        assert_eq!(buckets.reserve_first(budget, 1, t0), Duration::from_secs(1));
        let at_its_slot = t0 + Duration::from_secs(1);
        let moved = buckets
            .redeem(1, second, at_its_slot)
            .expect_err("moved behind the sweep");
        assert_eq!(moved.slot, t0 + Duration::from_secs(3));
        assert_eq!(buckets.redeem(1, moved, moved.slot), Ok(()));
        // A new GET goes after all of them.
        assert_eq!(buckets.reserve(budget, 1, t0), Duration::from_secs(4));
    }

    #[test]
    fn urgent_gets_go_ahead_of_the_waiting_ones_in_line_with_the_walks() {
        let buckets = Buckets::default();
        let budget = Budget {
            per_second: Some(1.0),
            burst: 1,
        };
        let t0 = Instant::now();
        // Five routine GETs wait: slots at 0..4 s.
        let routine: Vec<Reservation> = (0..5)
            .map(|_| buckets.reserve_slot(budget, 1, t0))
            .collect();
        // An urgent one takes the next slot in line with the walks, and moves them all.
        let urgent = buckets.reserve_ahead(budget, 1, t0);
        assert!(urgent.ahead);
        assert_eq!(urgent.slot, t0);
        // A walk page goes first still (paced on its own), and moves it one request later.
        assert_eq!(buckets.reserve_first(budget, 1, t0), Duration::ZERO);
        let moved_urgent = buckets.redeem(1, urgent, t0).expect_err("behind the page");
        assert_eq!(moved_urgent.slot, t0 + Duration::from_secs(1));
        // Another urgent GET comes after it, and does not move it.
        let second = buckets.reserve_ahead(budget, 1, t0);
        assert_eq!(second.slot, t0 + Duration::from_secs(2));
        assert_eq!(buckets.redeem(1, moved_urgent, moved_urgent.slot), Ok(()));
        // The last routine GET moved three requests later (the urgent GETs and the page).
        let last = routine[4];
        let moved = buckets
            .redeem(1, last, last.slot)
            .expect_err("moved behind the urgent GETs and the page");
        assert_eq!(moved.slot, t0 + Duration::from_secs(7));
    }

    #[test]
    fn a_namespace_under_its_share_goes_ahead_of_a_busier_ones_queue() {
        let buckets = Buckets::default();
        let budget = Budget {
            per_second: Some(1.0),
            burst: 1,
        };
        let t0 = Instant::now();
        // One namespace alone: the routine line, however much it asks.
        let alone: Vec<Reservation> = (0..10)
            .map(|_| buckets.reserve_fair(budget, 1, "big", t0))
            .collect();
        assert!(alone.iter().all(|r| !r.fair));
        assert_eq!(alone[9].slot, t0 + Duration::from_secs(9));
        // A second namespace, under its share, goes ahead of the queue (behind nothing urgent).
        let small = buckets.reserve_fair(budget, 1, "small", t0);
        assert!(small.fair && !small.ahead);
        assert_eq!(small.slot, t0);
        // And moves the routine GETs waiting one request later.
        let moved = buckets
            .redeem(1, alone[9], alone[9].slot)
            .expect_err("moved behind the fair GET");
        assert_eq!(moved.slot, t0 + Duration::from_secs(10));
        // The busier namespace stays in the routine line.
        assert!(!buckets.reserve_fair(budget, 1, "big", t0).fair);
        // An urgent GET goes ahead of the fair one and moves it.
        let urgent = buckets.reserve_ahead(budget, 1, t0);
        assert!(urgent.ahead);
        let small_moved = buckets
            .redeem(1, small, t0)
            .expect_err("behind the urgent GET");
        assert_eq!(small_moved.slot, t0 + Duration::from_secs(1));
        // Nothing queued: the routine line, whoever asks.
        let later = t0 + Duration::from_secs(3600);
        assert!(!buckets.reserve_fair(budget, 1, "small", later).fair);
    }
}
