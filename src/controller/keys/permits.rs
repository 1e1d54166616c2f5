//! The reconcile permits (`--max-concurrent-reconciles`), shared between lanes: a lane is
//! where a PpioInstance's API key comes from (its credentials Secret, or the operator's
//! default key). A reconcile holds its permit across its PPIO and Kubernetes calls, so a lane
//! whose calls hang (a slow or failing account) could otherwise hold every permit and stall
//! every other tenant. Two rules keep lanes apart:
//!
//! - a lane holds at most [`Permits::lane_cap`] permits: the rest (an eighth, at least one,
//!   from [`MIN_SHARED`] permits on) stays for the other lanes;
//! - a freed permit goes to the lanes that wait in turn (round robin), and within a lane to
//!   the reconcile that asked first.
//!
//! A reconcile that stops waiting (its future dropped) gives back a permit handed to it
//! meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::lock;

/// From this many permits on, one lane never holds them all.
pub const MIN_SHARED: usize = 4;

/// A lane: the namespace and name of a credentials Secret, or `None` for the default key.
pub type Lane = Option<(String, String)>;

/// The reconcile permits of a controller.
pub struct Permits {
    total: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Permits not held.
    free: usize,
    /// No permit is handed out any more.
    closed: bool,
    /// Permits held, by lane (lanes holding none are removed).
    held: HashMap<Lane, usize>,
    /// Reconciles waiting, by lane, in the order they asked.
    waiting: HashMap<Lane, VecDeque<oneshot::Sender<()>>>,
    /// The lanes with reconciles waiting, in turn.
    turn: VecDeque<Lane>,
}

/// A permit: given back when dropped.
pub struct Permit {
    permits: Arc<Permits>,
    lane: Lane,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.permits.release(&self.lane);
    }
}

/// A reconcile waiting for a permit: gives back one handed to it if it stops waiting.
struct Waiting {
    permits: Arc<Permits>,
    lane: Lane,
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.permits.release(&self.lane);
        }
    }
}

impl Permits {
    /// `total` permits (at least one).
    pub fn new(total: usize) -> Arc<Permits> {
        let total = total.max(1);
        Arc::new(Permits {
            total,
            state: Mutex::new(State {
                free: total,
                ..State::default()
            }),
        })
    }

    /// The most permits one lane holds: all but an eighth, at least one kept for the other
    /// lanes from [`MIN_SHARED`] permits on (fewer are a deliberate throttle, not split).
    pub fn lane_cap(&self) -> usize {
        if self.total < MIN_SHARED {
            return self.total;
        }
        self.total - (self.total / 8).max(1)
    }

    /// A permit for a reconcile of `lane`, when its turn comes; `None` once closed.
    pub async fn acquire(self: &Arc<Self>, lane: Lane) -> Option<Permit> {
        let rx = {
            let mut st = lock(&self.state);
            if st.closed {
                return None;
            }
            let held = st.held.get(&lane).copied().unwrap_or(0);
            let queued = st.waiting.get(&lane).is_some_and(|q| !q.is_empty());
            if st.free > 0 && held < self.lane_cap() && !queued {
                st.free -= 1;
                *st.held.entry(lane.clone()).or_default() += 1;
                return Some(Permit {
                    permits: self.clone(),
                    lane,
                });
            }
            let (tx, rx) = oneshot::channel();
            let queue = st.waiting.entry(lane.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.turn.push_back(lane.clone());
            }
            rx
        };
        let mut waiting = Waiting {
            permits: self.clone(),
            lane,
            rx,
            done: false,
        };
        let handed = (&mut waiting.rx).await.is_ok();
        waiting.done = true;
        handed.then(|| Permit {
            permits: self.clone(),
            lane: waiting.lane.clone(),
        })
    }

