//! The controller, in two rooms:
//!
//! - [`keys`]: what each API key owns, shared by its PpioInstances: its budget, its walks over
//!   the LIST (and their plan), its books, the wakes its walks send, and the reconcile
//!   permits shared between keys;
//! - the per-object side, one reconcile step by step: [`schedule`] (when to poll: intervals,
//!   transitions, backoff, jitter), [`credentials`] (the API key of a PpioInstance), [`poll`]
//!   (one poll of PPIO and what it decides), [`apply`] (the status write, only when the status
//!   changed), [`events`] (a log line and an Event per transition), [`export`] (connection
//!   Secrets and Services), [`cached`] (a PpioInstance as the watch cache keeps it).
//!
//! This module holds the controller's shared state and the entry points kube's `Controller`
//! calls. The per-object side asks the keys; the keys never call back into it.

pub mod apply;
pub mod cached;
pub mod credentials;
pub mod events;
pub mod export;
pub mod keys;
pub mod poll;
pub mod schedule;

pub use keys::{LATENESS_REPORT_GAP, LATENESS_WARNING};
pub use keys::{budget, ledger, line, permits, sweep, wakes};
use keys::{key_label, worth_saying};

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, debug, warn};

use crate::crd::{PpioInstance, REFRESH_ANNOTATION};
use crate::duration::parse_refresh_interval;
use crate::lock;
use crate::metrics::Metrics;
use crate::ppio::{ApiKey, PpioApi};
use crate::vocabulary::condition;
pub use cached::CachedInstance;

pub use budget::{Budget, DEFAULT_BURST, DEFAULT_REQUESTS_PER_SECOND};
pub use events::{Transition, transitions};
pub use ledger::MoneySettings;
pub use line::Lines;
pub use poll::{History, Polled, Seen, poll};
pub use schedule::{
    BACKOFF_BASE, BACKOFF_MAX, CONFIRM_GONE, GONE_POLL, MAX_KEY_PAUSE, MIN_REFRESH_GAP,
    TRANSITION_POLL, backoff, jitter, poll_interval, seed_jitter,
};
pub use sweep::{DEFAULT_FULL_REFRESH_INTERVALS, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Observe};
pub use wakes::{Wake, Waker};

use schedule::{Decision, far_future};

/// The wall-clock time of the instant `at` (in the past).
fn wall_time(at: Instant) -> std::time::SystemTime {
    std::time::SystemTime::now() - Instant::now().saturating_duration_since(at)
}

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "ppio-operator";

/// Operator-wide settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Used when `spec.refreshInterval` is omitted.
    pub default_refresh: Duration,
    /// Used when `spec.credentialsSecretRef` is omitted.
    pub default_key: Option<ApiKey>,
    /// The namespaces whose PpioInstances may use `default_key`; `None`: every watched
    /// namespace.
    pub default_key_namespaces: Option<BTreeSet<String>>,
    /// The namespaces whose credentials Secrets may be used; `None`: every namespace.
    pub credentials_namespaces: Option<BTreeSet<String>>,
    /// The request budget shared by every PpioInstance that uses the same API key.
    pub budget: Budget,
    /// How instances are observed: sweeps of each key's LIST (the default), or one GET per
    /// PpioInstance.
    pub observe: Observe,
    /// How money (catalogue, bills, balance) is read and shown.
    pub money: ledger::MoneySettings,
    /// What may be exported (connection Secrets, Services).
    pub exports: crate::export::ExportSettings,
}

/// What the controller remembers per PpioInstance between reconciles.
#[derive(Debug, Clone)]
struct Tracked {
    /// The generation last acted on.
    generation: Option<i64>,
    /// When the next poll is due; a reconcile triggered earlier (e.g. by our own status
    /// write) polls nothing.
    next_poll: Instant,
    /// Consecutive failures, for the error backoff.
    failures: u32,
    /// The refresh annotation value last acted on.
    handled_refresh: Option<String>,
    /// When a poll last ran because of the refresh annotation.
    last_forced: Option<Instant>,
    /// The last poll answered "not found" and a second one is due to confirm it.
    gone_suspected: bool,
    /// When the next poll is due by its interval (not counting a wait for the budget).
    due: Option<Instant>,
    /// The last observation.
    seen: Seen,
}

