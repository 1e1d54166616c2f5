//! The reconcile loop: resolve the key, poll PPIO, compute status, write it only when it
//! changed, and decide when to look again.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tracing::{Instrument, debug, info, warn};

use crate::crd::{CREDENTIALS_LABEL, PpioInstance, PpioInstanceStatus, REFRESH_ANNOTATION};
use crate::duration::parse_refresh_interval;
use crate::lock;
use crate::metrics::Metrics;
use crate::outcome::{Class, Retry, Severity};
use crate::ppio::{ApiKey, PpioApi, PpioError};
use crate::status::{Failure, Observation, compute_status};
use crate::vocabulary::{condition, event, reason, state};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "ppio-operator";
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
/// A poll that would wait longer than this for its key's budget is requeued instead.
pub const MAX_BUDGET_WAIT: Duration = Duration::from_secs(30);

/// Per-key leaky buckets: the virtual time of each key's next request slot.
#[derive(Debug, Default)]
pub struct Buckets {
    next_slot: Mutex<HashMap<u64, Instant>>,
}

impl Buckets {
    /// Reserves a request slot for `key` at `now`; returns how long to wait for it.
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
        }
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

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    /// When to poll next; `None`: only when the object changes (suspended).
    pub next: Option<Duration>,
    /// Consecutive failures after this poll.
    pub failures: u32,
    /// Whether the status was written.
    pub wrote: bool,
    /// Whether a request was sent to PPIO.
    pub requested: bool,
    /// PPIO answered "not found" for the first time; the next poll confirms it.
    pub gone_suspected: bool,
}

/// What a poll needs to know of the polls before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The last poll answered "not found" and was not reported yet.
    pub gone_suspected: bool,
}

impl From<u32> for History {
    fn from(failures: u32) -> History {
        History {
            failures,
            gone_suspected: false,
        }
    }
}

/// One poll, whatever the timing: resolve the key, fetch the instance, write the status if it
/// changed, and decide the delay to the next poll. `history`: what earlier polls left (a
/// plain number is the count of consecutive failures).
pub async fn poll(
    instance: &PpioInstance,
    ctx: &Context,
    refresh: Duration,
    history: impl Into<History>,
) -> Result<Polled, Error> {
    let History {
        failures,
        gone_suspected,
    } = history.into();
    if instance.spec.suspend == Some(true) {
        let wrote = write_status(instance, ctx, Observation::Suspended).await?;
        return Ok(Polled {
            next: None,
            failures: 0,
            wrote,
            requested: false,
            gone_suspected: false,
        });
    }

    let api_key = match resolve_key(instance, ctx).await? {
        Ok(k) => k,
        Err(failure) => {
            let wrote = write_status(instance, ctx, Observation::Failed(&failure)).await?;
            let failures = failures + 1;
            return Ok(Polled {
                next: Some(backoff(failures)),
                failures,
                wrote,
                requested: false,
                gone_suspected: false,
            });
        }
    };

    let now = Instant::now();
    if let Some(until) = ctx.key_pause(&api_key) {
        // Another object using this key was told to wait (429 Retry-After): so do we.
        let delay = until.saturating_duration_since(now) + jitter_up(Duration::from_secs(1));
        return Ok(Polled {
            next: Some(delay),
            failures,
            wrote: false,
            requested: false,
            gone_suspected,
        });
    }

    let wait = ctx
        .buckets
        .reserve(ctx.settings.budget, ctx.fingerprint(&api_key), now);
    if wait > MAX_BUDGET_WAIT {
        // The key's budget is spent for a while: look again later instead of queueing here.
        return Ok(Polled {
            next: Some(wait),
            failures,
            wrote: false,
            requested: false,
            gone_suspected,
        });
    }
    tokio::time::sleep(wait).await;
    let now = Instant::now();
    let result = ctx
        .ppio
        .get_instance(&api_key, &instance.spec.instance_id)
        .await;
    let class = result
        .as_ref()
        .map_or_else(PpioError::request_class, |_| "2xx");
    ctx.metrics.api.request(class, now.elapsed().as_secs_f64());
    let (observation, failure);
    let (delay, failures) = match &result {
        Ok(observed) => {
            observation = Observation::Instance(observed);
            let observed_state = observed.state().unwrap_or_default();
            (jitter(poll_interval(refresh, observed_state)), 0)
        }
        Err(e) => {
            failure = Failure::from(e);
            observation = Observation::Failed(&failure);
            match (failure.class.retry(), e.retry_after()) {
                (Retry::Gone, _) if !gone_suspected && !reported_gone(instance) => {
                    // A first "not found": confirm it before telling anyone.
                    debug!("PPIO answered not found; confirming before reporting it");
                    return Ok(Polled {
                        next: Some(jitter(CONFIRM_GONE)),
                        failures,
                        wrote: false,
                        requested: true,
                        gone_suspected: true,
                    });
                }
                (Retry::Gone, _) => (jitter(refresh.max(GONE_POLL)), 0),
                (_, Some(after)) => {
                    // The server said when: every PpioInstance using this key waits as well,
                    // never less than the error backoff and never more than MAX_KEY_PAUSE.
                    let wait = after.max(backoff(failures + 1)).min(MAX_KEY_PAUSE);
                    ctx.pause_key(&api_key, now + wait);
                    (wait + jitter_up(Duration::from_secs(1)), failures + 1)
                }
                _ => (backoff(failures + 1), failures + 1),
            }
        }
    };
    let wrote = write_status(instance, ctx, observation).await?;
    Ok(Polled {
        next: Some(delay),
        failures,
        wrote,
        requested: true,
        gone_suspected: false,
    })
}

