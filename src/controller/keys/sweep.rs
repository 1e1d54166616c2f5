//! Observation by sweeps: for each API key in use, a walk over PPIO's paged LIST
//! (`GET /gpus/v2/instances`) observes every PpioInstance whose instance is on a page, so
//! that one request serves a page of instances instead of one.
//!
//! - The key's task ([`super::line`]: the one that serves the key's request line) walks the
//!   pages (following `next_cursor`, opaque, until `has_more` is false) every
//!   [`SWEEP_SHARE`] of the shortest refresh interval of the key's PpioInstances,
//!   and sooner when a PpioInstance waits for its first observation (debounced by
//!   [`SWEEP_DEBOUNCE`]), so a bulk apply is observed within seconds: a waiting PpioInstance
//!   is reconciled as soon as the page with its instance is read.
//! - Pages take the key's budget before any GET (the first class of the key's line,
//!   [`super::line`]).
//! - Only the items of instances some PpioInstance asked for are kept, each with the time its
//!   page was read. A walk over a changing list can skip items: an instance missing from a
//!   walk is looked up by a GET, never taken for gone.
//! - A failed page is tried again from its own cursor ([`PAGE_ATTEMPTS`]); a walk stops on a
//!   repeated cursor and after [`NOTHING_NEW_PAGES`] pages that bring nothing new (counted as
//!   `truncated`).
//! - A LIST error is never an instance's outcome. A walk that fails puts the key's
//!   PpioInstances on GETs (each once its item is stale) until a walk succeeds again; a LIST
//!   that answers 404, 405 or 501 on its first page is unavailable (a proxy, an older API), as
//!   is one that runs past twice the pages of its last complete walk: GETs until
//!   [`LIST_RETRY`]. Both are said once in the log and in `ppio_api_list_unavailable`. Only a
//!   429 reaches the instances, as the key's pause.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::budget::Budget;
use super::line::{Class, Lines, Walks};
use super::wakes::{Wake, Waker};
use crate::controller::schedule::{MAX_KEY_PAUSE, backoff, jitter};
use crate::lock;
use crate::metrics::{Metrics, TimestampGauge, unix_seconds};
use crate::ppio::{ApiKey, Instance, InstancePage, ListQuery, PpioApi, PpioError};

/// The default LIST page size.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// The largest page size asked for.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// A key's LIST is walked every this share of the shortest refresh interval of its
/// PpioInstances, so that a walk (which takes a while) still ends within every interval.
pub const SWEEP_SHARE: f64 = 0.8;
/// A walk asked for by a PpioInstance that waits starts this long after the first ask, so a
/// bulk apply is served by one walk.
pub const SWEEP_DEBOUNCE: Duration = Duration::from_millis(500);
/// A PpioInstance not yet fetched in full that asks with no other such ask this long before
/// it (and no walk asked for) is alone: a GET observes it, not a walk. A walk under way does
/// not count: it may have read the newcomer's page already, and one newcomer would then ask
/// for a whole walk after it.
pub const LONE_GAP: Duration = Duration::from_secs(2);
/// A LIST found unavailable is tried again after this long.
pub const LIST_RETRY: Duration = Duration::from_secs(3600);
/// A key's sweeps stop when none of its PpioInstances asked for this long.
pub const SWEEP_IDLE: Duration = Duration::from_secs(600);
/// The most pages one walk reads (a guard against a LIST that never ends).
pub const MAX_PAGES: u32 = 10_000;
/// A PpioInstance whose key's walks fail looks again after this long at the latest (or its
/// refresh interval, when longer). One that waits for a walk is woken by it, and otherwise
/// looks again after its refresh interval.
pub const SWEEP_WAIT: Duration = Duration::from_secs(10);
/// A PpioInstance observed from its key's LIST is reconciled when a walk finds its item
/// changed or missing, or its key's walks failing, and at its next full GET; with full GETs
/// off, after this many of its intervals.
pub const LISTED_RECHECK_INTERVALS: u32 = 10;

/// How PpioInstances are observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// Sweeps of each key's LIST, with GETs for what LIST items lack.
    List {
        /// The LIST page size.
        page_size: u32,
        /// Every instance is fetched in full by a GET about every this many of its refresh
        /// intervals.
        full_refresh_intervals: u32,
    },
    /// One GET per PpioInstance per interval.
    Get,
}

/// The default number of refresh intervals between two full GETs of an instance.
pub const DEFAULT_FULL_REFRESH_INTERVALS: u32 = 30;

impl Default for Observe {
    fn default() -> Self {
        Observe::List {
            page_size: DEFAULT_PAGE_SIZE,
            full_refresh_intervals: DEFAULT_FULL_REFRESH_INTERVALS,
        }
    }
}

/// What a sweep knows of one instance for a PpioInstance.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The instance's LIST item, read at this instant: its [`Sweeps::digest`], and the item
    /// itself unless the PpioInstance already applied that digest; `failing`: the key's walks
    /// fail or a 429 pauses them, so no newer item may come before this one goes stale.
    Listed {
        item: Option<Arc<Instance>>,
        digest: u64,
        at: Instant,
        failing: bool,
    },
    /// A walk that started after the PpioInstance asked did not list it (or its refresh
    /// interval is shorter than the key's sweeps): a GET decides.
    Missing,
    /// The key's last walk was rate limited: the key's pause is the instance's answer.
    Failed(PpioError),
    /// The key's LIST is unavailable: GET.
    Unavailable,
    /// Nothing fresh yet: a walk is on its way and wakes the PpioInstance when done.
    Wait,
}

/// What a key's sweeper uses.
pub(in crate::controller) struct Env {
    pub ppio: Arc<dyn PpioApi>,
    pub lines: Arc<Lines>,
    pub budget: Budget,
    pub metrics: Arc<Metrics>,
    pub page_size: u32,
    /// Full GETs every this many refresh intervals (0: none).
    pub full_refresh_intervals: u32,
    pub waker: Option<Waker>,
    /// Keys [`Sweeps::digest`] (at random: a crafted item cannot collide on purpose).
    pub digests: std::hash::RandomState,
    /// Every key's sweeps, by fingerprint; a sweeper that stops removes its own.
    pub keys: Mutex<HashMap<u64, Arc<KeySweep>>>,
}

/// Every key's sweeps.
pub struct Sweeps {
    env: Arc<Env>,
    /// Which key and instance id each watching PpioInstance takes its LIST item from.
    watching: Mutex<HashMap<Object, (u64, String)>>,
}