/// Shared state of the controller.
pub struct Context {
    pub client: Client,
    pub ppio: Arc<dyn PpioApi>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Publishes Events; `None` in tests that do not look at Events.
    recorder: Option<kube::runtime::events::Recorder>,
    tracked: Mutex<HashMap<String, Tracked>>,
    key_hasher: RandomState,
    /// When set, the phases of the full-refresh slots come from this seed instead of the
    /// per-process random one (tests that replay a run; see [`Context::with_phase_seed`]).
    phase_seed: Option<u64>,
    /// Each key's request line: its budget, and the GETs that wait for it.
    lines: Arc<Lines>,
    /// Each key's walks over its LIST.
    sweeps: sweep::Sweeps,
    /// Each key's catalogue, bills and balance.
    ledger: ledger::Ledger,
    /// Each PpioInstance's exports, as last written.
    exports: export::Exports,
    /// Reconciles at work at once, shared between credentials sources and started in the
    /// order asked within each; `None`: no limit.
    permits: Option<Arc<permits::Permits>>,
    /// The credentials Secrets read lately.
    secrets: credentials::SecretCache,
    /// Per API key (by fingerprint): when its lateness was last reported.
    lateness_reported: Mutex<HashMap<u64, Option<Instant>>>,
    /// The origin of every PpioInstance's full-refresh slots.
    epoch: Instant,
}

