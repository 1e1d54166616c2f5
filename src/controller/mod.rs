//! The reconcile loop, step by step:
//!
//! - [`schedule`]: when to poll (the timing policies: intervals, transitions, backoff,
//!   jitter);
//! - [`budget`]: each API key's request budget;
//! - [`credentials`]: the API key of a PpioInstance;
//! - [`poll`]: one poll of PPIO and what it decides;
//! - [`apply`]: the status write, only when the status changed;
//! - [`events`]: a log line and an Event per transition.
//!
//! This module holds the controller's shared state and the entry points kube's `Controller`
//! calls.

pub mod apply;
pub mod budget;
pub mod credentials;
pub mod events;
pub mod poll;
pub mod schedule;

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{Instrument, debug, warn};

use crate::crd::{PpioInstance, REFRESH_ANNOTATION};
use crate::duration::parse_refresh_interval;
use crate::lock;
use crate::metrics::Metrics;
use crate::ppio::{ApiKey, PpioApi};
use crate::vocabulary::condition;

pub use budget::{Buckets, Budget, DEFAULT_BURST, DEFAULT_REQUESTS_PER_SECOND, MAX_BUDGET_WAIT};
pub use events::{Transition, transitions};
pub use poll::{History, Polled, poll};
pub use schedule::{
    BACKOFF_BASE, BACKOFF_MAX, CONFIRM_GONE, GONE_POLL, MAX_KEY_PAUSE, MIN_REFRESH_GAP,
    TRANSITION_POLL, backoff, jitter, poll_interval,
};

use schedule::far_future;

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
    /// The request budget shared by every PpioInstance that uses the same API key.
    pub budget: Budget,
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
    /// Per API key (by fingerprint): no request before this instant (a 429's Retry-After).
    key_paused_until: Mutex<HashMap<u64, Instant>>,
    key_hasher: RandomState,
    buckets: Buckets,
    /// The credentials Secrets read lately.
    secrets: credentials::SecretCache,
}

