//! Each API key's request line: the one place that hands out the key's request budget (a
//! token bucket: a steady rate with a burst), keeps the key's waiting requests in order, and
//! sends the GETs that waited.
//!
//! Five classes, each served before the next ([`Class`]): the first money calls of a key (its
//! catalogue and bills, not known yet); walk pages; urgent GETs (a
//! transition followed, a first sight, a changed LIST item, a refresh request, a "gone" to
//! confirm, a spot instance); the fair line (a routine GET of a namespace that asked the key
//! for no more than the average namespace lately, while routine GETs wait); routine GETs
//! (full refreshes, GETs by interval) and the money calls. First come, first served within a
//! class.
//!
//! A request the budget allows at once, with nothing of its class or ahead of it waiting, is
//! sent by its caller straight away. Otherwise it waits in the line, and the key's task
//! serves the line at the budget's pace: a walk page or a money call waits for its turn; a
//! GET is sent by the task when its turn comes, its answer is kept for its PpioInstance, and
//! the PpioInstance is woken ([`Waker`]) to apply it. A reconcile never waits for the budget,
//! and holds no reconcile permit while a GET that waited is in flight.
//!
//! A PpioInstance whose next full GET is known ahead (its key's walks keep it current until
//! then) plans it with the line ([`Lines::plan`]): at its due time the GET joins the routine
//! GETs, the task sends it, and the PpioInstance is woken with the answer: one reconcile per
//! full GET, and none of them waits on PPIO. A PpioInstance that asks for a GET meanwhile
//! drops its plan.
//!
//! The key's walks over its LIST ([`super::sweep`]) run in the same task, alongside the
//! requests it serves: their pages wait in the line like any other request. So each key has
//! one task, which alone hands out its budget, keeps its 429 pause, runs its walks, keeps its
//! planned GETs and sends the ones that waited.
//!
//! The task runs while requests wait or are planned or the key's walks run, and ends when
//! none do (supervised: a panic starts it again, the walk it was in over, counted in
//! `ppio_api_key_restarts_total`). A 429 answered to a GET it sent pauses the key at once. A
//! key that has not asked for [`KEY_IDLE`] is forgotten, and so is one whose walks retired
//! with nothing waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::budget::{Budget, Shares};
use super::plans::{Due, Plans};
use super::wakes::{Wake, Waker};
use crate::controller::schedule::{MAX_KEY_PAUSE, backoff};
use crate::lock;
use crate::metrics::Metrics;
use crate::ppio::{ApiKey, Instance, PpioApi, PpioError};

/// A request's place in its key's line: each class is served before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A money call of a key whose catalogue or bills are not known yet (a handful of calls):
    /// every status of the key shows what they bring, and a status written before they came
    /// is written again when they do.
    Books = 0,
    /// A page of a walk over the key's LIST.
    Page = 1,
    /// A GET that cannot wait behind the routine ones.
    Urgent = 2,
    /// A routine GET of a namespace within its fair share of the key.
    Fair = 3,
    /// A full refresh, a GET by interval, a money call.
    Routine = 4,
}

const CLASSES: usize = 5;

/// An answer kept for its PpioInstance this long at most (it was deleted, or found its
/// observation elsewhere meanwhile).
pub const ANSWER_TTL: Duration = Duration::from_secs(60);
/// A key's line with nothing waiting that has not been used for this long is forgotten.
pub const KEY_IDLE: Duration = Duration::from_secs(3600);

/// A GET's answer, kept for the PpioInstance that asked.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Instance, PpioError>,
    /// When it came.
    pub at: Instant,
}

/// What a PpioInstance's ask for a GET gets.
#[derive(Debug)]
pub enum Obtained {
    /// The answer to a GET that waited in the line.
    Answer(Box<Answer>),
    /// The budget allows it now: the caller sends it.
    Now,
    /// It waits in the line; its PpioInstance is woken when the answer is there. With about
    /// how long it waits at the budget's pace behind what waits ahead of it (walk pages to
    /// come not counted): a guess for when to look again should no wake come, never when
    /// the GET goes.
    Queued(Duration),
}

/// A GET a PpioInstance asks its key for.
#[derive(Debug)]
pub struct GetAsk<'a> {
    /// The PpioInstance, woken when the answer is there.
    pub object: Wake,
    pub instance_id: &'a str,
    /// Ahead of the routine GETs.
    pub urgent: bool,
    /// The PpioInstance's namespace, for its fair share.
    pub namespace: &'a str,
    /// An answer that came before this instant is stale (an observation since was applied).
    pub newer_than: Option<Instant>,
    /// The answer is handed over no sooner than this (a status just written reaches the
    /// watch first, and the answer is applied on top of it); such a GET always waits in the
    /// line, however free the budget.
    pub hand_after: Option<Instant>,
}

/// A key's walks over its LIST, run by the key's task alongside the requests it serves.
pub trait Walks: Send + Sync {
    /// Walks until no PpioInstance uses the walks any more (they retire).
    fn run(&self) -> futures::future::BoxFuture<'static, ()>;
    /// A panic ended the key's task: what the walk in progress left is tidied.
    fn after_panic(&self);
}