impl Context {
    pub fn new(
        client: Client,
        ppio: Arc<dyn PpioApi>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Context {
        let lines = lines(&ppio, &settings, &metrics, None);
        let sweeps = sweeps(&ppio, &lines, &settings, &metrics, None);
        let ledger = ledger(&ppio, &lines, &settings, &metrics, None);
        Context {
            ledger,
            exports: export::Exports::default(),
            client,
            ppio,
            settings,
            metrics,
            recorder: None,
            tracked: Mutex::new(HashMap::new()),
            lines,
            sweeps,
            key_hasher: RandomState::new(),
            phase_seed: None,
            secrets: credentials::SecretCache::default(),
            lateness_reported: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            permits: None,
        }
    }

    /// At most `n` reconciles at work at once (0: no limit), started in the order the
    /// controller asks for them within each credentials source, the sources in turn, and
    /// none holding the last eighth ([`permits`]). kube's own limit starts what waits in no
    /// particular order, so that under load some PpioInstances wait far longer than others.
    pub fn with_concurrency(mut self, n: u16) -> Context {
        self.permits = (n > 0).then(|| permits::Permits::new(usize::from(n)));
        self
    }

    /// Stopping: reconciles that wait for their turn end without starting.
    pub fn stop_reconciling(&self) {
        if let Some(permits) = &self.permits {
            permits.close();
        }
    }

    /// Reconciles a PpioInstance through `waker` as soon as a walk over its key's LIST
    /// answers it (without, it comes back after its refresh interval).
    pub fn with_waker(mut self, waker: Waker) -> Context {
        self.lines = lines(
            &self.ppio,
            &self.settings,
            &self.metrics,
            Some(waker.clone()),
        );
        self.sweeps = sweeps(
            &self.ppio,
            &self.lines,
            &self.settings,
            &self.metrics,
            Some(waker.clone()),
        );
        self.ledger = ledger(
            &self.ppio,
            &self.lines,
            &self.settings,
            &self.metrics,
            Some(waker),
        );
        self
    }

    /// Reads and shows money with `money` instead of the settings' own.
    pub fn with_money(mut self, money: ledger::MoneySettings) -> Context {
        self.settings.money = money;
        let waker = self.ledger.waker();
        self.ledger = ledger(
            &self.ppio,
            &self.lines,
            &self.settings,
            &self.metrics,
            waker,
        );
        self
    }

    /// Reads credentials Secrets again after `ttl` (tests; the default is
    /// [`credentials::SECRET_TTL`]).
    pub fn with_secret_ttl(mut self, ttl: Duration) -> Context {
        self.secrets = credentials::SecretCache::with_ttl(ttl);
        self
    }

    /// Full-refresh slots whose phases follow `seed` rather than a random per-process one:
    /// the same seed gives the same slots, run after run. For tests; a running operator keeps
    /// the random phases (a tenant cannot pick names that bunch their full GETs).
    pub fn with_phase_seed(mut self, seed: u64) -> Context {
        self.phase_seed = Some(seed);
        self
    }

    /// Publishes Events through `recorder`.
    pub fn with_recorder(mut self, recorder: kube::runtime::events::Recorder) -> Context {
        self.recorder = Some(recorder);
        self
    }

    fn fingerprint(&self, key: &ApiKey) -> u64 {
        self.key_hasher.hash_one(key)
    }

    /// The period of a PpioInstance's full GETs: `intervals` of its `refresh` interval,
    /// stretched when its key's budget cannot cover them ([`sweep::Sweeps`]).
    fn full_refresh_period(&self, fingerprint: u64, refresh: Duration, intervals: u32) -> Duration {
        refresh
            .saturating_mul(intervals)
            .mul_f64(self.sweeps.full_refresh_stretch(fingerprint))
    }

    /// When the next full GET of `instance` is due: its own slot of the full-refresh
    /// `period` (a phase from its namespace and name), at least `min_gap` after `at`.
    fn full_refresh_slot(
        &self,
        instance: &PpioInstance,
        at: Instant,
        min_gap: Duration,
        period: Duration,
    ) -> Instant {
        let object = (
            instance.meta().namespace.as_deref(),
            instance.meta().name.as_deref(),
        );
        let hash = match self.phase_seed {
            Some(seed) => std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
                .hash_one((seed, object)),
            None => self.key_hasher.hash_one(object),
        };
        // The top 53 bits as a fraction in [0, 1).
        let phase = (hash >> 11) as f64 / (1u64 << 53) as f64;
        schedule::full_refresh_slot(self.epoch, at, min_gap, period, phase)
    }

    /// Records how late a poll of a key runs; says so in the log (naming the key's
    /// fingerprint, never the key) when the key's budget cannot keep its PpioInstances at
    /// their intervals.
    fn record_lateness(&self, fingerprint: u64, late: Duration, refresh: Duration) {
        let label = key_label(fingerprint);
        self.metrics.api.lateness(&label, late);
        let mut reported = lock(&self.lateness_reported);
        if !reported.contains_key(&fingerprint) {
            // Keys retired since (rotated away) are not remembered for ever.
            let now = Instant::now();
            reported.retain(|_, said| {
                said.is_some_and(|t| now.saturating_duration_since(t) < LATENESS_REPORT_GAP)
            });
        }
        if !worth_saying(late, refresh, reported.entry(fingerprint).or_default()) {
            return;
        }
        warn!(
            key = label.as_str(),
            late_s = late.as_secs(),
            per_second = self.settings.budget.per_second.unwrap_or(0.0),
            "polls of the PpioInstances using this API key run late: its request budget cannot keep them at their refresh intervals; raise --ppio-requests-per-second or their refreshInterval"
        );
    }

    /// Until when a 429 pauses every request of `key`, if it does now (the key's line keeps
    /// the pause).
    fn key_pause(&self, key: &ApiKey) -> Option<Instant> {
        self.lines.paused_until(self.fingerprint(key))
    }

    fn pause_key(&self, key: &ApiKey, until: Instant) {
        self.lines.pause(key, self.fingerprint(key), until);
    }

    fn tracked(&self, key: &str) -> Option<Tracked> {
        lock(&self.tracked).get(key).cloned()
    }

    fn set_tracked(&self, key: &str, t: Tracked) {
        let failing = t.failures > 0;
        let mut tracked = lock(&self.tracked);
        let was_failing = match tracked.get_mut(key) {
            Some(old) => std::mem::replace(old, t).failures > 0,
            None => {
                tracked.insert(key.to_string(), t);
                false
            }
        };
        self.count_backoff(was_failing, failing);
    }

    fn forget(&self, key: &str) {
        if let Some((ns, name)) = key.split_once('/') {
            self.sweeps.forget(ns, name);
            self.ledger.forget(ns, name);
            self.exports.forget(ns, name);
        }
        let removed = lock(&self.tracked).remove(key);
        self.count_backoff(removed.is_some_and(|t| t.failures > 0), false);
    }

    /// Keeps `ppio_backoffs` (PpioInstances in error backoff) as one of them changes.
    fn count_backoff(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => self.metrics.controller.backoffs.inc(),
            (true, false) => self.metrics.controller.backoffs.dec(),
            _ => 0,
        };
    }