pub(in crate::controller) struct KeySweep {
    key: ApiKey,
    fingerprint: u64,
    /// Hashes item texts (keyed at random: a crafted item cannot collide on purpose).
    hasher: std::hash::RandomState,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Instance ids PpioInstances asked for.
    wanted: HashMap<String, Wanted>,
    /// The latest LIST item of each wanted id and when its page was read.
    items: HashMap<Arc<str>, Item>,
    /// Ids whose next listing is decoded even when unchanged: a PpioInstance needs the item
    /// after the walks stopped holding it.
    redecode: HashSet<String>,
    /// The instance id (`None`: none usable) of each item text of the last walk, by the
    /// text's hash: an item met again byte for byte is not decoded again.
    ids_by_hash: ByHash<Option<Arc<str>>>,
    /// Walks started so far: an item carries the number of the last walk that listed it.
    walks: u64,
    /// PpioInstances (namespace, name) waiting for a walk, by instance id, with when they
    /// asked.
    waiters: HashMap<String, Vec<(Object, Instant)>>,
    /// The PpioInstances that take each instance's LIST item, by instance id: a walk
    /// reconciles them when their item changed (or is missing), and otherwise only records
    /// that it is current, so an unchanged instance costs no reconcile.
    watchers: HashMap<String, Vec<Watcher>>,
    /// When the last successful walk ended (its last page was read).
    last_ok: Option<Instant>,
    /// After a failed walk: when the items of the last good one grow older than the
    /// shortest interval, and every watcher is reconciled to show the failure.
    fail_wake: Option<Instant>,
    /// Every watcher was reconciled for the current failure (or pause); reset by a
    /// successful walk, which reconciles them all again.
    fail_woken: bool,
    /// When lateness was last reported in the log.
    late_warned: Option<Instant>,
    /// The walk in progress started then.
    walking: Option<Instant>,
    /// The last finished walk: when it started, and its error.
    finished: Option<(Instant, Option<PpioError>)>,
    /// A walk is asked for before the next regular one, since then.
    asked: Option<Instant>,
    /// LIST is unavailable until then.
    unavailable_until: Option<Instant>,
    /// When the last PpioInstance not yet fetched in full first asked.
    last_newcomer: Option<Instant>,
    /// Pages read by the last walk.
    pages: u32,
    /// Pages read by the last walk that the LIST ended by itself.
    complete_pages: u32,
    /// The key's walks fail (or never end): its PpioInstances are observed by GETs until a
    /// walk succeeds again.
    list_failing: bool,
    /// Pages read so far by the walk in progress.
    walk_pages: u32,
    /// The period of the regular walks, as the sweeper last reckoned it ([`plan`]).
    period: Duration,
    /// The refresh interval the walks serve ([`plan`]): PpioInstances refreshed more often
    /// are observed by their own GETs.
    serves: Duration,
    /// How many times longer than configured full GETs are apart ([`plan`]; 0 before the
    /// first plan, read as 1).
    stretch: f64,
    /// GETs cost the key less than walks ([`plan`]): its PpioInstances are observed by GETs,
    /// and LIST is walked again only to measure it (every [`PLAN_MEASURE`]).
    by_gets: bool,
    /// The sweeper task ended (idle); a new one is started on the next ask.
    stopped: bool,
}

impl State {
    /// Walks fail or the key is paused: every watcher is reconciled to show it once the last
    /// good observations are older than the shortest interval (unless that is set already,
    /// or was done for this failure).
    fn arm_fail_wake(&mut self, now: Instant) {
        if self.fail_wake.is_none() && !self.fail_woken {
            let shortest = shortest_refresh(self);
            self.fail_wake = Some(self.last_ok.map_or(now, |t| t + shortest));
        }
    }

    /// Every PpioInstance that takes a LIST item of the key.
    fn watching_objects(&self) -> Vec<Object> {
        self.watchers
            .values()
            .flatten()
            .map(|w| w.object.clone())
            .collect()
    }
}

/// A PpioInstance's namespace and name.
type Object = (String, String);

/// A PpioInstance that takes an instance's LIST item.
struct Watcher {
    object: Object,
    /// Its `ppio_instance_last_success_timestamp_seconds` series, from the first walk that
    /// found its item unchanged on: later walks set it without looking it up.
    last_success: Option<TimestampGauge>,
}

/// A LIST item as last read.
struct Item {
    /// The item decoded, held for a refresh interval from the walk that found it new or
    /// changed (its PpioInstances apply it meanwhile, however long their reconciles queue);
    /// later only its digest is kept, and a PpioInstance that needs it again has the next
    /// walk decode it.
    item: Option<Arc<Instance>>,
    /// When `item` was decoded for its PpioInstances.
    held_since: Instant,
    /// When its page was read.
    at: Instant,
    /// The hash of its JSON text.
    hash: u64,
    /// [`Sweeps::digest`] of the item decoded.
    digest: u64,
    /// The number of the last walk that listed it.
    walk: u64,
}

/// A map keyed by a keyed hash (already spread, and not chosen by whoever wrote the text),
/// which needs no hashing of its own.
type ByHash<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Spread>>;

/// The hasher of [`ByHash`]: a `u64` key as its own hash.
#[derive(Default)]
struct Spread(u64);