/// What the lines share.
pub struct Env {
    pub ppio: Arc<dyn PpioApi>,
    pub budget: Budget,
    pub metrics: Arc<Metrics>,
    /// Wakes a PpioInstance whose answer is there; `None`: it finds it at its next poll.
    pub waker: Option<Waker>,
}

/// Every key's line.
pub struct Lines {
    env: Arc<Env>,
    keys: Arc<Mutex<HashMap<u64, Arc<Line>>>>,
}

struct Line {
    key: ApiKey,
    fingerprint: u64,
    state: Mutex<State>,
    /// Wakes the task before the time it sleeps to (a request came while it waits for a
    /// planned GET's due time).
    arrived: tokio::sync::Notify,
}

struct State {
    tokens: f64,
    refilled: Instant,
    queues: [VecDeque<Waiter>; CLASSES],
    /// The GETs waiting (not sent yet), by PpioInstance.
    asks: HashMap<Wake, Ask>,
    /// The GETs the line sent whose answers are not kept yet, with when they went.
    sent: HashMap<Wake, Instant>,
    /// Answers not taken yet, with the instance id each is for.
    answers: HashMap<Wake, (String, Answer)>,
    /// The full GETs planned ahead.
    plans: Plans,
    shares: Shares,
    /// The key's walks, run by its task.
    walks: Option<Arc<dyn Walks>>,
    /// No request before this instant (a 429's Retry-After, met by any request of the key).
    paused_until: Option<Instant>,
    /// The task serving the line runs.
    running: bool,
    /// The key is no longer in use: its line goes once idle.
    retired: bool,
    used: Instant,
    pruned: Instant,
}

enum Waiter {
    Get(Wake),
    Slot(oneshot::Sender<()>),
}

struct Ask {
    instance_id: String,
    class: Class,
    hand_after: Option<Instant>,
}

/// What the task does next.
enum Next {
    Idle,
    Sleep(Instant),
    Slot(oneshot::Sender<()>),
    Get(Wake, Ask),
}

impl Lines {
    pub fn new(env: Env) -> Lines {
        Lines {
            env: Arc::new(env),
            keys: Arc::default(),
        }
    }

    /// A GET of `ask.instance_id` for `ask.object`, on `key`: its answer when one came, else
    /// sent now by the caller when the budget allows, else queued.
    pub fn obtain(&self, key: &ApiKey, fingerprint: u64, ask: GetAsk<'_>) -> Obtained {
        let now = Instant::now();
        let line = self.line(key, fingerprint, now);
        let mut st = lock(&line.state);
        let paused = st.paused(now);
        st.touch(now);
        st.prune(now);
        // Asked for now: a GET it planned is not sent as well.
        st.unplan(&ask.object);
        if let Some((id, answer)) = st.answers.remove(&ask.object)
            && id == ask.instance_id
            && ask.newer_than.is_none_or(|t| answer.at > t)
        {
            return Obtained::Answer(Box::new(answer));
        }
        if st.sent.contains_key(&ask.object) {
            // Its answer is on its way.
            return Obtained::Queued(Duration::ZERO);
        }
        if let Some(waiting) = st.asks.get_mut(&ask.object) {
            if waiting.instance_id != ask.instance_id {
                waiting.instance_id = ask.instance_id.to_string();
            }
            let moves = ask.urgent && waiting.class > Class::Urgent;
            if moves {
                // A transition began while it waited: it moves ahead (its old place is left).
                waiting.class = Class::Urgent;
            }
            let class = waiting.class;
            if moves {
                st.queues[Class::Urgent as usize].push_back(Waiter::Get(ask.object));
            }
            return Obtained::Queued(st.wait_guess(self.env.budget, class));
        }
        let class = st.class_of(ask.urgent, ask.namespace, now);
        if !paused && ask.hand_after.is_none() && st.take_now(self.env.budget, class, now) {
            return Obtained::Now;
        }
        st.asks.insert(
            ask.object.clone(),
            Ask {
                instance_id: ask.instance_id.to_string(),
                class,
                hand_after: ask.hand_after,
            },
        );
        st.queues[class as usize].push_back(Waiter::Get(ask.object));
        self.serve(&line, &mut st);
        Obtained::Queued(st.wait_guess(self.env.budget, class))
    }

    /// Plans the full GET of `ask.instance_id` for `ask.object` at `due` (replacing the one it
    /// planned before): the GET waits with the routine ones from then, is sent by the line,
    /// and the PpioInstance is woken with its answer. `false` when the line cannot wake it (no
    /// waker): the PpioInstance asks by itself at the time.
    pub fn plan(&self, key: &ApiKey, fingerprint: u64, ask: GetAsk<'_>, due: Instant) -> bool {
        if self.env.waker.is_none() {
            return false;
        }
        let now = Instant::now();
        let line = self.line(key, fingerprint, now);
        let mut st = lock(&line.state);
        st.touch(now);
        // The task is told only when this plan comes before what it waits for.
        if st.plans.plan(&ask.object, ask.instance_id, due)
            && (!st.running || st.plans.first_due() == Some(due))
        {
            self.serve(&line, &mut st);
        }
        true
    }