    /// How many API keys hold a request line (their budget, and the GETs that wait or are
    /// planned on them).
    pub fn key_lines(&self) -> usize {
        self.lines.len()
    }

    /// Drops what is remembered (and the metrics series) of a deleted PpioInstance.
    pub fn forget_deleted(&self, namespace: &str, name: &str) {
        self.forget(&format!("{namespace}/{name}"));
        self.metrics.instances.forget(namespace, name);
    }

    /// Drops what is remembered (and the metrics series) of PpioInstances that no longer
    /// exist. `exists` answers for a `namespace/name` key.
    pub fn forget_missing(&self, exists: impl Fn(&str, &str) -> bool) {
        let gone: Vec<String> = lock(&self.tracked)
            .keys()
            .filter(|k| {
                let (ns, name) = k.split_once('/').unwrap_or_default();
                !exists(ns, name)
            })
            .cloned()
            .collect();
        for key in gone {
            let (ns, name) = key.split_once('/').unwrap_or_default();
            self.forget_deleted(ns, name);
        }
    }
}

/// The request lines of a controller.
fn lines(
    ppio: &Arc<dyn PpioApi>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    waker: Option<Waker>,
) -> Arc<Lines> {
    Arc::new(Lines::new(line::Env {
        ppio: ppio.clone(),
        budget: settings.budget,
        metrics: metrics.clone(),
        waker,
    }))
}

/// The sweeps of a controller.
fn sweeps(
    ppio: &Arc<dyn PpioApi>,
    lines: &Arc<Lines>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    waker: Option<Waker>,
) -> sweep::Sweeps {
    sweep::Sweeps::new(sweep::Env {
        ppio: ppio.clone(),
        lines: lines.clone(),
        budget: settings.budget,
        metrics: metrics.clone(),
        page_size: match settings.observe {
            Observe::List { page_size, .. } => page_size,
            Observe::Get => DEFAULT_PAGE_SIZE,
        },
        full_refresh_intervals: match settings.observe {
            Observe::List {
                full_refresh_intervals,
                ..
            } => full_refresh_intervals,
            Observe::Get => 0,
        },
        waker,
        digests: RandomState::new(),
        keys: Mutex::new(HashMap::new()),
    })
}

/// The books of a controller.
fn ledger(
    ppio: &Arc<dyn PpioApi>,
    lines: &Arc<Lines>,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    waker: Option<Waker>,
) -> ledger::Ledger {
    ledger::Ledger::new(ledger::Env {
        ppio: ppio.clone(),
        lines: lines.clone(),
        metrics: metrics.clone(),
        waker,
        settings: settings.money.clone(),
    })
}

/// Errors that make a reconcile retry later without touching status (the Kubernetes API
/// failed; PPIO errors are reported in status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status failed: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("reading the credentials Secret failed: {0}")]
    ReadSecret(#[source] kube::Error),
    /// Another PpioInstance's read of the same Secret failed moments ago: not asked again yet.
    #[error("reading the credentials Secret failed moments ago; it is read again shortly")]
    ReadSecretFailedLately,
    #[error("{0} did not finish within {KUBE_CALL_TIMEOUT:?}")]
    Timeout(&'static str),
}

/// Every call to the Kubernetes API from a reconcile is bounded by this.
pub const KUBE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The reconcile entry point for [`kube::runtime::Controller`]. With a concurrency limit
/// ([`Context::with_concurrency`]), at most that many reconciles run at once, shared between
/// the sources of API keys ([`permits`]) and started in the order the controller asked for
/// them within each; one that waits holds only its place in line.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<CachedInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _permit = match &ctx.permits {
        Some(permits) => match permits.acquire(lane(&obj)).await {
            Some(permit) => Some(permit),
            // Stopping: what still waits does not start.
            None => return Ok(Action::await_change()),
        },
        None => None,
    };
    // Boxed: a reconcile waiting above takes a few words, not a whole reconcile's state.
    Box::pin(reconcile_admitted(obj, ctx)).await
}