impl std::hash::Hasher for Spread {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The most item texts a key's sweeps remember the instance ids of (a hostile LIST could
/// otherwise grow the memory without bound); past it, items are decoded every walk.
const MAX_REMEMBERED_ITEMS: usize = 200_000;

#[derive(Debug, Clone, Copy)]
struct Wanted {
    since: Instant,
    touched: Instant,
    refresh: Duration,
    /// A lone newcomer: observed by its GET, not by LIST items, until it was fetched in full
    /// (a walk under way may list it while its GET waits for the key's budget).
    lone: bool,
}

impl Sweeps {
    pub(in crate::controller) fn new(env: Env) -> Sweeps {
        Sweeps {
            env: Arc::new(env),
            watching: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `object` as taking the LIST item of `id` on the key of `sweep` (and no
    /// other item).
    fn watch(&self, sweep: &KeySweep, id: &str, object: (&str, &str)) {
        let entry = (object.0.to_string(), object.1.to_string());
        let mut watching = lock(&self.watching);
        if watching
            .get(&entry)
            .is_some_and(|(fp, old)| *fp == sweep.fingerprint && old == id)
        {
            return;
        }
        if let Some((fp, old)) = watching.insert(entry.clone(), (sweep.fingerprint, id.to_string()))
        {
            self.unwatch(fp, &old, &entry);
            if fp != sweep.fingerprint {
                // Its next full GET goes with the key it uses now.
                let object = Wake::new(object.1).within(object.0);
                self.env.lines.unplan(fp, &object);
            }
        }
        drop(watching);
        let mut st = lock(&sweep.state);
        let list = st.watchers.entry(id.to_string()).or_default();
        // Nearly always the one: room for exactly it (a push would make room for four).
        list.reserve_exact(1);
        list.push(Watcher {
            object: entry,
            last_success: None,
        });
    }

    /// The [`Sweeps::digest`] of the LIST item the sweeps of a key last read for `id`.
    pub(in crate::controller) fn listed_digest(&self, fingerprint: u64, id: &str) -> Option<u64> {
        let sweep = lock(&self.env.keys).get(&fingerprint).cloned()?;
        let st = lock(&sweep.state);
        st.items.get(id).map(|i| i.digest)
    }

    /// How many times longer than configured the full GETs of the key of `fingerprint` are
    /// apart (1 when its budget covers them, or it has no sweeps).
    pub(in crate::controller) fn full_refresh_stretch(&self, fingerprint: u64) -> f64 {
        let sweep = lock(&self.env.keys).get(&fingerprint).cloned();
        sweep.map_or(1.0, |s| lock(&s.state).stretch.max(1.0))
    }

    /// What tells two observations as LIST items show them apart: a keyed hash of the
    /// decoded item (not of its text: a field not decoded changes nothing).
    pub fn digest(&self, item: &Instance) -> u64 {
        digest(&self.env.digests, item)
    }

    fn unwatch(&self, fingerprint: u64, id: &str, object: &Object) {
        let sweep = lock(&self.env.keys).get(&fingerprint).cloned();
        if let Some(sweep) = sweep {
            let mut st = lock(&sweep.state);
            if let Some(list) = st.watchers.get_mut(id) {
                list.retain(|w| w.object != *object);
                if list.is_empty() {
                    st.watchers.remove(id);
                }
            }
        }
    }

    /// A reconcile of `object` started: a walk's wake for it was served.
    pub(in crate::controller) fn started(&self, object: &Wake) {
        if let Some(waker) = &self.env.waker {
            waker.started(object);
        }
    }

    /// Forgets a PpioInstance that no longer exists.
    pub(in crate::controller) fn forget(&self, namespace: &str, name: &str) {
        let object = (namespace.to_string(), name.to_string());
        let removed = lock(&self.watching).remove(&object);
        if let Some((fp, id)) = removed {
            self.unwatch(fp, &id, &object);
            self.env
                .lines
                .unplan(fp, &Wake::new(name).within(namespace));
        }
    }

    /// What the sweeps of `key` know of `id` for the PpioInstance `object` (namespace,
    /// name) refreshed every `refresh`, whose stored status shows the LIST item of digest
    /// `applied`. Registers the id with the key's sweeps (starting them on first use), and
    /// the object as a waiter when nothing fresh is known yet.
    ///
    /// A lone newcomer (`fetched`: false, its status holds no full observation yet), with no
    /// other within [`LONE_GAP`] and no walk asked for (one under way may be past its page),
    /// is answered [`Lookup::Missing`] until it was fetched: its GET gives a complete first
    /// status, for one request instead of a walk.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::controller) fn lookup(
        &self,
        key: &ApiKey,
        fingerprint: u64,
        id: &str,
        object: (&str, &str),
        refresh: Duration,
        applied: Option<u64>,
        fetched: bool,
    ) -> Lookup {
        let sweep = self.key_sweep(key, fingerprint);
        self.watch(&sweep, id, object);
        let now = Instant::now();
        let mut st = lock(&sweep.state);
        let wanted = st.want(id, refresh, fetched, now);
        if st.unavailable_until.is_some_and(|t| t > now) {
            return Lookup::Unavailable;
        }
        // Cheaper by GETs, or refreshed more often than the walks serve: a GET observes it.
        if st.by_gets || (!st.serves.is_zero() && refresh < st.serves) {
            return Lookup::Missing;
        }
        // A lone newcomer waits for its GET, whatever a walk lists meanwhile.
        if wanted.lone {
            return Lookup::Missing;
        }
        // Fresh for less than one interval: at its interval's end it is stale.
        if let Some(Item {
            item, at, digest, ..
        }) = st.items.get(id)
            && now.saturating_duration_since(*at) < refresh
        {
            if item.is_some() || applied == Some(*digest) {
                let paused = self.env.lines.paused_until(fingerprint).is_some();
                return Lookup::Listed {
                    item: item.clone().filter(|_| applied != Some(*digest)),
                    digest: *digest,
                    at: *at,
                    failing: paused || matches!(st.finished, Some((_, Some(_)))),
                };
            }
            // The item is needed but no longer held: the next walk decodes it.
            st.redecode.insert(id.to_string());
        }
        if st.list_failing {
            // The key's walks fail: a GET observes it until one succeeds again.
            return Lookup::Unavailable;
        }
        let answered = st
            .finished
            .as_ref()
            .filter(|(started, _)| *started > wanted.since);
        match answered {
            Some((_, Some(error))) if st.walking.is_none() => {
                return Lookup::Failed(error.clone());
            }
            // Not on a walk that started after this PpioInstance asked (or only on one older
            // than its interval, which it is refreshed faster than): a GET decides.
            Some((_, None)) if st.walking.is_none() && !st.items.contains_key(id) => {
                return Lookup::Missing;
            }
            _ => {}
        }
        if st.wait_for_walk(id, object, now) {
            drop(st);
            sweep.wake.notify_one();
        }
        Lookup::Wait
    }

    /// The sweeps of a key, started on first use (and again after they stopped, idle).
    fn key_sweep(&self, key: &ApiKey, fingerprint: u64) -> Arc<KeySweep> {
        let mut keys = lock(&self.env.keys);
        if let Some(s) = keys.get(&fingerprint)
            && !lock(&s.state).stopped
        {
            return s.clone();
        }
        let sweep = Arc::new(KeySweep {
            key: key.clone(),
            fingerprint,
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        keys.insert(fingerprint, sweep.clone());
        self.env.metrics.api.keys.set(keys.len() as i64);
        // The walks run in the key's task, alongside the requests its line serves.
        let walks = Arc::new(KeyWalks {
            env: self.env.clone(),
            sweep: sweep.clone(),
        });
        self.env.lines.attach(key, fingerprint, walks);
        sweep
    }
}

impl KeySweep {
    /// The key as logs and metrics name it: its fingerprint, never the key.
    fn label(&self) -> String {
        super::key_label(self.fingerprint)
    }
}

/// A key's sweeper stops: its state is freed (its items, the ids it remembers, its budget and
/// its metrics series), unless a new sweeper of the key took its place meanwhile.
fn retire(env: &Env, sweep: &Arc<KeySweep>) {
    let mut keys = lock(&env.keys);
    if keys
        .get(&sweep.fingerprint)
        .is_some_and(|s| Arc::ptr_eq(s, sweep))
    {
        keys.remove(&sweep.fingerprint);
        env.lines.forget(sweep.fingerprint);
        env.metrics.api.forget_key(&sweep.label());
    }
    env.metrics.api.keys.set(keys.len() as i64);
    drop(keys);
    *lock(&sweep.state) = State {
        stopped: true,
        ..State::default()
    };
}

impl Drop for Sweeps {
    /// The walks stop with the controller.
    fn drop(&mut self) {
        let keys: Vec<u64> = lock(&self.env.keys).keys().copied().collect();
        for fingerprint in keys {
            self.env.lines.detach(fingerprint);
        }
    }
}

/// How a key observes its PpioInstances, as [`plan`] chose it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Plan {
    /// Walk the LIST (`false`: one GET per PpioInstance, which costs less here).
    walk: bool,
    /// The period of the walks.
    period: Duration,
    /// The refresh interval the walks serve: a PpioInstance refreshed more often is observed
    /// by its own GETs, so one short interval does not set every walk's pace.
    serves: Duration,
    /// How many times longer than `--ppio-full-refresh-intervals` intervals full GETs are
    /// apart: 1, unless the budget left by walks and GETs cannot cover them at that pace
    /// ([`full_refresh_stretch`]).
    stretch: f64,
}

/// Full GETs of a walking key take at most this share of its budget, less what its walks and
/// its GETs by interval take; the rest stays for what cannot wait (transitions, newcomers,
/// changed items, refresh requests, "gone" to confirm).
pub const FULL_REFRESH_SHARE: f64 = 0.8;
/// Full GETs are stretched at most this many times (the budget is then spent on walks and
/// GETs by interval alone: the lateness metric says so).
pub const MAX_FULL_REFRESH_STRETCH: f64 = 16.0;

/// How many times longer full GETs must be apart so that `demand` (full GETs per second at
/// the configured pace) fits in what a budget of `per_second` leaves after `spent` (walks
/// and GETs by interval, per second): at least 1, at most [`MAX_FULL_REFRESH_STRETCH`].
fn full_refresh_stretch(per_second: Option<f64>, spent: f64, demand: f64) -> f64 {
    let Some(rate) = per_second.filter(|r| *r > 0.0) else {
        return 1.0;
    };
    let left = rate * FULL_REFRESH_SHARE - spent;
    if demand <= 0.0 || demand <= left {
        return 1.0;
    }
    if left <= demand / MAX_FULL_REFRESH_STRETCH {
        return MAX_FULL_REFRESH_STRETCH;
    }
    demand / left
}

/// A key changes between walking and GETs only when the other costs less by this factor.
pub const PLAN_MARGIN: f64 = 1.5;

/// How a key observes its PpioInstances: by the cheaper of walks and GETs, in requests per
/// second. A walk of the last walk's pages every [`SWEEP_SHARE`] of an interval `r` serves
/// the PpioInstances refreshed every `r` or less often; those refreshed more often take GETs.
/// The `r` of least cost is chosen among the intervals in use (walks never take more than
/// half of the key's budget). `walking`: the current choice, kept unless the other costs
/// less by [`PLAN_MARGIN`]. Before the first walk the pages are unknown: walk.
///
/// A walking key's full GETs (one per PpioInstance every `full_refresh` of its intervals)
/// stretch their period when the budget cannot cover them ([`full_refresh_stretch`]).
fn plan(st: &State, budget: Budget, walking: bool, full_refresh: u32) -> Plan {
    plan_for(
        st,
        st.complete_pages.max(st.pages),
        budget,
        walking,
        full_refresh,
    )
}

/// [`plan`] for a LIST of `pages` pages.
fn plan_for(st: &State, pages: u32, budget: Budget, walking: bool, full_refresh: u32) -> Plan {
    let by_budget = budget
        .per_second
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(2.0 * f64::from(pages.max(1)) / r))
        .unwrap_or_default();
    let mut refreshes: Vec<Duration> = st.wanted.values().map(|w| w.refresh).collect();
    refreshes.sort_unstable();
    let per_second = |r: Duration| 1.0 / r.as_secs_f64().max(0.001);
    let gets: f64 = refreshes.iter().map(|r| per_second(*r)).sum();
    // Walks every SWEEP_SHARE of `r`, and a GET each interval for the shorter intervals.
    let mut best: Option<(f64, Duration, Duration)> = None;
    let mut shorter = 0.0;
    for (i, r) in refreshes.iter().enumerate() {
        if i == 0 || refreshes[i - 1] != *r {
            let period = r.mul_f64(SWEEP_SHARE).max(by_budget);
            let cost = f64::from(pages.max(1)) / period.as_secs_f64().max(0.001) + shorter;
            if best.is_none_or(|(c, _, _)| cost < c) {
                best = Some((cost, period, *r));
            }
        }
        shorter += per_second(*r);
    }
    let default = Duration::from_secs(60);
    let (cost, period, serves) =
        best.unwrap_or((0.0, default.mul_f64(SWEEP_SHARE).max(by_budget), default));
    let walk = pages == 0
        || if walking {
            gets * PLAN_MARGIN >= cost
        } else {
            cost * PLAN_MARGIN < gets
        };
    // Full GETs of the PpioInstances the walks serve (by GETs alone, every GET is full).
    let full_gets: f64 = if walk && full_refresh > 0 {
        refreshes
            .iter()
            .filter(|r| **r >= serves)
            .map(|r| per_second(*r) / f64::from(full_refresh))
            .sum()
    } else {
        0.0
    };
    Plan {
        walk,
        period,
        serves,
        stretch: full_refresh_stretch(budget.per_second, cost, full_gets),
    }
}

/// The shortest refresh interval of the key's PpioInstances.
fn shortest_refresh(st: &State) -> Duration {
    st.wanted
        .values()
        .map(|w| w.refresh)
        .min()
        .unwrap_or(Duration::from_secs(60))
}

/// How often a key observed by GETs looks again at whether walking would cost less.
pub const PLAN_EVERY: Duration = Duration::from_secs(30);
/// How often a key observed by GETs walks its LIST to measure it.
pub const PLAN_MEASURE: Duration = Duration::from_secs(6 * 3600);

/// Chooses again between walks and GETs for the key ([`plan`]); says a change in the log, and
/// wakes every PpioInstance of the key to observe it the new way.
fn replan(env: &Env, sweep: &KeySweep, st: &mut State) {
    let chosen = plan(st, env.budget, !st.by_gets, env.full_refresh_intervals);
    st.period = chosen.period;
    st.serves = chosen.serves;
    restretch(env, sweep, st, chosen.stretch);
    if chosen.walk != st.by_gets {
        return;
    }
    st.by_gets = !chosen.walk;
    let label = sweep.label();
    info!(
        key = label.as_str(),
        ppioinstances = st.wanted.len(),
        pages = st.complete_pages.max(st.pages),
        "{}",
        if st.by_gets {
            "GETs cost this key less than walks over its LIST; observing its PpioInstances by GETs"
        } else {
            "walks over its LIST cost this key less than GETs; observing its PpioInstances by walks"
        }
    );
    if st.by_gets {
        st.items.clear();
    }
    st.waiters.clear();
    wake(env, sweep.fingerprint, st.watching_objects());
}

/// Records the key's full-refresh stretch when it changed: in the metric, and in the log when
/// full GETs start or stop being stretched, or their stretch changes by a quarter.
fn restretch(env: &Env, sweep: &KeySweep, st: &mut State, stretch: f64) {
    if st.stretch == stretch {
        return;
    }
    let was = st.stretch.max(1.0);
    st.stretch = stretch;
    let label = sweep.label();
    env.metrics.api.set_full_refresh_stretch(&label, stretch);
    let intervals = f64::from(env.full_refresh_intervals);
    if stretch > 1.0 && (was == 1.0 || (stretch / was - 1.0).abs() >= 0.25) {
        warn!(
            key = label.as_str(),
            ppioinstances = st.wanted.len(),
            every_intervals = format!("{:.1}", intervals * stretch).as_str(),
            per_second = env.budget.per_second.unwrap_or(0.0),
            "this API key's request budget cannot cover a full GET of each PpioInstance every {intervals} intervals besides its walks; full GETs are spread further apart (ppio_api_full_refresh_stretch_ratio); raise --ppio-requests-per-second or --ppio-full-refresh-intervals"
        );
    } else if stretch == 1.0 && was > 1.0 {
        info!(
            key = label.as_str(),
            "this API key's request budget covers its full GETs again"
        );
    }
}

/// A key's walks, as its task runs them.
struct KeyWalks {
    env: Arc<Env>,
    sweep: Arc<KeySweep>,
}

impl Walks for KeyWalks {
    fn run(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(run(self.env.clone(), self.sweep.clone()))
    }

    /// The walk it was in is over, and every PpioInstance of the key looks again.
    fn after_panic(&self) {
        let woken = {
            let mut st = lock(&self.sweep.state);
            st.walking = None;
            st.asked = Some(Instant::now());
            let mut woken = st.watching_objects();
            woken.extend(st.waiters.values().flatten().map(|(o, _)| o.clone()));
            woken
        };
        wake(&self.env, self.sweep.fingerprint, woken);
    }
}

/// A key's sweeper: walks when its period has passed or a PpioInstance waits, until none
/// asked for [`SWEEP_IDLE`].
async fn run(env: Arc<Env>, sweep: Arc<KeySweep>) {
    let mut failures = 0u32;
    let mut last_start: Option<Instant> = None;
    loop {
        let Some(next) = next_walk(&env, &sweep, last_start, failures) else {
            return;
        };
        if next > Instant::now() {
            // Look again when woken or at `next` (a pause may have come meanwhile).
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = sweep.wake.notified() => {}
            }
            continue;
        }
        let started = Instant::now();
        last_start = Some(started);
        {
            let mut st = lock(&sweep.state);
            st.walking = Some(started);
            st.asked = None;
        }
        let outcome = walk(&env, &sweep).await;
        failures = match &outcome {
            Walked::Ok | Walked::Truncated | Walked::Unavailable | Walked::Endless => 0,
            Walked::Failed(_) => failures.saturating_add(1),
        };
        finish(&env, &sweep, started, outcome);
    }
}

/// When the sweeper walks next (after the walk that started at `last_start`, and
/// `failures` failed walks in a row), or `None` once no PpioInstance asked for
/// [`SWEEP_IDLE`] (the sweeper retires). Replans the key, and reconciles every watcher once
/// the key's walks fail or pause for longer than the shortest interval.
fn next_walk(
    env: &Env,
    sweep: &Arc<KeySweep>,
    last_start: Option<Instant>,
    failures: u32,
) -> Option<Instant> {
    let mut st = lock(&sweep.state);
    if st.stopped {
        return None;
    }
    let now = Instant::now();
    let State {
        wanted, watchers, ..
    } = &mut *st;
    wanted.retain(|id, w| {
        watchers.contains_key(id)
            || now.saturating_duration_since(w.touched) < SWEEP_IDLE.max(3 * w.refresh)
    });
    if st.wanted.is_empty() && st.waiters.is_empty() {
        st.stopped = true;
        drop(st);
        debug!("no PpioInstance uses this key's sweeps any more; stopping them");
        retire(env, sweep);
        return None;
    }
    replan(env, sweep, &mut st);
    let regular = match last_start {
        // The first walk waits for an ask (debounced below).
        None => now + SWEEP_IDLE,
        Some(at) if failures > 0 => at + backoff(failures),
        // Walked only to measure the LIST; looked at again meanwhile.
        Some(at) if st.by_gets => (at + PLAN_MEASURE).min(now + PLAN_EVERY),
        Some(at) => at + st.period,
    };
    // Walks fail, or a 429 pauses the key: once the last good observations are older than
    // the shortest interval, every watcher is reconciled to show it.
    let paused_until = env.lines.paused_until(sweep.fingerprint);
    let failing = matches!(st.finished, Some((_, Some(_))));
    if paused_until.is_some_and(|until| until > now) || failing {
        st.arm_fail_wake(now);
    }
    if st.fail_wake.is_some_and(|at| at <= now) {
        st.fail_wake = None;
        st.fail_woken = true;
        wake(env, sweep.fingerprint, st.watching_objects());
    }
    let asked = st
        .asked
        .filter(|_| !st.by_gets)
        .map(|at| at + SWEEP_DEBOUNCE);
    let next = asked
        .map_or(regular, |a| a.min(regular))
        .max(st.unavailable_until.unwrap_or(now))
        .max(paused_until.unwrap_or(now));
    // Waking the watchers does not wait for the pause.
    Some(st.fail_wake.map_or(next, |at| next.min(at)))
}

/// How a walk ended.
enum Walked {
    /// The LIST said it ended.
    Ok,
    /// Cut short (a repeated cursor, pages that bring nothing new): what it listed counts,
    /// the rest is looked up by GET.
    Truncated,
    /// More pages than the last complete walk gives reason to expect: the LIST is taken as
    /// not usable, like [`Walked::Unavailable`].
    Endless,
    /// A page failed [`PAGE_ATTEMPTS`] times.
    Failed(PpioError),
    /// The first page said the LIST is not served here (404, 405, 501).
    Unavailable,
}

/// One walk over the key's LIST, page by page within the key's budget; keeps the items of
/// wanted ids (the same `Arc` when an item did not change). A failed page is tried again
/// ([`PAGE_ATTEMPTS`]) from its own cursor; a LIST that does not end is cut short.
async fn walk(env: &Env, sweep: &KeySweep) -> Walked {
    let mut query = ListQuery {
        limit: env.page_size.clamp(1, MAX_PAGE_SIZE),
        ..ListQuery::default()
    };
    let (this_walk, mut next_ids, cap) = {
        let mut st = lock(&sweep.state);
        st.walks += 1;
        st.walk_pages = 0;
        // About as many items as the last walk listed: sized once, not grown by rehashing.
        let next_ids: ByHash<Option<Arc<str>>> =
            ByHash::with_capacity_and_hasher(st.ids_by_hash.len(), Default::default());
        (st.walks, next_ids, page_cap(st.complete_pages))
    };
    let mut ends = WalkEnds::new(cap);
    let mut pages = 0u32;
    let cut = loop {
        let page = match read_page(env, sweep, &query, pages == 0).await {
            Ok(page) => page,
            Err(failed) => return failed,
        };
        pages += 1;
        let new_items = take_page(env, sweep, &page, this_walk, &mut next_ids, pages);
        let next = page.next_cursor.filter(|c| !c.is_empty());
        match next {
            Some(cursor) if page.has_more => {
                if let Some(cut) = ends.cut(pages, &cursor, new_items) {
                    break Some(cut);
                }
                if costs_more_than_gets(env, sweep, pages) {
                    break Some(WalkCut::Costly);
                }
                query.cursor = Some(cursor);
            }
            _ => break None,
        }
    };
    match cut {
        Some(WalkCut::Costly) => debug!(
            pages,
            "walking this key's LIST costs more than GETs of its PpioInstances; the walk stops here"
        ),
        Some(cut) => warn!(
            pages,
            reason = cut.reason(),
            "the PPIO LIST did not end; the walk stops here and the instances it did not list are looked up by GET"
        ),
        None => {}
    }
    end_walk(env, sweep, this_walk, next_ids, pages, cut.is_none());
    match cut {
        Some(WalkCut::PageCap) => Walked::Endless,
        // Stopped on purpose: the LIST answered well.
        Some(WalkCut::Costly) | None => Walked::Ok,
        Some(_) => Walked::Truncated,
    }
}

/// Tries for a page of a key's LIST that fails this many times in a row (a 429 counts too)
/// before the walk fails.
pub const PAGE_ATTEMPTS: u32 = 3;
/// The pause before trying a failed page again, doubled at each try.
pub const PAGE_RETRY: Duration = Duration::from_secs(1);
/// A walk stops after this many pages in a row that bring no item it has not seen yet
/// (empty pages too).
pub const NOTHING_NEW_PAGES: u32 = 3;

/// Reads one page within the key's budget (and its 429 pause), trying a failed page again
/// from the same cursor. `Err`: how the walk ends.
async fn read_page(
    env: &Env,
    sweep: &KeySweep,
    query: &ListQuery,
    first: bool,
) -> Result<InstancePage, Walked> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // A 429 met meanwhile (by a GET, or an earlier page) pauses the walk too: the line
        // hands out no slot before the pause ends.
        env.lines
            .slot(&sweep.key, sweep.fingerprint, Class::Page)
            .await;
        let start = Instant::now();
        let result = env.ppio.list_instances(&sweep.key, query).await;
        let class = result
            .as_ref()
            .map_or_else(PpioError::request_class, |_| "2xx");
        env.metrics
            .api
            .request_on("list_instances", class, start.elapsed().as_secs_f64());
        let e = match result {
            Ok(page) => return Ok(page),
            Err(e) if first && list_unavailable(&e) => return Err(Walked::Unavailable),
            Err(e) => e,
        };
        debug!(attempt, error = %e, "a page of the PPIO LIST failed");
        if let Some(after) = e.retry_after() {
            let until = Instant::now() + after.min(MAX_KEY_PAUSE);
            env.lines.pause(&sweep.key, sweep.fingerprint, until);
        }
        if attempt >= PAGE_ATTEMPTS {
            return Err(Walked::Failed(e));
        }
        if e.retry_after().is_none() {
            tokio::time::sleep(jitter(PAGE_RETRY.saturating_mul(1 << (attempt - 1)))).await;
        }
    }
}