    /// Waits for a slot of `class` in the key's line (a walk page, a money call).
    pub async fn slot(&self, key: &ApiKey, fingerprint: u64, class: Class) {
        let now = Instant::now();
        let turn = {
            let line = self.line(key, fingerprint, now);
            let mut st = lock(&line.state);
            let paused = st.paused(now);
            st.touch(now);
            if !paused && st.take_now(self.env.budget, class, now) {
                return;
            }
            let (tx, rx) = oneshot::channel();
            st.queues[class as usize].push_back(Waiter::Slot(tx));
            self.serve(&line, &mut st);
            rx
        };
        // A line whose task ended unexpectedly drops its waiters: they go.
        let _ = turn.await;
    }

    /// `GET /gpus/v2/instances/{id}`, counted in the request metrics.
    pub async fn get(&self, key: &ApiKey, instance_id: &str) -> Result<Instance, PpioError> {
        send_get(&self.env, key, instance_id).await
    }

    /// Runs `walks` in the task of `key` (in place of any it ran).
    pub fn attach(&self, key: &ApiKey, fingerprint: u64, walks: Arc<dyn Walks>) {
        let now = Instant::now();
        let line = self.line(key, fingerprint, now);
        let mut st = lock(&line.state);
        st.touch(now);
        st.walks = Some(walks);
        self.serve(&line, &mut st);
    }

    /// Stops the walks of the key of `fingerprint` (the controller stops).
    pub fn detach(&self, fingerprint: u64) {
        if let Some(line) = lock(&self.keys).get(&fingerprint) {
            lock(&line.state).walks = None;
            line.arrived.notify_one();
        }
    }

    /// Forgets the line of a key no longer in use (its plans and answers dropped: no
    /// PpioInstance uses the key): now when idle, else once its task ends with nothing
    /// waiting (unless the key is used again meanwhile).
    pub fn forget(&self, fingerprint: u64) {
        let mut keys = lock(&self.keys);
        if keys.get(&fingerprint).is_some_and(|l| {
            let mut st = lock(&l.state);
            st.plans.clear();
            st.answers.clear();
            st.retired = true;
            st.idle()
        }) {
            keys.remove(&fingerprint);
        }
    }

    /// Drops the GET `object` planned with the key of `fingerprint` (it was deleted, or uses
    /// another key now).
    pub fn unplan(&self, fingerprint: u64, object: &Wake) {
        let line = lock(&self.keys).get(&fingerprint).cloned();
        if let Some(line) = line {
            lock(&line.state).unplan(object);
        }
    }

    /// How many keys have a line.
    pub fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// Whether no key has a line.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pauses every request of `key` (of `fingerprint`) until `until` (a 429's Retry-After;
    /// a longer pause already set stays). A key with no line yet gets one, which keeps it.
    pub fn pause(&self, key: &ApiKey, fingerprint: u64, until: Instant) {
        let line = self.line(key, fingerprint, Instant::now());
        lock(&line.state).pause(until);
    }

    /// Until when the key of `fingerprint` is paused, if it is now.
    pub fn paused_until(&self, fingerprint: u64) -> Option<Instant> {
        let line = lock(&self.keys).get(&fingerprint).cloned()?;
        let now = Instant::now();
        lock(&line.state).paused_until.filter(|t| *t > now)
    }

    /// The line of `key`, a new one (its burst free) when it has none; a new key first drops
    /// the lines idle for [`KEY_IDLE`].
    fn line(&self, key: &ApiKey, fingerprint: u64, now: Instant) -> Arc<Line> {
        let mut keys = lock(&self.keys);
        if let Some(line) = keys.get(&fingerprint) {
            return line.clone();
        }
        if let Some(idle_since) = now.checked_sub(KEY_IDLE) {
            keys.retain(|_, l| {
                let mut st = lock(&l.state);
                st.prune(now);
                !st.idle() || st.used > idle_since
            });
        }
        let line = Arc::new(Line {
            key: key.clone(),
            fingerprint,
            state: Mutex::new(State::new(self.env.budget, now)),
            arrived: tokio::sync::Notify::new(),
        });
        keys.insert(fingerprint, line.clone());
        line
    }

    /// Starts the task serving `line`, or tells it that something came when it runs.
    fn serve(&self, line: &Arc<Line>, st: &mut State) {
        if st.running {
            line.arrived.notify_one();
        } else {
            st.running = true;
            tokio::spawn(supervise(self.env.clone(), self.keys.clone(), line.clone()));
        }
    }
}