/// Where a PpioInstance's API key comes from: its credentials Secret, or the default key
/// (also for an object that does not decode: its reconcile makes no call).
fn lane(obj: &DeserializeGuard<CachedInstance>) -> permits::Lane {
    let instance = obj.0.as_ref().ok()?;
    let secret = instance.spec.credentials_secret_ref.as_ref()?;
    Some((
        instance.metadata.namespace.clone().unwrap_or_default(),
        secret.name.clone(),
    ))
}

/// A reconcile that may start now.
async fn reconcile_admitted(
    obj: Arc<DeserializeGuard<CachedInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.sweeps.started(&ObjectRef::from_obj(&*obj));
    let decoded = obj.0.as_ref().map(CachedInstance::instance);
    let instance = match &decoded {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) => {
            // Not expected: the cache wrote this text from a decoded status.
            warn!(
                namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
                ppioinstance = obj.meta().name.as_deref().unwrap_or_default(),
                error = %e,
                "skipping a PpioInstance whose cached status does not decode"
            );
            return Ok(Action::await_change());
        }
        Err(invalid) => {
            // One malformed object must not stop the others: report it and wait for an edit.
            warn!(
                namespace = invalid.metadata.namespace.as_deref().unwrap_or_default(),
                ppioinstance = invalid.metadata.name.as_deref().unwrap_or_default(),
                error = %invalid.error,
                "skipping a PpioInstance that does not match the CRD schema; fix or re-create it"
            );
            return Ok(Action::await_change());
        }
    };
    let span = tracing::info_span!(
        "reconcile",
        namespace = instance.namespace().unwrap_or_default(),
        ppioinstance = instance.name_any(),
        instance_id = instance.spec.instance_id.as_str(),
    );
    let _timer = ctx.metrics.controller.reconcile_timer();
    let result = reconcile_instance(instance, &ctx).instrument(span).await;
    ctx.metrics.controller.reconciled(result.is_ok());
    result
}