/// Why a walk stopped before the LIST said it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkCut {
    /// More pages than the last complete walk gives reason to expect.
    PageCap,
    /// A cursor seen before on this walk.
    RepeatedCursor,
    /// [`NOTHING_NEW_PAGES`] pages in a row brought nothing not seen on this walk.
    NothingNew,
    /// The pages read so far already cost more than GETs of the key's PpioInstances: the
    /// key goes over to GETs ([`plan`]).
    Costly,
}

impl WalkCut {
    fn reason(self) -> &'static str {
        match self {
            WalkCut::PageCap => "more pages than the last complete walk read",
            WalkCut::RepeatedCursor => "a cursor seen before",
            WalkCut::NothingNew => "pages that bring nothing new",
            WalkCut::Costly => "walking costs more than GETs",
        }
    }
}

/// What tells a walk that the LIST will not end by itself.
struct WalkEnds {
    cap: u32,
    cursors: HashSet<String>,
    nothing_new: u32,
}

impl WalkEnds {
    fn new(cap: u32) -> WalkEnds {
        WalkEnds {
            cap,
            cursors: HashSet::new(),
            nothing_new: 0,
        }
    }

    /// After `pages` pages, the last of which brought `new_items` items not seen on this walk
    /// and points to `cursor`: whether to stop here.
    fn cut(&mut self, pages: u32, cursor: &str, new_items: usize) -> Option<WalkCut> {
        self.nothing_new = if new_items == 0 {
            self.nothing_new + 1
        } else {
            0
        };
        if self.nothing_new >= NOTHING_NEW_PAGES {
            Some(WalkCut::NothingNew)
        } else if !self.cursors.insert(cursor.to_string()) {
            Some(WalkCut::RepeatedCursor)
        } else if pages >= self.cap {
            Some(WalkCut::PageCap)
        } else {
            None
        }
    }
}