impl State {
    fn new(budget: Budget, now: Instant) -> State {
        State {
            tokens: f64::from(budget.burst.max(1)),
            refilled: now,
            queues: Default::default(),
            asks: HashMap::new(),
            sent: HashMap::new(),
            answers: HashMap::new(),
            plans: Plans::default(),
            shares: Shares::default(),
            walks: None,
            paused_until: None,
            running: false,
            retired: false,
            used: now,
            pruned: now,
        }
    }

    fn pause(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
    }

    fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|t| t > now)
    }

    /// The key is used now.
    fn touch(&mut self, now: Instant) {
        self.used = now;
        self.retired = false;
    }

    /// Nothing waits, runs, is planned or kept.
    fn idle(&self) -> bool {
        !self.running
            && self.walks.is_none()
            && self.asks.is_empty()
            && self.sent.is_empty()
            && self.answers.is_empty()
            && self.plans.is_empty()
    }

    /// Drops the GET `object` planned, if any.
    fn unplan(&mut self, object: &Wake) {
        self.plans.unplan(object);
    }

    /// The planned GETs due at `now` join the routine GETs (one that waits or was sent
    /// already is not asked twice); when the next one is due.
    fn release_due(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let Due {
                object,
                instance_id,
            } = match self.plans.take_due(now) {
                Ok(due) => due,
                Err(next) => return next,
            };
            if self.asks.contains_key(&object) || self.sent.contains_key(&object) {
                continue;
            }
            let namespace = object.namespace.clone().unwrap_or_default();
            let class = self.class_of(false, &namespace, now);
            self.asks.insert(
                object.clone(),
                Ask {
                    instance_id,
                    class,
                    hand_after: None,
                },
            );
            self.queues[class as usize].push_back(Waiter::Get(object));
        }
    }

    /// The class of a GET: urgent, or routine in the namespace's fair share while routine
    /// GETs wait (a key used by one namespace alone has no share to keep).
    fn class_of(&mut self, urgent: bool, namespace: &str, now: Instant) -> Class {
        if urgent {
            return Class::Urgent;
        }
        let within_share = self.shares.ask(namespace, now);
        if within_share && self.waits(Class::Routine as usize) {
            Class::Fair
        } else {
            Class::Routine
        }
    }

    /// About how long a request of `class` queued now waits: what waits in its class and
    /// ahead of it, at the budget's pace.
    fn wait_guess(&self, budget: Budget, class: Class) -> Duration {
        let ahead: usize = self.queues[..=class as usize]
            .iter()
            .map(VecDeque::len)
            .sum();
        budget.interval().map_or(Duration::ZERO, |per| {
            per.saturating_mul(u32::try_from(ahead).unwrap_or(u32::MAX))
        })
    }

    /// Takes a token for a request of `class` when one is free and nothing of its class or
    /// ahead of it waits.
    fn take_now(&mut self, budget: Budget, class: Class, now: Instant) -> bool {
        if (0..=class as usize).any(|c| self.waits(c)) {
            return false;
        }
        self.token(budget, now).is_none()
    }

    /// Takes a token: `None` when taken, else how long until one is free.
    fn token(&mut self, budget: Budget, now: Instant) -> Option<Duration> {
        // No rate: unlimited, a token is always free.
        let rate = budget.per_second.filter(|r| *r > 0.0)?;
        let since = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + since * rate).min(f64::from(budget.burst.max(1)));
        self.refilled = now;
        // A hair under one token counts as one: the clock's rounding must not cost a tick.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - self.tokens) / rate).max(Duration::from_micros(1)))
    }

    /// Whether a live request waits in class `c` (the ones that went away meanwhile are
    /// dropped from its front).
    fn waits(&mut self, c: usize) -> bool {
        while let Some(front) = self.queues[c].front() {
            let live = match front {
                Waiter::Get(object) => self.asks.get(object).is_some_and(|a| a.class as usize == c),
                Waiter::Slot(tx) => !tx.is_closed(),
            };
            if live {
                return true;
            }
            self.queues[c].pop_front();
        }
        false
    }

    /// What the task does next at `now`: the first live request when the budget and the
    /// key's pause allow it, else when to look again; `Idle` (and the task ends) when nothing
    /// waits.
    fn next(&mut self, budget: Budget, paused_until: Option<Instant>, now: Instant) -> Next {
        let next_plan = self.release_due(now);
        let Some(c) = (0..CLASSES).find(|c| self.waits(*c)) else {
            if let Some(due) = next_plan {
                return Next::Sleep(due);
            }
            if self.walks.is_some() {
                // The walks run: the task stays, woken when a request comes.
                return Next::Sleep(now + KEY_IDLE);
            }
            self.running = false;
            return Next::Idle;
        };
        if let Some(until) = paused_until.filter(|t| *t > now) {
            return Next::Sleep(until);
        }
        if let Some(wait) = self.token(budget, now) {
            return Next::Sleep(now + wait);
        }
        match self.queues[c].pop_front() {
            Some(Waiter::Slot(tx)) => Next::Slot(tx),
            Some(Waiter::Get(object)) => match self.asks.remove(&object) {
                Some(ask) => {
                    self.sent.insert(object.clone(), now);
                    Next::Get(object, ask)
                }
                None => Next::Sleep(now),
            },
            None => Next::Sleep(now),
        }
    }

    /// Drops the answers kept, and forgets the GETs sent, longer than [`ANSWER_TTL`] ago
    /// (looked at every few seconds).
    fn prune(&mut self, now: Instant) {
        if now.saturating_duration_since(self.pruned) < Duration::from_secs(5) {
            return;
        }
        self.pruned = now;
        self.answers
            .retain(|_, (_, a)| now.saturating_duration_since(a.at) < ANSWER_TTL);
        // A GET whose answer never came (its task ended unexpectedly) is asked again.
        self.sent
            .retain(|_, at| now.saturating_duration_since(*at) < ANSWER_TTL);
        self.shrink();
    }

    /// Gives back the room a burst of waiting requests took (a bulk apply queues every
    /// PpioInstance of the key at once; a map or queue never shrinks by itself).
    fn shrink(&mut self) {
        fn roomy(len: usize, capacity: usize) -> bool {
            capacity > 64 && capacity > len.saturating_mul(4)
        }
        if roomy(self.asks.len(), self.asks.capacity()) {
            self.asks.shrink_to_fit();
        }
        if roomy(self.sent.len(), self.sent.capacity()) {
            self.sent.shrink_to_fit();
        }
        if roomy(self.answers.len(), self.answers.capacity()) {
            self.answers.shrink_to_fit();
        }
        self.plans.shrink();
        for queue in &mut self.queues {
            if roomy(queue.len(), queue.capacity()) {
                queue.shrink_to_fit();
            }
        }
    }
}