/// True when the stored status already reports the instance gone.
fn reported_gone(instance: &PpioInstance) -> bool {
    instance
        .status
        .as_ref()
        .is_some_and(|s| s.state.as_deref() == Some(state::NOT_FOUND))
}

/// A small random delay in [0, d], so objects released together do not fire together.
fn jitter_up(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.0..=1.0))
}

fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
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

/// The API key for this instance: the referenced Secret's key, else the operator's default.
/// The outer error is a Kubernetes API failure (retry); the inner one a user-facing
/// `CredentialsMissing` failure.
///
/// A Secret serves as credentials only when it carries [`CREDENTIALS_LABEL`]` = "true"`, so
/// that a PpioInstance cannot make the operator send any other Secret of the namespace to
/// PPIO. Every refusal has the same message, which says what to do and does not tell whether
/// the Secret or its key exists.
async fn resolve_key(
    instance: &PpioInstance,
    ctx: &Context,
) -> Result<Result<ApiKey, Failure>, Error> {
    let ns = instance.namespace().unwrap_or_default();
    let Some(sref) = &instance.spec.credentials_secret_ref else {
        let allowed = ctx
            .settings
            .default_key_namespaces
            .as_ref()
            .is_none_or(|set| set.contains(&ns));
        return Ok(match &ctx.settings.default_key {
            None => Err(Failure::credentials_missing(
                "No spec.credentialsSecretRef is set and the operator has no default API key (PPIO_API_KEY).",
            )),
            Some(_) if !allowed => Err(Failure::credentials_missing(format!(
                "No spec.credentialsSecretRef is set and the operator's default API key is not available in namespace {ns:?} (--default-key-namespaces); reference a Secret of this namespace."
            ))),
            Some(k) => Ok(k.clone()),
        });
    };
    let key_name = sref.key_or_default();
    let refused = || {
        Failure::credentials_missing(format!(
            "Secret {:?} cannot serve as PPIO credentials: it must exist in namespace {ns:?}, carry the label {CREDENTIALS_LABEL}: \"true\" and hold the API key under {key_name:?}.",
            sref.name
        ))
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = tokio::time::timeout(KUBE_CALL_TIMEOUT, secrets.get_opt(&sref.name))
        .await
        .map_err(|_| Error::Timeout("reading the credentials Secret"))?;
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Err(refused())),
        Err(kube::Error::Api(ae)) if ae.code == 403 => return Ok(Err(refused())),
        Err(e) => return Err(Error::ReadSecret(e)),
    };
    let marked = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true");
    if !marked {
        return Ok(Err(refused()));
    }
    Ok(secret
        .data
        .as_ref()
        .and_then(|d| d.get(key_name))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .and_then(ApiKey::new)
        .ok_or_else(refused))
}

/// Our conditions, in a stable order, without conditions other writers may have added.
fn own_view(status: &PpioInstanceStatus) -> PpioInstanceStatus {
    let mut s = status.clone();
    s.conditions
        .retain(|c| condition::OWN.contains(&c.type_.as_str()));
    s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    s
}

/// Computes the status of an observation and records it: the instance's metrics, the write
/// (only when the status changed), then a log line and an Event per transition. Returns
/// whether a write happened.
async fn write_status(
    instance: &PpioInstance,
    ctx: &Context,
    observation: Observation<'_>,
) -> Result<bool, Error> {
    let current = instance.status.as_ref();
    let new = compute_status(
        &instance.spec.instance_id,
        instance.meta().generation,
        refresh_request(instance),
        observation,
        current,
        jiff::Timestamp::now(),
    );
    let wrote = apply_status(instance, ctx, &new).await?;
    // Metrics follow what is stored: only once the write succeeded or was not needed.
    let polled_ok = matches!(observation, Observation::Instance(_))
        && new
            .condition(condition::SYNCED)
            .is_some_and(|c| c.status == crate::vocabulary::status::TRUE);
    ctx.metrics.instances.observe(
        &instance.namespace().unwrap_or_default(),
        &instance.name_any(),
        &new,
        polled_ok,
    );
    if !wrote {
        return Ok(false);
    }
    let changes = transitions(current, &new);
    log_transitions(current, &new, &changes);
    publish_events(ctx, instance, &changes).await;
    Ok(true)
}