/// Whether the `pages` a walk has read so far already cost more than one GET per interval of
/// each PpioInstance of the key ([`plan_for`]). Worked out only once the pages (with the
/// plan's margin) outnumber the key's PpioInstances, so a key with many costs nothing here.
fn costs_more_than_gets(env: &Env, sweep: &KeySweep, pages: u32) -> bool {
    let st = lock(&sweep.state);
    if f64::from(pages) * PLAN_MARGIN <= st.wanted.len() as f64 {
        return false;
    }
    !plan_for(&st, pages, env.budget, true, env.full_refresh_intervals).walk
}

/// The most pages a walk reads: twice the last complete walk's and some (an account grows),
/// and never more than [`MAX_PAGES`].
fn page_cap(last_complete: u32) -> u32 {
    if last_complete == 0 {
        MAX_PAGES
    } else {
        last_complete
            .saturating_mul(2)
            .saturating_add(10)
            .min(MAX_PAGES)
    }
}

/// Takes one page's items: keeps those of wanted ids, wakes who waits for them and the
/// watchers of the items that changed. Returns how many items the walk had not seen yet.
fn take_page(
    env: &Env,
    sweep: &KeySweep,
    page: &InstancePage,
    this_walk: u64,
    next_ids: &mut ByHash<Option<Arc<str>>>,
    pages: u32,
) -> usize {
    let mut new_items = 0usize;
    let read_at = Instant::now();
    let mut woken = Vec::new();
    let read_secs = unix_seconds(std::time::SystemTime::now());
    let mut late = Duration::ZERO;
    {
        let mut st = lock(&sweep.state);
        st.walk_pages = pages;
        for text in page.item_texts() {
            let hash = sweep.hasher.hash_one(text);
            let (id, decoded) = st.id_of(hash, text);
            if remember(next_ids, hash, &id) {
                new_items += 1;
            }
            let Some(id) = id else {
                continue;
            };
            let Some(refresh) = st.wanted.get(&*id).map(|w| w.refresh) else {
                continue;
            };
            let listed = Listed {
                text,
                hash,
                decoded,
                read_at,
                refresh,
                wanted_again: !st.redecode.is_empty() && st.redecode.remove(&*id),
                walk: this_walk,
            };
            late = late.max(st.take_item(env, id, listed, read_secs, &mut woken));
        }
    }
    wake(env, sweep.fingerprint, woken);
    // Also when on time: the gauge falls back to 0 once the key catches up.
    report_lateness(env, sweep, late);
    new_items
}