/// Runs a key's task, and starts it again (after the error backoff) when it panics: the
/// walk it was in is over.
async fn supervise(env: Arc<Env>, keys: Arc<Mutex<HashMap<u64, Arc<Line>>>>, line: Arc<Line>) {
    let start = || run(env.clone(), keys.clone(), line.clone());
    let after_panic = || {
        let walks = lock(&line.state).walks.clone();
        if let Some(walks) = walks {
            walks.after_panic();
        }
    };
    super::supervise(&env.metrics, line.fingerprint, "task", start, after_panic).await;
}

/// The walks a key's task runs, and the future running them.
type Walking = (Arc<dyn Walks>, futures::future::BoxFuture<'static, ()>);

/// A key's task: serves its line, and runs its walks, until neither waits. A retired key's
/// line is forgotten then.
async fn run(env: Arc<Env>, keys: Arc<Mutex<HashMap<u64, Arc<Line>>>>, line: Arc<Line>) {
    let mut walking: Option<Walking> = None;
    loop {
        if follow_walks(&line, &mut walking).await {
            continue;
        }
        let now = Instant::now();
        let next = {
            let mut st = lock(&line.state);
            let paused_until = st.paused_until;
            st.next(env.budget, paused_until, now)
        };
        match next {
            Next::Idle => break,
            Next::Sleep(until) => {
                let walk = async {
                    match walking.as_mut() {
                        Some((_, running)) => running.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = walk => end_walks(&line, &mut walking),
                    () = tokio::time::sleep_until(until) => {}
                    () = line.arrived.notified() => {}
                }
            }
            Next::Slot(tx) => {
                let _ = tx.send(());
            }
            Next::Get(object, ask) => {
                tokio::spawn(get_for(env.clone(), line.clone(), object, ask));
            }
        }
    }
    let mut keys = lock(&keys);
    if keys.get(&line.fingerprint).is_some_and(|l| {
        Arc::ptr_eq(l, &line) && {
            let mut st = lock(&l.state);
            if st.retired {
                // Answers that came for a key no longer used are taken by no one.
                st.answers.clear();
            }
            st.retired && st.idle()
        }
    }) {
        keys.remove(&line.fingerprint);
    }
}

/// Starts the walks attached to the line (in place of the ones running, or none when they
/// were detached), and moves the running ones on; `true` when they just ended.
async fn follow_walks(line: &Line, walking: &mut Option<Walking>) -> bool {
    let attached = lock(&line.state).walks.clone();
    match (attached, walking.as_ref()) {
        (Some(a), Some((w, _))) if Arc::ptr_eq(&a, w) => {}
        (Some(a), _) => *walking = Some((a.clone(), a.run())),
        (None, _) => *walking = None,
    }
    let Some((_, running)) = walking.as_mut() else {
        return false;
    };
    // Polled at each turn, not only while the task sleeps: a busy line still moves them on.
    if futures::poll!(running.as_mut()).is_pending() {
        return false;
    }
    end_walks(line, walking);
    true
}

/// The walks ended (they retired): the line no longer runs them.
fn end_walks(line: &Line, walking: &mut Option<Walking>) {
    if let Some((ended, _)) = walking.take() {
        let mut st = lock(&line.state);
        if st.walks.as_ref().is_some_and(|w| Arc::ptr_eq(w, &ended)) {
            st.walks = None;
        }
    }
}

/// A GET that waited in the line: its answer is kept for `object`, which is woken (not before
/// the ask said); a 429 pauses the key at once.
async fn get_for(env: Arc<Env>, line: Arc<Line>, object: Wake, ask: Ask) {
    let instance_id = ask.instance_id;
    let result = send_get(&env, &line.key, &instance_id).await;
    let at = Instant::now();
    if let Err(e) = &result
        && let Some(after) = e.retry_after()
    {
        lock(&line.state).pause(at + after.max(backoff(1)).min(MAX_KEY_PAUSE));
    }
    if let Some(after) = ask.hand_after {
        tokio::time::sleep_until(after).await;
    }
    {
        let mut st = lock(&line.state);
        st.sent.remove(&object);
        st.answers
            .insert(object.clone(), (instance_id, Answer { result, at }));
    }
    if let Some(waker) = &env.waker {
        waker.wake(object, line.fingerprint);
    }
}

/// `GET /gpus/v2/instances/{id}`, counted in the request metrics.
async fn send_get(env: &Env, key: &ApiKey, instance_id: &str) -> Result<Instance, PpioError> {
    let start = Instant::now();
    let result = env.ppio.get_instance(key, instance_id).await;
    let class = result
        .as_ref()
        .map_or_else(PpioError::request_class, |_| "2xx");
    env.metrics
        .api
        .request(class, start.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::ObjectRef;

    /// PPIO answering every GET with an empty instance at once; the ids asked, in order.
    #[derive(Default)]
    struct Fake {
        asked: Mutex<Vec<String>>,
        /// The next GET panics (a bug in a client), once.
        panic_once: std::sync::atomic::AtomicBool,
    }

    impl PpioApi for Fake {
        fn get_instance<'a>(
            &'a self,
            _key: &'a ApiKey,
            instance_id: &'a str,
        ) -> futures::future::BoxFuture<'a, Result<Instance, PpioError>> {
            lock(&self.asked).push(instance_id.to_string());
            let panics = self
                .panic_once
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                assert!(!panics, "a GET that panics");
                Ok(Instance::default())
            })
        }

        fn list_instances<'a>(
            &'a self,
            _key: &'a ApiKey,
            _query: &'a crate::ppio::ListQuery,
        ) -> futures::future::BoxFuture<'a, Result<crate::ppio::InstancePage, PpioError>> {
            Box::pin(async { Err(PpioError::Unauthorized) })
        }
    }

    fn lines(per_second: f64, burst: u32) -> Lines {
        lines_on(Arc::new(Fake::default()), per_second, burst)
    }

    fn lines_on(ppio: Arc<dyn PpioApi>, per_second: f64, burst: u32) -> Lines {
        Lines::new(Env {
            ppio,
            budget: Budget {
                per_second: Some(per_second),
                burst,
            },
            metrics: Arc::new(Metrics::default()),
            waker: None,
        })
    }

    fn key() -> ApiKey {
        ApiKey::new("key-a").expect("key")
    }

    /// Takes `n` slots of `class` one after another; the seconds since `t0` each came at.
    async fn slots(lines: &Lines, class: Class, n: usize, t0: Instant) -> Vec<f64> {
        let mut at = Vec::new();
        for _ in 0..n {
            lines.slot(&key(), 1, class).await;
            at.push((Instant::now() - t0).as_secs_f64());
        }
        at
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_a_burst_then_the_rate_per_key() {
        let lines = lines(2.0, 3);
        let t0 = Instant::now();
        let at = slots(&lines, Class::Routine, 6, t0).await;
        assert_eq!(at, [0.0, 0.0, 0.0, 0.5, 1.0, 1.5]);
        // Another key has a budget of its own.
        lines
            .slot(&ApiKey::new("key-b").expect("key"), 2, Class::Routine)
            .await;
        assert_eq!((Instant::now() - t0).as_secs_f64(), 1.5);
        // After a quiet while the burst is available again, but not more.
        tokio::time::advance(Duration::from_secs(60)).await;
        let t1 = Instant::now();
        assert_eq!(
            slots(&lines, Class::Routine, 4, t1).await,
            [0.0, 0.0, 0.0, 0.5]
        );
    }

    /// Requests of the given classes asked at once, in this order: the order they are served.
    async fn served(classes: &[Class]) -> Vec<usize> {
        let lines = Arc::new(lines(1.0, 1));
        // The burst is taken: everything below waits in the line.
        lines.slot(&key(), 1, Class::Routine).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, class) in classes.iter().copied().enumerate() {
            let (lines, order) = (lines.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                lines.slot(&key(), 1, class).await;
                lock(&order).push(i);
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("slot");
        }
        lock(&order).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn books_go_first_then_pages_then_urgent_then_fair_then_routine_each_in_order() {
        use Class::*;
        let order = served(&[Routine, Routine, Fair, Urgent, Page, Urgent, Page, Books]).await;
        assert_eq!(order, [7, 4, 6, 3, 5, 2, 0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_namespace_under_its_share_goes_ahead_of_a_busier_ones_queue() {
        let now = Instant::now();
        let mut st = State::new(Budget::default(), now);
        // One namespace alone: the routine line, however much it asks.
        let object = |n: usize| ObjectRef::new(&format!("big-{n}")).within("big");
        for n in 0..10 {
            assert_eq!(st.class_of(false, "big", now), Class::Routine);
            st.asks.insert(
                object(n),
                Ask {
                    instance_id: format!("i{n}"),
                    class: Class::Routine,
                    hand_after: None,
                },
            );
            st.queues[Class::Routine as usize].push_back(Waiter::Get(object(n)));
        }
        // A second namespace, under its share, goes ahead of the queue; the busier one stays.
        assert_eq!(st.class_of(false, "small", now), Class::Fair);
        assert_eq!(st.class_of(false, "big", now), Class::Routine);
        // Urgent is urgent, whoever asks.
        assert_eq!(st.class_of(true, "big", now), Class::Urgent);
        // Nothing queued: the routine line, whoever asks.
        st.asks.clear();
        assert_eq!(st.class_of(false, "small", now), Class::Routine);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_key_serves_nothing_until_the_pause_ends() {
        let lines = lines(10.0, 1);
        let t0 = Instant::now();
        lines.pause(&key(), 1, t0 + Duration::from_secs(30));
        lines.slot(&key(), 1, Class::Page).await;
        assert_eq!((Instant::now() - t0).as_secs(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_that_waits_is_sent_by_the_line_and_its_answer_kept_for_its_object() {
        let fake = Arc::new(Fake::default());
        let lines = lines_on(fake.clone(), 1.0, 1);
        let object = |n: &str| ObjectRef::new(n).within("ns");
        let ask = |n: &'static str, urgent| GetAsk {
            object: object(n),
            instance_id: n,
            urgent,
            namespace: "ns",
            newer_than: None,
            hand_after: None,
        };
        // The burst: the caller sends it.
        assert!(matches!(
            lines.obtain(&key(), 1, ask("a", false)),
            Obtained::Now
        ));
        // Then the line: a routine GET, and an urgent one asked after it goes first.
        assert!(matches!(
            lines.obtain(&key(), 1, ask("b", false)),
            Obtained::Queued(_)
        ));
        assert!(matches!(
            lines.obtain(&key(), 1, ask("c", true)),
            Obtained::Queued(_)
        ));
        // Asked again while it waits: it keeps its place, nothing more is sent.
        assert!(matches!(
            lines.obtain(&key(), 1, ask("b", false)),
            Obtained::Queued(_)
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(*lock(&fake.asked), ["c", "b"]);
        let Obtained::Answer(answer) = lines.obtain(&key(), 1, ask("b", false)) else {
            panic!("b's answer is kept");
        };
        assert!(answer.result.is_ok());
        // An answer older than what was applied since is not taken.
        let stale = GetAsk {
            newer_than: Some(Instant::now()),
            ..ask("c", true)
        };
        assert!(matches!(
            lines.obtain(&key(), 1, stale),
            Obtained::Queued(_)
        ));
        // Nothing is kept for ever, and the line serves nothing it was not asked for.
        tokio::time::sleep(ANSWER_TTL * 2).await;
        assert_eq!(*lock(&fake.asked), ["c", "b", "c"]);
        // An answer asked to be handed over later: the GET goes at its turn, always from the
        // line (however free the budget), and asked again meanwhile, nothing more is sent.
        let later = Instant::now() + Duration::from_secs(10);
        let held = GetAsk {
            hand_after: Some(later),
            ..ask("d", false)
        };
        assert!(matches!(lines.obtain(&key(), 1, held), Obtained::Queued(_)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(
            lines.obtain(&key(), 1, ask("d", false)),
            Obtained::Queued(_)
        ));
        assert_eq!(lock(&fake.asked).len(), 4);
        tokio::time::sleep_until(later).await;
        tokio::task::yield_now().await;
        assert!(matches!(
            lines.obtain(&key(), 1, ask("d", false)),
            Obtained::Answer(_)
        ));
        assert_eq!(*lock(&fake.asked), ["c", "b", "c", "d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_get_whose_answer_never_comes_is_asked_again() {
        let fake = Arc::new(Fake::default());
        let lines = lines_on(fake.clone(), 1.0, 1);
        let ask = || GetAsk {
            object: ObjectRef::new("x").within("ns"),
            instance_id: "x",
            urgent: true,
            namespace: "ns",
            newer_than: None,
            hand_after: Some(Instant::now()),
        };
        fake.panic_once
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            lines.obtain(&key(), 1, ask()),
            Obtained::Queued(_)
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Its task ended without an answer: while the answer may still come, it waits.
        assert_eq!(lock(&fake.asked).len(), 1);
        assert!(matches!(
            lines.obtain(&key(), 1, ask()),
            Obtained::Queued(_)
        ));
        // Past the time an answer is kept, it is asked again, and answered.
        tokio::time::sleep(ANSWER_TTL + Duration::from_secs(6)).await;
        assert!(matches!(
            lines.obtain(&key(), 1, ask()),
            Obtained::Queued(_)
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(
            lines.obtain(&key(), 1, ask()),
            Obtained::Answer(_)
        ));
        assert_eq!(*lock(&fake.asked), ["x", "x"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_gives_back_the_room_of_a_bulk_apply_once_served() {
        let fake = Arc::new(Fake::default());
        let lines = lines_on(fake.clone(), 1000.0, 1);
        let names: Vec<String> = (0..2000).map(|n| format!("o{n}")).collect();
        let ask = |n: &str| GetAsk {
            object: ObjectRef::new(n).within("ns"),
            instance_id: "i",
            urgent: false,
            namespace: "ns",
            newer_than: None,
            hand_after: Some(Instant::now()),
        };
        for n in &names {
            assert!(matches!(
                lines.obtain(&key(), 1, ask(n)),
                Obtained::Queued(_)
            ));
        }
        let room = |lines: &Lines| {
            let line = lines.line(&key(), 1, Instant::now());
            let st = lock(&line.state);
            st.asks.capacity()
                + st.answers.capacity()
                + st.queues[Class::Routine as usize].capacity()
        };
        assert!(room(&lines) >= 2000 * 2, "{}", room(&lines));
        tokio::time::sleep(Duration::from_secs(3)).await;
        for n in &names {
            assert!(matches!(
                lines.obtain(&key(), 1, ask(n)),
                Obtained::Answer(_)
            ));
        }
        assert_eq!(lock(&fake.asked).len(), 2000);
        // Served and taken: at its next look the line keeps little room.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(matches!(
            lines.obtain(&key(), 1, ask("late")),
            Obtained::Queued(_)
        ));
        assert!(room(&lines) < 500, "{}", room(&lines));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_line_is_forgotten_and_a_busy_one_kept() {
        let lines = lines(10.0, 1);
        lines.slot(&key(), 1, Class::Routine).await;
        assert_eq!(lines.len(), 1);
        lines.forget(1);
        assert!(lines.is_empty());
        // A GET waits in it: kept until its answer is taken.
        let held = GetAsk {
            object: ObjectRef::new("a").within("ns"),
            instance_id: "a",
            urgent: false,
            namespace: "ns",
            newer_than: None,
            hand_after: Some(Instant::now() + Duration::from_secs(5)),
        };
        assert!(matches!(lines.obtain(&key(), 1, held), Obtained::Queued(_)));
        lines.forget(1);
        assert_eq!(lines.len(), 1);
        // Its answer never taken, and unused for an hour, it goes when another key's line
        // is made.
        tokio::time::sleep(KEY_IDLE + Duration::from_secs(60)).await;
        lines
            .slot(&ApiKey::new("key-b").expect("key"), 2, Class::Routine)
            .await;
        assert_eq!(lines.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_planned_get_is_sent_when_due_and_dropped_when_asked_for_sooner() {
        let fake = Arc::new(Fake::default());
        let lines = Lines::new(Env {
            ppio: fake.clone(),
            budget: Budget {
                per_second: Some(1.0),
                burst: 1,
            },
            metrics: Arc::new(Metrics::default()),
            waker: Some(Waker::new(16)),
        });
        let ask = |n: &'static str| GetAsk {
            object: ObjectRef::new(n).within("ns"),
            instance_id: n,
            urgent: false,
            namespace: "ns",
            newer_than: None,
            hand_after: None,
        };
        let t0 = Instant::now();
        let secs = |s: u64| t0 + Duration::from_secs(s);
        assert!(lines.plan(&key(), 1, ask("a"), secs(30)));
        assert!(lines.plan(&key(), 1, ask("b"), secs(10)));
        assert!(lines.plan(&key(), 1, ask("c"), secs(20)));
        // Planned again for later: the earlier plan is replaced.
        assert!(lines.plan(&key(), 1, ask("a"), secs(40)));
        // Asked for before its plan is due: sent by its caller, and not again when due.
        tokio::time::sleep_until(secs(5)).await;
        assert!(matches!(lines.obtain(&key(), 1, ask("c")), Obtained::Now));
        tokio::time::sleep_until(secs(39)).await;
        assert_eq!(*lock(&fake.asked), ["b"]);
        tokio::time::sleep_until(secs(41)).await;
        assert_eq!(*lock(&fake.asked), ["b", "a"]);
        // Their answers are kept for their PpioInstances.
        for n in ["a", "b"] {
            assert!(matches!(
                lines.obtain(&key(), 1, ask(n)),
                Obtained::Answer(_)
            ));
        }
        // The plans of a key no longer in use go with it.
        assert!(lines.plan(&key(), 1, ask("d"), secs(100)));
        lines.forget(1);
        tokio::time::sleep_until(secs(200)).await;
        assert_eq!(*lock(&fake.asked), ["b", "a"]);
        lines.forget(1);
        assert!(lines.is_empty());
    }
}