/// The error policy: retry after the per-object backoff.
pub fn error_policy(
    obj: Arc<DeserializeGuard<CachedInstance>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let Ok(instance) = &obj.0 else {
        return Action::await_change();
    };
    let key = object_key(instance);
    let mut t = ctx.tracked(&key).unwrap_or(Tracked {
        generation: instance.meta().generation,
        next_poll: Instant::now(),
        failures: 0,
        handled_refresh: None,
        last_forced: None,
        gone_suspected: false,
        due: None,
        seen: Seen::default(),
    });
    t.failures += 1;
    // The status may not show the last observation.
    t.seen.listed = None;
    let delay = backoff(t.failures);
    // Watch events during the backoff do not cut it short.
    t.next_poll = Instant::now() + delay;
    ctx.set_tracked(&key, t);
    warn!(
        namespace = instance.namespace().unwrap_or_default(),
        ppioinstance = instance.name_any(),
        error = %error,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn object_key(instance: &impl Resource) -> String {
    format!(
        "{}/{}",
        instance.namespace().unwrap_or_default(),
        instance.name_any()
    )
}

/// The refresh interval a PpioInstance asks for: `spec.refreshInterval`, else `default` (also
/// when the spec's is invalid, which the CRD's validation should have refused).
pub(super) fn refresh_interval(instance: &PpioInstance, default: Duration) -> Duration {
    match instance.spec.refresh_interval.as_deref() {
        None => default,
        Some(text) => parse_refresh_interval(text).unwrap_or_else(|e| {
            warn!(error = %e, "spec.refreshInterval is invalid; using the default refresh interval");
            default
        }),
    }
}

/// One PpioInstance's reconcile: whether a poll is due (and when), the poll, and what the
/// controller remembers of it for the next reconcile.
async fn reconcile_instance(instance: &PpioInstance, ctx: &Context) -> Result<Action, Error> {
    let key = object_key(instance);
    if instance.meta().deletion_timestamp.is_some() {
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    let generation = instance.meta().generation;
    let refresh = refresh_interval(instance, ctx.settings.default_refresh);
    let now = Instant::now();
    let previous = ctx.tracked(&key);
    let same_spec = previous.as_ref().filter(|t| t.generation == generation);
    let requested = refresh_request(instance).map(crate::status::refresh_token);
    let requested = requested.as_deref();
    let refresh_now = refresh_not_handled(instance, previous.as_ref(), requested);
    let due = schedule::Due {
        now,
        next_poll: same_spec.map(|t| t.next_poll),
        refresh_requested: refresh_now,
        last_forced: previous.as_ref().and_then(|t| t.last_forced),
        observed_before_start: previous.is_none() && already_observed(instance),
        refresh,
    };
    let object = (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    );
    if same_spec.is_some() && shown_again_is_due(ctx, &object, now) {
        // The key's catalogue or bills changed, the Expiring condition changes by itself now,
        // or an export is to be checked (or tried) again: the stored observation is shown
        // again with them (no PPIO request).
        apply::rerender(instance, ctx).await?;
    }
    match schedule::decide(&due, schedule::random_in(0.0..1.0)) {
        Decision::Wait(until) => {
            // Not due yet (a watch event, our own status write), or a refresh request too
            // soon after the last one (annotation spam cannot spend the key's budget).
            return Ok(Action::requeue(
                until.min(own_change(ctx, &object, now)) - now,
            ));
        }
        Decision::FirstPoll(at) => {
            // First sight since start-up of an object already observed at this generation:
            // spread the first polls over the first interval instead of polling at once.
            ctx.set_tracked(&key, Tracked::first_poll(generation, at));
            debug!(
                delay_ms = (at - now).as_millis() as u64,
                "first poll scheduled"
            );
            return Ok(Action::requeue(at - now));
        }
        Decision::Poll if refresh_now => debug!("refresh requested"),
        Decision::Poll => {}
    }
    let history = history(previous.as_ref(), generation, refresh_now);
    let due_before = history.due;
    let polled = poll(instance, ctx, refresh, history).await?;
    let next = polled.next;
    let asked = Asked {
        refresh_now,
        requested,
        due_before,
    };
    ctx.set_tracked(
        &key,
        Tracked::after_poll(previous, polled, generation, now, asked),
    );
    Ok(next_action(ctx, &object, now, next))
}

/// Whether the refresh annotation's token `requested` asks for a refresh that neither the
/// status nor this process handled yet.
fn refresh_not_handled(
    instance: &PpioInstance,
    previous: Option<&Tracked>,
    requested: Option<&str>,
) -> bool {
    let shown = instance.status.as_ref();
    requested.is_some()
        && requested != shown.and_then(|s| s.last_handled_refresh.as_deref())
        && requested != previous.and_then(|t| t.handled_refresh.as_deref())
}

/// When a PpioInstance polled now is reconciled again: at its `next` poll, or sooner when
/// the Expiring condition changes by itself or an export is to be checked again.
fn next_action(
    ctx: &Context,
    object: &(String, String),
    now: Instant,
    next: Option<Duration>,
) -> Action {
    let money_next = own_change(ctx, object, now).saturating_duration_since(now);
    match next {
        Some(next) => Action::requeue(next.min(money_next)),
        None if money_next < FAR_MONEY => Action::requeue(money_next),
        None => Action::await_change(),
    }
}

/// Whether the stored observation is to be shown again now, without a poll: the key's
/// catalogue or bills changed, the Expiring condition changes by itself, or an export is to
/// be checked (or tried) again.
fn shown_again_is_due(ctx: &Context, object: &(String, String), now: Instant) -> bool {
    ctx.ledger
        .stale((&object.0, &object.1), jiff::Timestamp::now())
        || ctx
            .exports
            .next_check((&object.0, &object.1))
            .is_some_and(|t| t <= now)
}

/// What the poll is told of the ones before it.
fn history(previous: Option<&Tracked>, generation: Option<i64>, refresh_now: bool) -> History {
    let same_spec = previous.filter(|t| t.generation == generation);
    History {
        failures: previous.map(|t| t.failures).unwrap_or(0),
        gone_suspected: previous.is_some_and(|t| t.gone_suspected),
        due: same_spec.filter(|_| !refresh_now).and_then(|t| t.due),
        forced: refresh_now,
        // What was observed for another spec (another instance id) does not count.
        seen: same_spec.map(|t| t.seen.clone()).unwrap_or_default(),
    }
}

/// What a poll was asked for: a refresh now (`refresh_now`, for the refresh annotation's
/// value `requested`), and when it was due by its interval (`due_before`).
struct Asked<'a> {
    refresh_now: bool,
    requested: Option<&'a str>,
    due_before: Option<Instant>,
}

impl Tracked {
    /// An object seen first since start-up, already observed at its generation: its first
    /// poll is at `at`.
    fn first_poll(generation: Option<i64>, at: Instant) -> Tracked {
        Tracked {
            generation,
            next_poll: at,
            failures: 0,
            handled_refresh: None,
            last_forced: None,
            gone_suspected: false,
            due: Some(at),
            seen: Seen::default(),
        }
    }

    /// What is remembered after a poll started at `now`, asked for as `asked` says.
    fn after_poll(
        previous: Option<Tracked>,
        polled: Polled,
        generation: Option<i64>,
        now: Instant,
        asked: Asked<'_>,
    ) -> Tracked {
        let last_forced = if asked.refresh_now && polled.requested {
            Some(now)
        } else {
            previous.as_ref().and_then(|t| t.last_forced)
        };
        // The refresh annotation this poll acted on, or the one handled before.
        let handled_refresh = if polled.requested || polled.wrote {
            asked.requested.map(str::to_string)
        } else {
            previous.and_then(|t| t.handled_refresh)
        };
        let next_poll = match polled.next {
            // The walk it waits for reconciles it when it ends: that reconcile polls.
            Some(_) if polled.poll_on_wake => now,
            Some(delay) => now + delay,
            None => far_future(now),
        };
        // A poll whose GET waits in its key's line stays due when it was; any other outcome
        // sets a new due time.
        let due = if polled.queued {
            asked.due_before.or(Some(now))
        } else {
            Some(next_poll)
        };
        Tracked {
            generation,
            next_poll,
            failures: polled.failures,
            handled_refresh,
            last_forced,
            gone_suspected: polled.gone_suspected,
            due,
            seen: polled.seen,
        }
    }
}

/// Beyond this, a change of the Expiring condition is left to the next poll.
const FAR_MONEY: Duration = Duration::from_secs(24 * 3600);

/// When a PpioInstance's Expiring condition changes by itself (at least a second from now),
/// or [`FAR_MONEY`] from now.
fn money_change(ctx: &Context, object: &(String, String), now: Instant) -> Instant {
    let wait = ctx
        .ledger
        .next_change((&object.0, &object.1))
        .map(|t| {
            let secs = (t - jiff::Timestamp::now()).get_seconds().max(1);
            Duration::from_secs(u64::try_from(secs).unwrap_or(1))
        })
        .unwrap_or(FAR_MONEY)
        .min(FAR_MONEY);
    now + wait
}

/// When a PpioInstance is to be shown again without a poll: its Expiring condition changes
/// by itself ([`money_change`]) or an export is to be checked again (at least a second from
/// now).
fn own_change(ctx: &Context, object: &(String, String), now: Instant) -> Instant {
    let money = money_change(ctx, object, now);
    match ctx.exports.next_check((&object.0, &object.1)) {
        Some(t) => money.min(t.max(now + Duration::from_secs(1))),
        None => money,
    }
}

/// The value of the refresh annotation, if set.
fn refresh_request(instance: &PpioInstance) -> Option<&str> {
    instance
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFRESH_ANNOTATION))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// True when the stored status already answers the current generation with an observation.
fn already_observed(instance: &PpioInstance) -> bool {
    instance.status.as_ref().is_some_and(|s| {
        s.observed_generation.is_some()
            && s.observed_generation == instance.meta().generation
            && s.instance_id.as_deref() == Some(instance.spec.instance_id.as_str())
            && s.condition(condition::SYNCED).is_some()
    })
}