impl State {
    /// The instance id of an item text (`None`: none usable), and the item when finding the
    /// id decoded it: the id of a text met on the last walk is known without decoding it.
    fn id_of(&self, hash: u64, text: &str) -> (Option<Arc<str>>, Option<Instance>) {
        match self.ids_by_hash.get(&hash) {
            Some(known) => (known.clone(), None),
            None => match Instance::from_item(text) {
                Some(item) => (usable_id(&item), Some(item)),
                None => (None, None),
            },
        }
    }

    /// Keeps a wanted instance's item as `listed` shows it, and adds to `woken` who waits
    /// for it and, when it changed, its watchers. Returns how late the item was (its last
    /// listing older than its interval).
    fn take_item(
        &mut self,
        env: &Env,
        id: Arc<str>,
        listed: Listed<'_>,
        read_secs: f64,
        woken: &mut Vec<Object>,
    ) -> Duration {
        let walk = listed.walk;
        let previous = self.items.get_mut(&*id);
        let late = previous.as_ref().map_or(Duration::ZERO, |old| {
            listed
                .read_at
                .saturating_duration_since(old.at + listed.refresh)
        });
        let Some((next, changed)) = listed.item(&env.digests, previous.as_deref()) else {
            // Listed, though not readable this time: the last item stays.
            if let Some(old) = previous {
                old.walk = walk;
            }
            return late;
        };
        match previous {
            Some(old) => *old = next,
            None => {
                self.items.insert(id.clone(), next);
            }
        }
        // Who waits for this instance is answered now, not at the walk's end.
        if !self.waiters.is_empty()
            && let Some(waiting) = self.waiters.remove(&*id)
        {
            woken.extend(waiting.into_iter().map(|(object, _)| object));
        }
        if let Some(watchers) = self.watchers.get_mut(&*id) {
            listed_again(env, watchers, changed, read_secs, woken);
        }
        late
    }
}