impl Context {
    pub fn new(
        client: Client,
        ppio: Arc<dyn PpioApi>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Context {
        Context {
            client,
            ppio,
            settings,
            metrics,
            recorder: None,
            tracked: Mutex::new(HashMap::new()),
            key_paused_until: Mutex::new(HashMap::new()),
            buckets: Buckets::default(),
            key_hasher: RandomState::new(),
            secrets: credentials::SecretCache::default(),
        }
    }

    /// Reads credentials Secrets again after `ttl` (tests; the default is
    /// [`credentials::SECRET_TTL`]).
    pub fn with_secret_ttl(mut self, ttl: Duration) -> Context {
        self.secrets = credentials::SecretCache::with_ttl(ttl);
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

    fn key_pause(&self, key: &ApiKey) -> Option<Instant> {
        let fp = self.fingerprint(key);
        let mut paused = lock(&self.key_paused_until);
        let now = Instant::now();
        paused.retain(|_, until| *until > now);
        paused.get(&fp).copied()
    }

    fn pause_key(&self, key: &ApiKey, until: Instant) {
        let fp = self.fingerprint(key);
        let mut paused = lock(&self.key_paused_until);
        let entry = paused.entry(fp).or_insert(until);
        *entry = (*entry).max(until);
    }

    fn tracked(&self, key: &str) -> Option<Tracked> {
        lock(&self.tracked).get(key).cloned()
    }

    fn set_tracked(&self, key: &str, t: Tracked) {
        let mut tracked = lock(&self.tracked);
        tracked.insert(key.to_string(), t);
        self.metrics
            .controller
            .backoffs
            .set(tracked.values().filter(|t| t.failures > 0).count() as i64);
    }

    fn forget(&self, key: &str) {
        let mut tracked = lock(&self.tracked);
        tracked.remove(key);
        self.metrics
            .controller
            .backoffs
            .set(tracked.values().filter(|t| t.failures > 0).count() as i64);
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
            self.metrics.instances.forget(ns, name);
            self.forget(&key);
        }
    }
}

/// Errors that make a reconcile retry later without touching status (the Kubernetes API
/// failed; PPIO errors are reported in status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status failed: {0}")]
    WriteStatus(#[source] kube::Error),
    #[error("reading the credentials Secret failed: {0}")]
    ReadSecret(#[source] kube::Error),
    #[error("{0} did not finish within {KUBE_CALL_TIMEOUT:?}")]
    Timeout(&'static str),
}

/// Every call to the Kubernetes API from a reconcile is bounded by this.
pub const KUBE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The reconcile entry point for [`kube::runtime::Controller`].
pub async fn reconcile(
    obj: Arc<DeserializeGuard<PpioInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let instance = match &obj.0 {
        Ok(instance) => instance,
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
    obj: Arc<DeserializeGuard<PpioInstance>>,
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
    });
    t.failures += 1;
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

fn object_key(instance: &PpioInstance) -> String {
    format!(
        "{}/{}",
        instance.namespace().unwrap_or_default(),
        instance.name_any()
    )
}

async fn reconcile_instance(instance: &PpioInstance, ctx: &Context) -> Result<Action, Error> {
    let key = object_key(instance);
    if instance.meta().deletion_timestamp.is_some() {
        ctx.forget(&key);
        return Ok(Action::await_change());
    }
    let generation = instance.meta().generation;
    let refresh = match instance.spec.refresh_interval.as_deref() {
        None => ctx.settings.default_refresh,
        Some(text) => parse_refresh_interval(text).unwrap_or_else(|e| {
            warn!(error = %e, "spec.refreshInterval is invalid; using the default refresh interval");
            ctx.settings.default_refresh
        }),
    };
    let now = Instant::now();
    let previous = ctx.tracked(&key);
    let requested = refresh_request(instance).map(crate::status::refresh_token);
    let requested = requested.as_deref();
    let refresh_now = requested.is_some()
        && requested
            != instance
                .status
                .as_ref()
                .and_then(|s| s.last_handled_refresh.as_deref())
        && requested != previous.as_ref().and_then(|t| t.handled_refresh.as_deref());
    let forced_recently = previous
        .as_ref()
        .and_then(|t| t.last_forced)
        .map(|at| at + MIN_REFRESH_GAP)
        .filter(|ready| *ready > now);
    match &previous {
        // The user asked for a poll now (the refresh annotation), too soon after the last one:
        // it runs when the gap is over, so that annotation spam cannot spend the key's budget.
        _ if refresh_now && forced_recently.is_some() => {
            let ready = forced_recently.unwrap_or(now);
            debug!("refresh requested; deferred to keep the minimum gap");
            return Ok(Action::requeue(ready - now));
        }
        // The user asked for a poll now (the refresh annotation).
        _ if refresh_now => debug!("refresh requested"),
        // A trigger before the poll is due (our own status write, a label edit): nothing to do.
        Some(t) if t.generation == generation && t.next_poll > now => {
            return Ok(Action::requeue(t.next_poll - now));
        }
        // First sight since start-up of an object already observed at this generation: spread
        // the first polls over the first interval instead of polling everything at once.
        None if already_observed(instance) => {
            let delay = refresh.mul_f64(rand::rng().random_range(0.0..1.0));
            ctx.set_tracked(
                &key,
                Tracked {
                    generation,
                    next_poll: now + delay,
                    failures: 0,
                    handled_refresh: None,
                    last_forced: None,
                    gone_suspected: false,
                },
            );
            debug!(delay_ms = delay.as_millis() as u64, "first poll scheduled");
            return Ok(Action::requeue(delay));
        }
        _ => {}
    }
    let history = History {
        failures: previous.as_ref().map(|t| t.failures).unwrap_or(0),
        gone_suspected: previous.as_ref().is_some_and(|t| t.gone_suspected),
    };
    let polled = poll(instance, ctx, refresh, history).await?;
    let last_forced = if refresh_now && polled.requested {
        Some(now)
    } else {
        previous.as_ref().and_then(|t| t.last_forced)
    };
    let handled_refresh = if polled.requested || polled.wrote {
        requested.map(str::to_string)
    } else {
        previous.and_then(|t| t.handled_refresh)
    };
    let next_poll = match polled.next {
        Some(delay) => now + delay,
        None => far_future(now),
    };
    ctx.set_tracked(
        &key,
        Tracked {
            generation,
            next_poll,
            failures: polled.failures,
            handled_refresh,
            last_forced,
            gone_suspected: polled.gone_suspected,
        },
    );
    Ok(polled
        .next
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
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