    /// No permit is handed out any more: every waiting reconcile gets `None`.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.waiting.clear();
        st.turn.clear();
    }

    /// Permits held now, by `lane`.
    pub fn held(&self, lane: &Lane) -> usize {
        lock(&self.state).held.get(lane).copied().unwrap_or(0)
    }

    fn release(&self, lane: &Lane) {
        let mut st = lock(&self.state);
        if let Some(n) = st.held.get_mut(lane) {
            *n -= 1;
            if *n == 0 {
                st.held.remove(lane);
            }
        }
        st.free += 1;
        if !st.closed {
            self.hand_out(&mut st);
        }
    }

    /// Hands free permits to waiting reconciles: the lanes in turn, each its first waiter,
    /// skipping lanes at their cap and waiters that stopped waiting.
    fn hand_out(&self, st: &mut State) {
        let cap = self.lane_cap();
        let mut passed = 0;
        while st.free > 0 && passed < st.turn.len() {
            let Some(lane) = st.turn.pop_front() else {
                return;
            };
            if st.held.get(&lane).copied().unwrap_or(0) >= cap {
                st.turn.push_back(lane);
                passed += 1;
                continue;
            }
            let queue = st.waiting.entry(lane.clone()).or_default();
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    st.free -= 1;
                    *st.held.entry(lane.clone()).or_default() += 1;
                    break;
                }
            }
            if st.waiting.get(&lane).is_some_and(|q| !q.is_empty()) {
                st.turn.push_back(lane);
            } else {
                st.waiting.remove(&lane);
            }
            passed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str) -> Lane {
        Some(("ns".into(), name.into()))
    }

    #[tokio::test]
    async fn a_lane_never_takes_the_last_permits_and_freed_ones_go_round() {
        let permits = Permits::new(8);
        assert_eq!(permits.lane_cap(), 7);
        let mut a: Vec<Permit> = Vec::new();
        for _ in 0..7 {
            a.push(permits.acquire(lane("a")).await.expect("permit"));
        }
        // The eighth is not A's, while A holds seven.
        let blocked = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            permits.acquire(lane("a")),
        )
        .await;
        assert!(blocked.is_err(), "a lane took more than its cap");
        // Another lane gets it at once.
        let b = permits.acquire(lane("b")).await.expect("permit");
        assert_eq!(permits.held(&lane("b")), 1);
        // A waits behind its cap; B and C wait for free permits; freed permits go round:
        // to C (A is at its cap), then to A once it is under.
        let c_wait = tokio::spawn({
            let p = permits.clone();
            async move { p.acquire(lane("c")).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(b);
        assert!(c_wait.await.expect("joined").is_some());
        drop(a.pop());
        assert_eq!(permits.held(&lane("a")), 6);
        let again = permits.acquire(lane("a")).await;
        assert!(again.is_some());
    }

    #[tokio::test]
    async fn a_reconcile_that_stops_waiting_gives_back_its_permit_and_closing_ends_the_wait() {
        let permits = Permits::new(1);
        assert_eq!(permits.lane_cap(), 1);
        assert_eq!(Permits::new(3).lane_cap(), 3);
        assert_eq!(Permits::new(4).lane_cap(), 3);
        assert_eq!(Permits::new(16).lane_cap(), 14);
        let held = permits.acquire(None).await.expect("permit");
        let waiting = tokio::spawn({
            let p = permits.clone();
            async move { p.acquire(None).await.is_some() }
        });
        let dropped = {
            let p = permits.clone();
            tokio::spawn(async move { p.acquire(lane("x")).await.is_some() })
        };
        tokio::task::yield_now().await;
        dropped.abort();
        drop(held);
        assert!(waiting.await.expect("joined"), "the first waiter is served");
        assert_eq!(permits.held(&None), 0);
        assert_eq!(permits.held(&lane("x")), 0);
        let last = permits.acquire(lane("y")).await.expect("nothing leaked");
        let closed = tokio::spawn({
            let p = permits.clone();
            async move { p.acquire(lane("z")).await.is_none() }
        });
        tokio::task::yield_now().await;
        permits.close();
        assert!(closed.await.expect("joined"));
        drop(last);
    }
}