/// An item listed again for its `watchers`: changed, they are woken; unchanged, their
/// status stays as it is and only the time of their last observation moves.
fn listed_again(
    env: &Env,
    watchers: &mut [Watcher],
    changed: bool,
    read_secs: f64,
    woken: &mut Vec<Object>,
) {
    if changed {
        woken.extend(watchers.iter().map(|w| w.object.clone()));
        return;
    }
    for w in watchers {
        let (ns, name) = &w.object;
        w.last_success
            .get_or_insert_with(|| env.metrics.instances.last_success_series(ns, name))
            .set(read_secs);
    }
}

/// Notes the id of a text's hash for the next walk (up to [`MAX_REMEMBERED_ITEMS`]);
/// whether the text is new on this walk.
fn remember(next_ids: &mut ByHash<Option<Arc<str>>>, hash: u64, id: &Option<Arc<str>>) -> bool {
    if next_ids.len() < MAX_REMEMBERED_ITEMS {
        next_ids.insert(hash, id.clone()).is_none()
    } else {
        !next_ids.contains_key(&hash)
    }
}

/// A wanted instance's LIST item as a page shows it.
struct Listed<'a> {
    text: &'a str,
    /// The hash of `text`.
    hash: u64,
    /// The item, when finding its id decoded it already.
    decoded: Option<Instance>,
    read_at: Instant,
    /// The shortest refresh interval of its PpioInstances.
    refresh: Duration,
    /// A PpioInstance needs the item again (it was no longer held).
    wanted_again: bool,
    /// The number of this walk.
    walk: u64,
}

impl Listed<'_> {
    /// What the sweep keeps of the item, after `previous`, and whether it changed; `None`
    /// when the text is new and cannot be decoded.
    fn item(
        mut self,
        digests: &std::hash::RandomState,
        previous: Option<&Item>,
    ) -> Option<(Item, bool)> {
        let read_at = self.read_at;
        // An item decoded less than an interval ago is still held.
        let recent = previous
            .filter(|old| old.item.is_some())
            .is_some_and(|old| read_at.saturating_duration_since(old.held_since) < self.refresh);
        let (item, held_since, digest, changed) = match previous {
            // The same text: held while recent, or again when a PpioInstance asked.
            Some(old) if old.hash == self.hash => {
                let (item, since) = match (&old.item, self.wanted_again) {
                    (Some(held), _) if recent => (Some(held.clone()), old.held_since),
                    (Some(held), true) => (Some(held.clone()), read_at),
                    (None, true) => (self.decode().map(Arc::new), read_at),
                    _ => (None, old.held_since),
                };
                (item, since, old.digest, false)
            }
            _ => {
                let item = self.decode()?;
                let digest = digest(digests, &item);
                let changed = previous.is_none_or(|old| old.digest != digest);
                let fresh = changed || self.wanted_again;
                let held = (fresh || recent).then(|| Arc::new(item));
                let since = match previous {
                    Some(old) if !fresh => old.held_since,
                    _ => read_at,
                };
                (held, since, digest, changed)
            }
        };
        let next = Item {
            item,
            held_since,
            at: read_at,
            hash: self.hash,
            digest,
            walk: self.walk,
        };
        Some((next, changed))
    }

    /// The item decoded (once).
    fn decode(&mut self) -> Option<Instance> {
        self.decoded
            .take()
            .or_else(|| Instance::from_item(self.text))
    }
}

/// Ends a walk of `pages` pages: items it did not list are dropped, and their PpioInstances
/// are reconciled (a GET by id decides whether the instance is still there).
fn end_walk(
    env: &Env,
    sweep: &KeySweep,
    this_walk: u64,
    next_ids: ByHash<Option<Arc<str>>>,
    pages: u32,
    complete: bool,
) {
    let mut st = lock(&sweep.state);
    st.pages = pages;
    if complete {
        st.complete_pages = pages;
    }
    st.ids_by_hash = next_ids;
    st.items.retain(|_, item| item.walk == this_walk);
    let State {
        redecode,
        wanted,
        items,
        watchers,
        waiters,
        ..
    } = &mut *st;
    redecode.retain(|id| wanted.contains_key(id));
    // Who still waits is answered when the walk finishes (or by the next walk), not here.
    let missing: Vec<Object> = watchers
        .iter()
        .filter(|(id, _)| !items.contains_key(id.as_str()) && !waiters.contains_key(id.as_str()))
        .flat_map(|(_, watchers)| watchers.iter().map(|w| w.object.clone()))
        .collect();
    drop(st);
    wake(env, sweep.fingerprint, missing);
}

/// A keyed hash of an item as decoded (its `Debug` form names every decoded field).
fn digest(keys: &std::hash::RandomState, item: &Instance) -> u64 {
    struct Feed<'a>(&'a mut std::hash::DefaultHasher);
    impl std::fmt::Write for Feed<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            std::hash::Hasher::write(self.0, s.as_bytes());
            Ok(())
        }
    }
    let mut hasher = keys.build_hasher();
    // Writing to a hasher cannot fail.
    let _ = std::fmt::write(&mut Feed(&mut hasher), format_args!("{item:?}"));
    std::hash::Hasher::finish(&hasher)
}

/// The instance id of a LIST item, when it has one and a state (an item without a state
/// says nothing of its instance).
fn usable_id(item: &Instance) -> Option<Arc<str>> {
    let id = item.id.as_ref().map(|t| Arc::from(t.0.as_str()))?;
    item.state().is_some_and(|s| !s.is_empty()).then_some(id)
}

/// A LIST answer that says the call itself is not served here (not that an instance is
/// gone, or that PPIO failed).
fn list_unavailable(e: &PpioError) -> bool {
    e.call_not_served()
}

/// Records a walk's end, and wakes the PpioInstances it answers.
fn finish(env: &Env, sweep: &KeySweep, started: Instant, outcome: Walked) {
    let label = sweep.label();
    let mut st = lock(&sweep.state);
    st.walking = None;
    let now = Instant::now();
    let (error, woken_all) = match outcome {
        Walked::Ok => (None, st.listed(env, &label, true, now)),
        Walked::Truncated => (None, st.listed(env, &label, false, now)),
        Walked::Unavailable => (None, st.not_usable(env, &label, false, now)),
        Walked::Endless => (None, st.not_usable(env, &label, true, now)),
        Walked::Failed(e) => {
            st.walk_failed(env, &label, &e, now);
            (Some(e), Vec::new())
        }
    };
    st.finished = Some((started, error));
    let woken = st.answer_waiters(started, now);
    drop(st);
    wake(env, sweep.fingerprint, woken);
    wake(env, sweep.fingerprint, woken_all);
}

