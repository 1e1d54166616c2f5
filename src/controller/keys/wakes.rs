//! PpioInstances that walks ask to reconcile, handed to the controller in the order asked,
//! key by key in turn.
//!
//! When a walk answers thousands of waiting PpioInstances at once (a bulk apply), the queue
//! here keeps them in the order their pages were read and hands the controller a window of
//! them at a time, each once, the next as the reconciles of those start. Each API key has a
//! queue of its own and the keys take turns, so one key's bulk apply does not put another
//! key's changes behind it. The first answered
//! is written first, and what waits is a name in this queue, not a reconcile in the
//! controller's (the controller dedups and debounces what it is handed, and its other
//! triggers, a new object or a requeue, go between).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use crate::controller::cached::CachedInstance;
use crate::lock;

/// A PpioInstance as the controller names it.
pub type Wake = ObjectRef<DeserializeGuard<CachedInstance>>;

/// A PpioInstance handed over and not started after this long no longer counts against the
/// window (it was deleted meanwhile, or the controller was not ready yet).
pub const HANDED_STALE: Duration = Duration::from_secs(30);

/// The PpioInstances walks asked to reconcile: a queue in the order asked, handed to the
/// controller ([`Waker::stream`]) a window at a time. Cloning shares the queue.
#[derive(Clone)]
pub struct Waker {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The controller's task polling [`Waker::stream`].
    stream: AtomicWaker,
    window: usize,
}

#[derive(Default)]
struct Queue {
    /// Asked for, not handed over yet, oldest first, per API key (fingerprint).
    order: HashMap<u64, VecDeque<Wake>>,
    /// The keys with PpioInstances waiting, in turn.
    turns: VecDeque<u64>,
    /// What `order` holds: asked again, a PpioInstance keeps its place.
    queued: HashSet<Wake>,
    /// Handed over and not started yet, with when.
    handed: HashMap<Wake, Instant>,
}

impl Waker {
    /// A queue that hands at most `window` PpioInstances to the controller before their
    /// reconciles start (at least one).
    pub fn new(window: usize) -> Waker {
        Waker {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                stream: AtomicWaker::new(),
                window: window.max(1),
            }),
        }
    }

    /// Asks for `object`, of the API key `key` (fingerprint), to be reconciled: after the
    /// ones of its key asked before it, in turn with the other keys, and once however often
    /// it is asked meanwhile.
    pub fn wake(&self, object: Wake, key: u64) {
        {
            let mut q = lock(&self.shared.queue);
            if q.handed.contains_key(&object) || !q.queued.insert(object.clone()) {
                return;
            }
            match q.order.entry(key) {
                Entry::Occupied(mut e) => e.get_mut().push_back(object),
                Entry::Vacant(e) => {
                    e.insert(VecDeque::from([object]));
                    q.turns.push_back(key);
                }
            }
        }
        self.shared.stream.wake();
    }

    /// A reconcile of `object` started: it no longer counts against the window.
    pub fn started(&self, object: &Wake) {
        let removed = lock(&self.shared.queue).handed.remove(object).is_some();
        if removed {
            self.shared.stream.wake();
        }
    }

    /// How many PpioInstances wait to be handed over.
    pub fn waiting(&self) -> usize {
        lock(&self.shared.queue)
            .order
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// What the controller reconciles on (kube's `reconcile_on`): the queue, in order, while
    /// fewer than the window are handed over and not started. Never ends.
    pub fn stream(&self) -> impl futures::Stream<Item = Wake> + Send + 'static {
        let shared = self.shared.clone();
        futures::stream::poll_fn(move |cx: &mut Context<'_>| {
            shared.stream.register(cx.waker());
            let now = Instant::now();
            let mut q = lock(&shared.queue);
            if q.handed.len() >= shared.window {
                q.handed
                    .retain(|_, at| now.saturating_duration_since(*at) < HANDED_STALE);
            }
            if q.handed.len() >= shared.window {
                return Poll::Pending;
            }
            match q.next() {
                Some(object) => {
                    q.queued.remove(&object);
                    q.handed.insert(object.clone(), now);
                    Poll::Ready(Some(object))
                }
                None => Poll::Pending,
            }
        })
    }
}

impl Queue {
    /// The next PpioInstance to hand over: the oldest of the key whose turn it is. (A key
    /// has a turn while its queue holds something.)
    fn next(&mut self) -> Option<Wake> {
        let key = self.turns.pop_front()?;
        let queue = self.order.get_mut(&key)?;
        let object = queue.pop_front();
        if queue.is_empty() {
            self.order.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn named(name: &str) -> Wake {
        ObjectRef::new(name).within("ns")
    }

    /// What the stream hands over now, without waiting.
    fn ready(stream: &mut (impl futures::Stream<Item = Wake> + Unpin)) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(w)) = stream.next().now_or_never() {
            out.push(w.name);
        }
        out
    }

    use futures::FutureExt;

    #[tokio::test(start_paused = true)]
    async fn hands_over_in_the_order_asked_a_window_at_a_time() {
        let waker = Waker::new(2);
        let mut stream = Box::pin(waker.stream());
        for name in ["a", "b", "c", "b", "d"] {
            waker.wake(named(name), 1);
        }
        assert_eq!(ready(&mut stream), ["a", "b"]);
        assert_eq!(waker.waiting(), 2);
        // Asked again while handed over and not started: once is enough.
        waker.wake(named("a"), 1);
        assert!(ready(&mut stream).is_empty());
        waker.started(&named("b"));
        assert_eq!(ready(&mut stream), ["c"]);
        // A reconcile that was not handed over frees nothing.
        waker.started(&named("x"));
        assert!(ready(&mut stream).is_empty());
        waker.started(&named("a"));
        waker.started(&named("c"));
        assert_eq!(ready(&mut stream), ["d"]);
        // Started, it may be asked for again.
        waker.started(&named("d"));
        waker.wake(named("a"), 1);
        assert_eq!(ready(&mut stream), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_take_turns_so_a_bulk_apply_does_not_hold_back_another_key() {
        let waker = Waker::new(16);
        let mut stream = Box::pin(waker.stream());
        // Key 1's walk answers 1,000 PpioInstances; then key 2's walk finds 3 changed.
        for i in 0..1000 {
            waker.wake(named(&format!("a{i}")), 1);
        }
        for name in ["b0", "b1", "b2"] {
            waker.wake(named(name), 2);
        }
        // The first window holds key 1's oldest and key 2's, in turn.
        let first = ready(&mut stream);
        assert_eq!(first.len(), 16);
        assert_eq!(&first[..6], ["a0", "b0", "a1", "b1", "a2", "b2"]);
        assert_eq!(&first[6..8], ["a3", "a4"]);
        assert_eq!(waker.waiting(), 1000 - 13);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handed_object_never_started_stops_counting_after_a_while() {
        let waker = Waker::new(1);
        let mut stream = Box::pin(waker.stream());
        waker.wake(named("deleted"), 1);
        waker.wake(named("next"), 1);
        assert_eq!(ready(&mut stream), ["deleted"]);
        tokio::time::advance(HANDED_STALE - Duration::from_secs(1)).await;
        assert!(ready(&mut stream).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(ready(&mut stream), ["next"]);
    }

    #[tokio::test]
    async fn a_wake_reaches_a_stream_that_waits() {
        let waker = Waker::new(4);
        let mut stream = Box::pin(waker.stream());
        let next = tokio::spawn(async move { stream.next().await.map(|w| w.name) });
        tokio::task::yield_now().await;
        waker.wake(named("a"), 1);
        let got = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got.as_deref(), Some("a"));
    }
}