/// Writes `new` as the status (a forced server-side apply under [`FIELD_MANAGER`]) when it
/// differs from the stored one; returns whether it wrote.
async fn apply_status(
    instance: &PpioInstance,
    ctx: &Context,
    new: &PpioInstanceStatus,
) -> Result<bool, Error> {
    if instance.status.as_ref().map(own_view).as_ref() == Some(&own_view(new)) {
        debug!("status unchanged; no write");
        ctx.metrics.controller.status_writes_skipped.inc();
        return Ok(false);
    }
    let api: Api<PpioInstance> = Api::namespaced(
        ctx.client.clone(),
        &instance.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": PpioInstance::api_version(&()),
        "kind": PpioInstance::kind(&()),
        "status": new,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    tokio::time::timeout(
        KUBE_CALL_TIMEOUT,
        api.patch_status(&instance.name_any(), &params, &Patch::Apply(&patch)),
    )
    .await
    .map_err(|_| Error::Timeout("writing status"))?
    .map_err(Error::WriteStatus)?;
    ctx.metrics.controller.status_writes.inc();
    Ok(true)
}

/// The reason of a condition.
fn reason_of<'a>(s: Option<&'a PpioInstanceStatus>, type_: &str) -> Option<&'a str> {
    s?.condition(type_).map(|c| c.reason.as_str())
}

/// A change worth a log line and an Event: never one per poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The PPIO state changed (both old and new are PPIO states, not NotFound).
    State { from: String, to: String },
    /// Synced turned False, or its reason changed.
    SyncFailed { reason: String, message: String },
    /// Synced turned True after having been False.
    SyncRecovered { from: String },
    /// The first successful observation.
    FirstObserved,
}

/// The transitions from `old` to `new`.
pub fn transitions(old: Option<&PpioInstanceStatus>, new: &PpioInstanceStatus) -> Vec<Transition> {
    let mut out = Vec::new();
    let known = |s: Option<&str>| s.filter(|s| *s != state::NOT_FOUND).map(str::to_string);
    if let (Some(from), Some(to)) = (
        known(old.and_then(|s| s.state.as_deref())),
        known(new.state.as_deref()),
    ) && from != to
    {
        out.push(Transition::State { from, to });
    }
    let old_sync = reason_of(old, condition::SYNCED);
    let new_sync = reason_of(Some(new), condition::SYNCED);
    if old_sync != new_sync {
        if new_sync == Some(reason::OBSERVED) {
            out.push(match old_sync {
                None => Transition::FirstObserved,
                Some(from) => Transition::SyncRecovered {
                    from: from.to_string(),
                },
            });
        } else {
            let message = new
                .condition(condition::SYNCED)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            out.push(Transition::SyncFailed {
                reason: new_sync.unwrap_or_default().to_string(),
                message,
            });
        }
    }
    out
}

/// Logs each transition (info for good news, warn for failures).
fn log_transitions(
    old: Option<&PpioInstanceStatus>,
    new: &PpioInstanceStatus,
    list: &[Transition],
) {
    if old.and_then(|s| s.state.as_deref()) != new.state.as_deref() {
        info!(
            from = old.and_then(|s| s.state.as_deref()).unwrap_or("-"),
            to = new.state.as_deref().unwrap_or("-"),
            "instance state changed"
        );
    }
    for t in list {
        match t {
            Transition::State { .. } => {}
            Transition::FirstObserved => info!("instance observed"),
            Transition::SyncRecovered { from } => info!(from = from.as_str(), "sync recovered"),
            Transition::SyncFailed { reason, message } => {
                warn!(
                    reason = reason.as_str(),
                    detail = message.as_str(),
                    "sync failing"
                )
            }
        }
    }
}

/// Publishes an Event per transition; a failure to publish is logged, never fatal.
async fn publish_events(ctx: &Context, instance: &PpioInstance, list: &[Transition]) {
    use kube::runtime::events::{Event, EventType};
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let reference = instance.object_ref(&());
    for t in list {
        let event = match t {
            Transition::State { from, to } => Event {
                type_: EventType::Normal,
                reason: event::STATE_CHANGED.into(),
                note: Some(crate::status::bounded(&format!(
                    "The instance state changed from {from} to {to}."
                ))),
                action: event::ACTION_OBSERVE.into(),
                secondary: None,
            },
            Transition::SyncFailed { reason, message } => Event {
                type_: match Class::from_reason(reason).map(Class::severity) {
                    Some(Severity::Normal) => EventType::Normal,
                    Some(Severity::Warning) | None => EventType::Warning,
                },
                reason: reason.clone(),
                note: Some(message.clone()),
                action: event::ACTION_POLL.into(),
                secondary: None,
            },
            Transition::SyncRecovered { from } => Event {
                type_: EventType::Normal,
                reason: event::SYNCED.into(),
                note: Some(format!("The PPIO API answers again (was {from}).")),
                action: event::ACTION_POLL.into(),
                secondary: None,
            },
            Transition::FirstObserved => continue,
        };
        match tokio::time::timeout(KUBE_CALL_TIMEOUT, recorder.publish(&event, &reference)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, reason = event.reason.as_str(), "publishing an Event failed")
            }
            Err(_) => warn!(
                reason = event.reason.as_str(),
                "publishing an Event did not finish within the Kubernetes call timeout"
            ),
        }
    }
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
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_secs(100)).as_secs_f64();
            assert!((90.0..=110.0).contains(&j));
        }
    }
}