/// What a PpioInstance's lookup asks of a key's sweeps.
impl State {
    /// Notes that `id` is wanted (`refresh`: how often). A newcomer (not `fetched` yet) with
    /// no other within [`LONE_GAP`] and no walk asked for is lone until it was fetched.
    fn want(&mut self, id: &str, refresh: Duration, fetched: bool, now: Instant) -> Wanted {
        if let Some(w) = self.wanted.get_mut(id) {
            w.touched = now;
            w.refresh = refresh;
            w.lone &= !fetched;
            return *w;
        }
        let lone = !fetched
            && self.asked.is_none()
            && self
                .last_newcomer
                .is_none_or(|t| now.saturating_duration_since(t) >= LONE_GAP);
        if !fetched {
            self.last_newcomer = Some(now);
        }
        let w = Wanted {
            since: now,
            touched: now,
            refresh,
            lone,
        };
        self.wanted.insert(id.to_string(), w);
        w
    }

    /// `object` waits for the next walk to list `id`; whether that walk is to be asked for
    /// now (none is under way or asked for).
    fn wait_for_walk(&mut self, id: &str, object: (&str, &str), now: Instant) -> bool {
        let waiting = self.waiters.entry(id.to_string()).or_default();
        if !waiting
            .iter()
            .any(|((ns, name), _)| ns == object.0 && name == object.1)
        {
            waiting.reserve_exact(1);
            waiting.push(((object.0.to_string(), object.1.to_string()), now));
        }
        let ask = self.walking.is_none() && self.asked.is_none();
        if ask {
            self.asked = Some(now);
        }
        ask
    }
}

/// How a walk's end changes a key's sweeps.
impl State {
    /// The walk listed the account (`complete`) or what it could before it was cut short:
    /// who is to show the observation again.
    fn listed(&mut self, env: &Env, label: &str, complete: bool, now: Instant) -> Vec<Object> {
        env.metrics
            .api
            .sweep(if complete { "ok" } else { "truncated" });
        self.last_ok = Some(now);
        self.fail_wake = None;
        let was_failing = std::mem::take(&mut self.list_failing);
        // Back from a failure (or from GETs): every watcher shows the observation.
        let woken = if std::mem::take(&mut self.fail_woken) || was_failing {
            self.watching_objects()
        } else {
            Vec::new()
        };
        if self.unavailable_until.take().is_some() || was_failing {
            info!(
                key = label,
                "the PPIO LIST answers again; observing this key's PpioInstances by sweeps"
            );
        }
        // Every key walked has the series (0 while its LIST is served).
        env.metrics.api.set_list_unavailable(label, false);
        woken
    }

    /// The LIST is not served here, or did not end (`endless`): the key's PpioInstances go
    /// over to GETs (returned, to be woken) until [`LIST_RETRY`] has passed.
    fn not_usable(&mut self, env: &Env, label: &str, endless: bool, now: Instant) -> Vec<Object> {
        env.metrics
            .api
            .sweep(if endless { "truncated" } else { "unavailable" });
        if self.unavailable_until.is_none() {
            let why = if endless {
                "the PPIO LIST did not end within twice the pages of its last complete walk"
            } else {
                "the PPIO LIST call is not available (HTTP 404, 405 or 501)"
            };
            warn!(
                key = label,
                retry_in_s = LIST_RETRY.as_secs(),
                "{why}; observing this key's PpioInstances by one GET each instead"
            );
        }
        env.metrics.api.set_list_unavailable(label, true);
        self.unavailable_until = Some(now + LIST_RETRY);
        self.list_failing = false;
        self.items.clear();
        self.watching_objects()
    }

    /// A page failed every try. A 429: the key's pause is every PpioInstance's answer until
    /// it ends. Any other error is never an instance's outcome: GETs observe the key's
    /// PpioInstances (each as its LIST item goes stale) until a walk succeeds again.
    fn walk_failed(&mut self, env: &Env, label: &str, e: &PpioError, now: Instant) {
        env.metrics.api.sweep("error");
        if matches!(e, PpioError::RateLimited { .. }) {
            debug!(key = label, error = %e, "a walk over the PPIO LIST was rate limited");
        } else {
            if !self.list_failing {
                warn!(
                    key = label,
                    error = %e,
                    "walks over the PPIO LIST fail; observing this key's PpioInstances by one GET each until a walk succeeds again"
                );
            }
            env.metrics.api.set_list_unavailable(label, true);
            self.list_failing = true;
        }
        self.arm_fail_wake(now);
    }

    /// Who asked before the walk that `started` (their instances were on no page: a GET
    /// decides), or everyone waiting when the LIST is not usable; the others wait for the
    /// next walk, asked for here.
    fn answer_waiters(&mut self, started: Instant, now: Instant) -> Vec<Object> {
        let unavailable = self.unavailable_until.is_some() || self.list_failing;
        let mut woken = Vec::new();
        self.waiters.retain(|_, waiting| {
            waiting.retain(|(object, asked)| {
                let answered = *asked < started || unavailable;
                if answered {
                    woken.push(object.clone());
                }
                !answered
            });
            !waiting.is_empty()
        });
        if !self.waiters.is_empty() && self.asked.is_none() {
            self.asked = Some(now);
        }
        woken
    }
}

/// Records how late the observations of a key's walk came (past their interval), and says
/// so in the log at most every five minutes when it is late by more than a tenth.
fn report_lateness(env: &Env, sweep: &KeySweep, late: Duration) {
    let label = sweep.label();
    env.metrics.api.lateness(&label, late);
    if late.is_zero() {
        return;
    }
    let mut st = lock(&sweep.state);
    let shortest = shortest_refresh(&st);
    if !super::worth_saying(late, shortest, &mut st.late_warned) {
        return;
    }
    warn!(
        key = label.as_str(),
        late_s = late.as_secs(),
        per_second = env.budget.per_second.unwrap_or(0.0),
        "observations of the PpioInstances using this API key come late: its request budget cannot walk its LIST within their refresh intervals; raise --ppio-requests-per-second or their refreshInterval"
    );
}

/// Reconciles these PpioInstances now (after those asked for before them).
fn wake(env: &Env, fingerprint: u64, objects: Vec<Object>) {
    if let Some(waker) = &env.waker {
        for (ns, name) in objects {
            waker.wake(ObjectRef::new(&name).within(&ns), fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_gets_stretch_only_when_what_walks_leave_cannot_cover_them() {
        // 10/s: 8 for walks, GETs by interval and full GETs.
        let budget = Some(10.0);
        // 10,000 PpioInstances at 60 s, a full GET every 30 intervals (5.6/s), walks of 100
        // pages every 48 s (2.1/s): covered.
        assert_eq!(
            full_refresh_stretch(budget, 100.0 / 48.0, 10_000.0 / 1800.0),
            1.0
        );
        // 13,000: 7.2/s of full GETs with 5.3/s left: 1.36 times further apart.
        let stretch = full_refresh_stretch(budget, 130.0 / 48.0, 13_000.0 / 1800.0);
        assert!((stretch - 1.363).abs() < 0.01, "{stretch}");
        // Nothing left: stretched as far as it goes; no budget set or nothing to fetch: 1.
        assert_eq!(
            full_refresh_stretch(budget, 9.0, 1.0),
            MAX_FULL_REFRESH_STRETCH
        );
        assert_eq!(full_refresh_stretch(None, 9.0, 100.0), 1.0);
        assert_eq!(full_refresh_stretch(budget, 9.0, 0.0), 1.0);
    }
}
