//! Prometheus metrics (OpenMetrics text), prefix `ppio_`.
//!
//! Operator metrics describe the controller itself; per-instance metrics carry only the
//! bounded labels `namespace` and `name` (plus `state` for the state series, and `kind` for
//! prices) and are removed when the PpioInstance goes away.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::PpioInstanceStatus;
use crate::lock;
use crate::vocabulary::{condition, status as cstatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// An export write: the kind of object and what was done to it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportWriteLabels {
    /// `Secret`, `Service` or `EndpointSlice`.
    pub kind: String,
    /// `create`, `update` or `delete`.
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub class: String,
}

/// A PpioInstance's namespace and name.
#[derive(Debug, Hash, PartialEq, Eq)]
pub struct ObjectName {
    pub namespace: Box<str>,
    pub name: Box<str>,
}

/// A PpioInstance's labels (`namespace`, `name`): one pointer to the copy of its names that
/// all its series share. 10,000 PpioInstances have about a dozen series each, each keyed by
/// these labels in its family's table, so every byte of the key counts a hundred thousand
/// times over.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ObjectLabels(Arc<ObjectName>);

impl ObjectLabels {
    pub fn new(namespace: &str, name: &str) -> ObjectLabels {
        ObjectLabels(Arc::new(ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        }))
    }
}

impl EncodeLabelSet for ObjectLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        [("namespace", &*self.0.namespace), ("name", &*self.0.name)].encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    #[prometheus(flatten)]
    pub object: ObjectLabels,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    #[prometheus(flatten)]
    pub object: ObjectLabels,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoneyLabels {
    #[prometheus(flatten)]
    pub object: ObjectLabels,
    pub currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalanceLabels {
    /// A fingerprint of the key, never the key.
    pub key: String,
    pub currency: String,
}

/// The currency label of an amount whose currency is not known.
pub const UNKNOWN_CURRENCY: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriceLabels {
    #[prometheus(flatten)]
    pub object: ObjectLabels,
    pub kind: &'static str,
}

/// All metrics of the operator, by subsystem; each group registers itself.
pub struct Metrics {
    registry: Registry,
    /// The controller: reconciles, status writes, backoffs, leadership.
    pub controller: ControllerMetrics,
    /// Requests to the PPIO API (`ppio_api_*`).
    pub api: ApiMetrics,
    /// Per-PpioInstance series (`ppio_instance_*`).
    pub instances: InstanceMetrics,
    /// Per API key: its account's balance and runway (`ppio_account_*`).
    pub account: AccountMetrics,
    /// The `/metrics` endpoint itself (`ppio_metrics_*`).
    pub serving: ServingMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ppio");
        let controller = ControllerMetrics::default();
        controller.register(&mut registry);
        let api = ApiMetrics::default();
        api.register(registry.sub_registry_with_prefix("api"));
        let instances = InstanceMetrics::default();
        instances.register(registry.sub_registry_with_prefix("instance"));
        let account = AccountMetrics::default();
        account.register(registry.sub_registry_with_prefix("account"));
        let serving = ServingMetrics::default();
        serving.register(registry.sub_registry_with_prefix("metrics"));
        Metrics {
            registry,
            controller,
            api,
            instances,
            account,
            serving,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The `/metrics` endpoint: scrapes by result, and the reviews its tokens cost.
#[derive(Default)]
pub struct ServingMetrics {
    scrapes: Family<ResultLabels, Counter>,
    reviews: Family<KindLabels, Counter>,
}

/// A kind of Kubernetes object.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

impl ServingMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "scrapes",
            "Requests for /metrics by result (served, unauthenticated, forbidden, unavailable, busy)",
            self.scrapes.clone(),
        );
        r.register(
            "reviews",
            "TokenReviews and SubjectAccessReviews made to check /metrics tokens, by kind",
            self.reviews.clone(),
        );
    }

    /// Counts a request for `/metrics`.
    pub fn scraped(&self, result: &str) {
        self.scrapes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Counts a review made.
    pub fn reviewed(&self, kind: &str) {
        self.reviews
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }
}

/// The controller's own work.
pub struct ControllerMetrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub status_writes: Counter,
    pub status_writes_skipped: Counter,
    /// Writes of exported objects (connection Secrets, Services, EndpointSlices).
    pub export_writes: Family<ExportWriteLabels, Counter>,
    pub backoffs: Gauge,
    pub leader: Gauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            status_writes: Counter::default(),
            status_writes_skipped: Counter::default(),
            export_writes: Family::default(),
            backoffs: Gauge::default(),
            leader: Gauge::default(),
        }
    }
}

impl ControllerMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            self.reconcile_duration.clone(),
        );
        r.register(
            "status_writes",
            "Status subresource writes",
            self.status_writes.clone(),
        );
        r.register(
            "status_writes_skipped",
            "Status writes skipped because nothing changed",
            self.status_writes_skipped.clone(),
        );
        r.register(
            "export_writes",
            "Writes of exported objects (connection Secrets, Services, EndpointSlices), by kind and operation",
            self.export_writes.clone(),
        );
        r.register(
            "backoffs",
            "PpioInstances currently in error backoff",
            self.backoffs.clone(),
        );
        r.register(
            "leader",
            "1 when this replica is the leader and reconciles",
            self.leader.clone(),
        );
    }

    /// Counts a reconcile by result.
    pub fn reconciled(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Times a reconcile until the guard is dropped.
    pub fn reconcile_timer(&self) -> Timer<'_> {
        Timer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }
}

/// Requests to the PPIO API.
pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    /// Per API key fingerprint: how late its last poll ran past its interval.
    pub key_lateness: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// Per API key fingerprint: 1 while its LIST is unavailable and its instances are
    /// observed by GETs alone.
    pub list_unavailable: Family<KeyLabels, Gauge>,
    /// Per API key fingerprint: how many times longer than configured its full GETs are
    /// apart (1: as configured).
    pub full_refresh_stretch: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// Walks over the LIST of a key by result (`ok`, `truncated`, `error`, `unavailable`).
    pub sweeps: Family<ResultLabels, Counter>,
    /// API keys whose walks and budget the operator holds state for.
    pub keys: Gauge,
    /// A key's task (its request line and its walks) that ended unexpectedly and was started
    /// again.
    pub key_restarts: Counter,
    /// Per API key fingerprint and money call: 1 while PPIO does not serve the call here.
    pub call_unavailable: Family<CallLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// A fingerprint of the key, never the key.
    pub key: String,
    /// `products`, `bills`, `balance`.
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// A fingerprint of the key (a hash with a per-process seed), never the key.
    pub key: String,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            request_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            key_lateness: Family::default(),
            list_unavailable: Family::default(),
            full_refresh_stretch: Family::default(),
            sweeps: Family::default(),
            keys: Gauge::default(),
            key_restarts: Counter::default(),
            call_unavailable: Family::default(),
        }
    }
}

impl ApiMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "requests",
            "PPIO API requests by endpoint and status class (2xx, 4xx, 5xx, error)",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Latency of PPIO API requests",
            self.request_duration.clone(),
        );
        r.register(
            "key_poll_lateness_seconds",
            "How late the last poll of a PpioInstance using this API key (label key: a fingerprint, never the key) ran past its refresh interval because of the key's request budget",
            self.key_lateness.clone(),
        );
        r.register(
            "list_unavailable",
            "1 while the LIST call is unavailable for this API key (label key: a fingerprint, never the key) and its PpioInstances are observed by GETs alone",
            self.list_unavailable.clone(),
        );
        r.register(
            "full_refresh_stretch_ratio",
            "How many times longer than --ppio-full-refresh-intervals intervals the full GETs of the PpioInstances using this API key (label key: a fingerprint, never the key) are apart, because the key's request budget cannot cover them besides its walks (1: as configured)",
            self.full_refresh_stretch.clone(),
        );
        r.register(
            "sweeps",
            "Walks over the paged LIST of an API key by result (ok, truncated, error, unavailable)",
            self.sweeps.clone(),
        );
        r.register(
            "keys",
            "API keys in use whose walks over the LIST the operator holds state for (a retired key's is freed once its PpioInstances stop asking)",
            self.keys.clone(),
        );
        r.register(
            "call_unavailable",
            "1 while PPIO does not serve a money call (products, bills, balance) for this API key (label key: a fingerprint, never the key): its figures stay absent",
            self.call_unavailable.clone(),
        );
        r.register(
            "key_restarts",
            "API key tasks (each key's request line and walks) that ended unexpectedly (a panic) and were started again",
            self.key_restarts.clone(),
        );
    }

    /// Drops the series of an API key no longer in use (fingerprint label).
    pub fn forget_key(&self, key: &str) {
        let labels = KeyLabels { key: key.into() };
        self.list_unavailable.remove(&labels);
        self.key_lateness.remove(&labels);
        self.full_refresh_stretch.remove(&labels);
    }

    /// Sets how many times longer than configured a key's full GETs are apart.
    pub fn set_full_refresh_stretch(&self, key: &str, stretch: f64) {
        self.full_refresh_stretch
            .get_or_create(&KeyLabels { key: key.into() })
            .set(stretch);
    }

    /// Sets whether a money call is served for a key (fingerprint label): a series only while
    /// it is not.
    pub fn set_call_unavailable(&self, key: &str, call: &str, unavailable: bool) {
        let labels = CallLabels {
            key: key.into(),
            call: call.into(),
        };
        if unavailable {
            self.call_unavailable.get_or_create(&labels).set(1);
        } else {
            self.call_unavailable.remove(&labels);
        }
    }

    /// Sets whether the LIST is unavailable for a key (fingerprint label).
    pub fn set_list_unavailable(&self, key: &str, unavailable: bool) {
        self.list_unavailable
            .get_or_create(&KeyLabels { key: key.into() })
            .set(i64::from(unavailable));
    }

    /// Counts one walk over a key's LIST.
    pub fn sweep(&self, result: &str) {
        self.sweeps
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Records how late a poll on a key ran.
    pub fn lateness(&self, key: &str, late: std::time::Duration) {
        self.key_lateness
            .get_or_create(&KeyLabels { key: key.into() })
            .set(late.as_secs_f64());
    }

    /// Counts one `GET /gpus/v2/instances/{id}`.
    pub fn request(&self, class: &str, seconds: f64) {
        self.request_on("get_instance", class, seconds);
    }

    /// Counts one PPIO request to `endpoint` (`get_instance`, `list_instances`).
    pub fn request_on(&self, endpoint: &str, class: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.into(),
                class: class.into(),
            })
            .inc();
        self.request_duration.observe(seconds);
    }
}

/// The help text of `ppio_instance_state`: how the `state` label is made safe.
const STATE_HELP: &str = "1 for the current PPIO state of each instance (label state: the PPIO state with every character outside [A-Za-z0-9_.:-] replaced by _, at most 64 characters)";

/// The longest label value taken from PPIO's answers.
pub const MAX_LABEL_VALUE_CHARS: usize = 64;

/// A label value that cannot break the exposition format, from text PPIO sent:
/// `[A-Za-z0-9_.:-]` is kept, every other character becomes `_`, and the result is cut at
/// [`MAX_LABEL_VALUE_CHARS`]. (prometheus-client writes label values unescaped, so a `"`,
/// `\` or newline would end the value, or the line, and corrupt the whole scrape.)
pub fn safe_label_value(raw: &str) -> String {
    raw.chars()
        .take(MAX_LABEL_VALUE_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A gauge of a Unix time in seconds.
pub type TimestampGauge = Gauge<f64, AtomicU64>;

/// Seconds since the Unix epoch of `at` (0 before it).
pub fn unix_seconds(at: std::time::SystemTime) -> f64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Per API key (by fingerprint): what its account can still spend.
#[derive(Default)]
pub struct AccountMetrics {
    pub balance: Family<BalanceLabels, Gauge<f64, AtomicU64>>,
    pub runway_hours: Family<KeyLabels, Gauge<f64, AtomicU64>>,
    /// The currency label of each key's balance series.
    currencies: Mutex<std::collections::HashMap<String, String>>,
}

impl AccountMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "balance",
            "The available balance of the account of an API key (label key: a fingerprint, never the key), where PPIO serves it",
            self.balance.clone(),
        );
        r.register(
            "runway_hours",
            "The account's available balance divided by the sum of the hourly cost of the key's running hourly-billed instances (absent when nothing runs or the balance is not served)",
            self.runway_hours.clone(),
        );
    }

    /// Sets a key's balance, and its runway at `burn` per hour (none while nothing burns).
    pub fn set(
        &self,
        key: &str,
        currency: Option<&str>,
        balance: crate::money::Amount,
        burn: crate::money::Amount,
    ) {
        let currency = currency.unwrap_or(UNKNOWN_CURRENCY).to_string();
        if let Some(old) = lock(&self.currencies).insert(key.to_string(), currency.clone())
            && old != currency
        {
            self.balance.remove(&BalanceLabels {
                key: key.into(),
                currency: old,
            });
        }
        self.balance
            .get_or_create(&BalanceLabels {
                key: key.into(),
                currency,
            })
            .set(balance.approx_f64());
        let labels = KeyLabels { key: key.into() };
        if burn.units > 0 {
            let scale = balance.scale.max(burn.scale);
            let hours = balance.at_scale(scale).units as f64 / burn.at_scale(scale).units as f64;
            self.runway_hours.get_or_create(&labels).set(hours);
        } else {
            self.runway_hours.remove(&labels);
        }
    }

    /// Drops a key's series (its books closed, or its balance is not served).
    pub fn forget(&self, key: &str) {
        if let Some(currency) = lock(&self.currencies).remove(key) {
            self.balance.remove(&BalanceLabels {
                key: key.into(),
                currency,
            });
        }
        self.runway_hours.remove(&KeyLabels { key: key.into() });
    }
}

/// Per-PpioInstance series, labelled by namespace and name.
#[derive(Default)]
pub struct InstanceMetrics {
    pub state: Family<StateLabels, Gauge>,
    pub ready: Family<ObjectLabels, Gauge>,
    pub synced: Family<ObjectLabels, Gauge>,
    pub last_success: Family<ObjectLabels, TimestampGauge>,
    pub price: Family<PriceLabels, Gauge>,
    pub prepaid_end: Family<ObjectLabels, Gauge>,
    /// 1 while `Synced` is not True, labelled with its reason; no series while it is True.
    pub not_synced: Family<ReasonLabels, Gauge>,
    /// The refresh interval each PpioInstance asks for, in seconds.
    pub refresh_interval: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    /// `status.cost.hourly`, where known.
    pub hourly_cost: Family<MoneyLabels, Gauge<f64, AtomicU64>>,
    /// `status.cost.monthToDate`, where known.
    pub month_to_date: Family<MoneyLabels, Gauge<f64, AtomicU64>>,
    /// The announced spot reclaim time.
    pub spot_reclaim: Family<ObjectLabels, Gauge>,
    /// The currency label of each object's money series.
    currencies: Mutex<std::collections::HashMap<ObjectLabels, String>>,
    /// The (safe) state label currently exported per object, to replace it on change.
    states: Mutex<std::collections::HashMap<ObjectLabels, String>>,
    /// The `Synced` reason currently exported per object (only while not True).
    reasons: Mutex<std::collections::HashMap<ObjectLabels, String>>,
    /// The labels of each PpioInstance with series, shared by all its series.
    labels: Mutex<std::collections::HashSet<ObjectLabels>>,
}

impl InstanceMetrics {
    fn register(&self, r: &mut Registry) {
        r.register("state", STATE_HELP, self.state.clone());
        r.register(
            "ready",
            "1 when the instance is running",
            self.ready.clone(),
        );
        r.register(
            "synced",
            "1 when the last poll succeeded",
            self.synced.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful poll",
            self.last_success.clone(),
        );
        r.register(
            "price",
            "Raw PPIO price integers by kind (instance, base, storage)",
            self.price.clone(),
        );
        r.register(
            "prepaid_end_time_seconds",
            "Unix time when the prepaid term ends (prepaid instances only)",
            self.prepaid_end.clone(),
        );
        r.register(
            "not_synced",
            "1 while the Synced condition is not True, labelled with its reason (Suspended, InstanceNotFound, RateLimited, ...); absent while it is True",
            self.not_synced.clone(),
        );
        r.register(
            "hourly_cost",
            "What the instance costs per hour at its current price (status.cost.hourly), where its unit could be calibrated",
            self.hourly_cost.clone(),
        );
        r.register(
            "spend_month_to_date",
            "What PPIO billed for the instance this calendar month, UTC (status.cost.monthToDate)",
            self.month_to_date.clone(),
        );
        r.register(
            "spot_reclaim_timestamp_seconds",
            "Unix time at which PPIO announced it reclaims the spot instance",
            self.spot_reclaim.clone(),
        );
        r.register(
            "refresh_interval_seconds",
            "The refresh interval the PpioInstance asks for (spec.refreshInterval, else the operator's default)",
            self.refresh_interval.clone(),
        );
    }

    /// The labels of a PpioInstance: the copy its series already share, or a new one.
    fn labels_of(&self, namespace: &str, name: &str) -> ObjectLabels {
        let probe = ObjectLabels::new(namespace, name);
        let mut labels = lock(&self.labels);
        match labels.get(&probe) {
            Some(known) => known.clone(),
            None => {
                labels.insert(probe.clone());
                probe
            }
        }
    }

    /// The series of when an instance was last observed (created on first use): setting
    /// the handle sets the series, without looking it up again.
    pub fn last_success_series(&self, namespace: &str, name: &str) -> TimestampGauge {
        let obj = self.labels_of(namespace, name);
        self.last_success.get_or_create(&obj).clone()
    }

    /// Records when an instance was last observed, when nothing else changed.
    pub fn observed_at(&self, namespace: &str, name: &str, at: std::time::SystemTime) {
        let obj = self.labels_of(namespace, name);
        self.last_success.get_or_create(&obj).set(unix_seconds(at));
    }

    /// Exports the per-instance series from a status; `refresh` is the interval the
    /// PpioInstance asks for.
    pub fn observe(
        &self,
        namespace: &str,
        name: &str,
        status: &PpioInstanceStatus,
        observed_at: Option<std::time::SystemTime>,
        refresh: std::time::Duration,
    ) {
        let obj = self.labels_of(namespace, name);
        self.refresh_interval
            .get_or_create(&obj)
            .set(refresh.as_secs_f64());
        let not_synced = status
            .condition(condition::SYNCED)
            .filter(|c| c.status != cstatus::TRUE)
            .map(|c| safe_label_value(&c.reason));
        one_labelled_series(
            &self.reasons,
            &self.not_synced,
            &obj,
            not_synced,
            reason_labels,
        );
        let is_true = |t: &str| {
            status
                .condition(t)
                .is_some_and(|c| c.status == cstatus::TRUE) as i64
        };
        self.ready
            .get_or_create(&obj)
            .set(is_true(condition::READY));
        self.synced
            .get_or_create(&obj)
            .set(is_true(condition::SYNCED));
        if let Some(at) = observed_at {
            self.last_success.get_or_create(&obj).set(unix_seconds(at));
        }
        // A status without a state keeps the last one exported.
        if let Some(state) = &status.state {
            one_labelled_series(
                &self.states,
                &self.state,
                &obj,
                Some(safe_label_value(state)),
                state_labels,
            );
        }
        self.observe_prepaid_end(&obj, status);
        self.observe_money(&obj, status);
        self.observe_pricing(&obj, status);
    }

    /// The end of a prepaid instance's term (none: no series).
    fn observe_prepaid_end(&self, obj: &ObjectLabels, status: &PpioInstanceStatus) {
        let prepaid_end = status
            .billing
            .as_ref()
            .and_then(|b| b.prepaid.as_ref())
            .and_then(|p| p.end_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        match prepaid_end {
            Some(t) => {
                self.prepaid_end.get_or_create(obj).set(t.as_second());
            }
            None => {
                self.prepaid_end.remove(obj);
            }
        }
    }

    /// The instance's prices by kind (a price not shown: no series).
    fn observe_pricing(&self, obj: &ObjectLabels, status: &PpioInstanceStatus) {
        let Some(p) = &status.pricing else {
            return;
        };
        for (kind, v) in [
            ("instance", p.instance_price),
            ("base", p.instance_base_price),
            ("storage", p.rootfs_storage_price),
        ] {
            let labels = PriceLabels {
                object: obj.clone(),
                kind,
            };
            match v {
                Some(v) => {
                    self.price.get_or_create(&labels).set(v);
                }
                None => {
                    self.price.remove(&labels);
                }
            }
        }
    }

    /// The money series of a status: hourly cost and month to date (by currency), and the
    /// spot reclaim time.
    fn observe_money(&self, obj: &ObjectLabels, status: &PpioInstanceStatus) {
        let cost = status.cost.as_ref();
        let currency = cost
            .and_then(|c| c.currency.clone())
            .unwrap_or_else(|| UNKNOWN_CURRENCY.to_string());
        let labels = MoneyLabels {
            object: obj.clone(),
            currency: currency.clone(),
        };
        if let Some(old) = lock(&self.currencies).insert(obj.clone(), currency)
            && old != labels.currency
        {
            self.forget_money(obj, &old);
        }
        for (family, value) in [
            (&self.hourly_cost, cost.and_then(|c| c.hourly.as_deref())),
            (
                &self.month_to_date,
                cost.and_then(|c| c.month_to_date.as_deref()),
            ),
        ] {
            match value.and_then(crate::money::Amount::parse) {
                Some(a) => {
                    family.get_or_create(&labels).set(a.approx_f64());
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
        let reclaim = status
            .pricing
            .as_ref()
            .and_then(|p| p.spot.as_ref())
            .and_then(|s| s.reclaim_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .filter(|_| {
                status.condition(condition::EXPIRING).is_some_and(|c| {
                    c.status == cstatus::TRUE
                        && c.reason == crate::vocabulary::reason::SPOT_RECLAIM_SCHEDULED
                })
            });
        match reclaim {
            Some(t) => {
                self.spot_reclaim.get_or_create(obj).set(t.as_second());
            }
            None => {
                self.spot_reclaim.remove(obj);
            }
        }
    }

    fn forget_money(&self, obj: &ObjectLabels, currency: &str) {
        let labels = MoneyLabels {
            object: obj.clone(),
            currency: currency.to_string(),
        };
        self.hourly_cost.remove(&labels);
        self.month_to_date.remove(&labels);
    }

    /// Removes every per-instance series (a replica that stopped leading no longer knows).
    pub fn forget_all(&self) {
        lock(&self.labels).clear();
        lock(&self.states).clear();
        lock(&self.reasons).clear();
        self.state.clear();
        self.not_synced.clear();
        self.refresh_interval.clear();
        self.ready.clear();
        self.synced.clear();
        self.last_success.clear();
        self.price.clear();
        self.prepaid_end.clear();
        lock(&self.currencies).clear();
        self.hourly_cost.clear();
        self.month_to_date.clear();
        self.spot_reclaim.clear();
    }

    /// Removes every series of a PpioInstance that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        let obj = ObjectLabels::new(namespace, name);
        lock(&self.labels).remove(&obj);
        if let Some(old) = lock(&self.states).remove(&obj) {
            self.state.remove(&state_labels(&obj, &old));
        }
        if let Some(old) = lock(&self.reasons).remove(&obj) {
            self.not_synced.remove(&reason_labels(&obj, &old));
        }
        self.refresh_interval.remove(&obj);
        self.ready.remove(&obj);
        self.synced.remove(&obj);
        self.last_success.remove(&obj);
        self.prepaid_end.remove(&obj);
        if let Some(currency) = lock(&self.currencies).remove(&obj) {
            self.forget_money(&obj, &currency);
        }
        self.spot_reclaim.remove(&obj);
        for kind in ["instance", "base", "storage"] {
            self.price.remove(&PriceLabels {
                object: obj.clone(),
                kind,
            });
        }
    }
}

/// The labels of a state series; `state` is already a [`safe_label_value`].
fn state_labels(obj: &ObjectLabels, state: &str) -> StateLabels {
    StateLabels {
        object: obj.clone(),
        state: state.into(),
    }
}

/// Keeps one series of `obj` in `family`, set to 1, labelled with `value` (already a
/// [`safe_label_value`]): the series of the value it had before is removed, and with `None`
/// it has none. `current` remembers each object's value.
fn one_labelled_series<L>(
    current: &Mutex<std::collections::HashMap<ObjectLabels, String>>,
    family: &Family<L, Gauge>,
    obj: &ObjectLabels,
    value: Option<String>,
    labels: fn(&ObjectLabels, &str) -> L,
) where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let mut current = lock(current);
    let old = match &value {
        Some(v) => current.insert(obj.clone(), v.clone()),
        None => current.remove(obj),
    };
    if let Some(old) = old.filter(|o| Some(o) != value.as_ref()) {
        family.remove(&labels(obj, &old));
    }
    if let Some(v) = &value {
        family.get_or_create(&labels(obj, v)).set(1);
    }
}

/// The labels of a not-synced series; `reason` is already a [`safe_label_value`].
fn reason_labels(obj: &ObjectLabels, reason: &str) -> ReasonLabels {
    ReasonLabels {
        object: obj.clone(),
        reason: reason.into(),
    }
}

/// Observes the elapsed time into a histogram when dropped.
pub struct Timer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

    #[test]
    fn every_metric_keeps_its_name() {
        let m = Metrics::new();
        m.controller.reconciled(true);
        m.api.request("2xx", 0.1);
        let status: PpioInstanceStatus = serde_json::from_value(serde_json::json!({
            "state": "running",
            "billing": {"mode": "prepaid", "prepaid": {"endTime": "2030-01-01T00:00:00Z"}},
            "pricing": {"instancePrice": 100},
            "conditions": [{
                "type": "Synced", "status": "False", "reason": "Suspended", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }))
        .expect("status");
        m.instances.observe(
            "ml",
            "a",
            &status,
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        let text = m.encode();
        for name in [
            "ppio_reconciles",
            "ppio_reconcile_duration_seconds",
            "ppio_api_requests",
            "ppio_api_request_duration_seconds",
            "ppio_status_writes",
            "ppio_status_writes_skipped",
            "ppio_backoffs",
            "ppio_leader",
            "ppio_instance_state",
            "ppio_instance_ready",
            "ppio_instance_synced",
            "ppio_instance_last_success_timestamp_seconds",
            "ppio_instance_price",
            "ppio_instance_prepaid_end_time_seconds",
            "ppio_instance_not_synced",
            "ppio_instance_refresh_interval_seconds",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("# TYPE ") && l.split_whitespace().nth(2) == Some(name)),
                "{name} missing from:\n{text}"
            );
        }
    }

    /// Every line of an exposition is a comment or `name{label="value",...} value`.
    fn assert_well_formed(text: &str) {
        let sample = regex::Regex::new(
            r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? [-+0-9.eEInfa]+$"#,
        )
        .expect("regex");
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ")
                        || line.starts_with("# TYPE ")
                        || line.starts_with("# UNIT ")
                        || line == "# EOF",
                    "bad comment line {line:?} in:\n{text}"
                );
            } else {
                assert!(sample.is_match(line), "bad line {line:?} in:\n{text}");
            }
        }
        assert_eq!(text.lines().filter(|l| *l == "# EOF").count(), 1);
        assert_eq!(text.lines().last(), Some("# EOF"));
    }

    fn state_status(state: &str) -> PpioInstanceStatus {
        serde_json::from_value(serde_json::json!({ "state": state })).expect("status")
    }

    #[test]
    fn a_hostile_state_cannot_break_the_scrape() {
        let m = Metrics::new();
        let hostile = "\"a\\\"b\nc{}";
        m.instances.observe(
            "ml",
            "a",
            &state_status(hostile),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        let injection =
            "x\"} 1\nppio_instance_ready{namespace=\"kube-system\",name=\"fake\"} 1\n# EOF\n";
        m.instances.observe(
            "ml",
            "b",
            &state_status(injection),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        let text = m.encode();
        assert_well_formed(&text);
        // Series of a family come out in no fixed order.
        let mut states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ppio_instance_state{"))
            .collect();
        states.sort();
        assert_eq!(
            states,
            [
                r#"ppio_instance_state{namespace="ml",name="a",state="_a__b_c__"} 1"#,
                r#"ppio_instance_state{namespace="ml",name="b",state="x___1_ppio_instance_ready_namespace__kube-system__name__fake___1"} 1"#,
            ],
            "{text}"
        );
        assert!(!text.contains("fake\"}"), "an injected series:\n{text}");
        let ready: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ppio_instance_ready{"))
            .collect();
        assert_eq!(ready.len(), 2, "{text}");
        assert!(
            ready.iter().all(|l| l.contains("namespace=\"ml\"")),
            "{text}"
        );
    }

    #[test]
    fn label_values_keep_safe_characters_and_are_capped() {
        assert_eq!(safe_label_value("running"), "running");
        assert_eq!(safe_label_value("Re-Start.v2:ok_1"), "Re-Start.v2:ok_1");
        assert_eq!(safe_label_value("a b\"c\\d\ne{}é"), "a_b_c_d_e___");
        assert_eq!(
            safe_label_value(&"x".repeat(100)).len(),
            MAX_LABEL_VALUE_CHARS
        );
        assert_eq!(safe_label_value(&"é".repeat(100)), "_".repeat(64));
        let m = Metrics::new();
        m.instances.observe(
            "ml",
            "a",
            &state_status("running"),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        let text = m.encode();
        assert!(
            text.contains(&format!("# HELP ppio_instance_state {STATE_HELP}")),
            "{text}"
        );
    }

    #[test]
    fn two_states_with_one_safe_form_keep_one_series() {
        let m = Metrics::new();
        m.instances.observe(
            "ml",
            "a",
            &state_status("a b"),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        m.instances.observe(
            "ml",
            "a",
            &state_status("a\"b"),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        m.instances.observe(
            "ml",
            "a",
            &state_status("running"),
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        let text = m.encode();
        // Series of a family come out in no fixed order.
        let mut states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ppio_instance_state{"))
            .collect();
        states.sort();
        assert_eq!(
            states,
            [r#"ppio_instance_state{namespace="ml",name="a",state="running"} 1"#]
        );
        m.instances.forget("ml", "a");
        assert!(!m.encode().contains("ppio_instance_state{"));
    }

    #[test]
    fn the_series_of_an_instance_share_its_labels_until_it_is_forgotten() {
        let m = Metrics::new();
        let status: PpioInstanceStatus = serde_json::from_value(serde_json::json!({
            "state": "running",
            "pricing": {"instancePrice": 100},
        }))
        .expect("status");
        m.instances.observe(
            "ml",
            "a",
            &status,
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        m.instances
            .observed_at("ml", "a", std::time::SystemTime::now());
        let first = m.instances.labels_of("ml", "a");
        let again = m.instances.labels_of("ml", "a");
        assert!(Arc::ptr_eq(&first.0, &again.0));
        assert_eq!(lock(&m.instances.labels).len(), 1);
        m.instances.forget("ml", "a");
        assert!(lock(&m.instances.labels).is_empty());
        assert!(!m.encode().contains("name=\"a\""));
    }

    #[test]
    fn forget_all_drops_every_instance_series() {
        let m = Metrics::new();
        let status: PpioInstanceStatus = serde_json::from_value(serde_json::json!({
            "state": "running",
            "billing": {"mode": "prepaid", "prepaid": {"endTime": "2030-01-01T00:00:00Z"}},
            "pricing": {"instancePrice": 100},
        }))
        .expect("status");
        m.instances.observe(
            "ml",
            "a",
            &status,
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        m.instances.observe(
            "ml",
            "b",
            &status,
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        m.controller.reconciled(true);
        m.instances.forget_all();
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ppio_instance_"))
            .collect();
        assert!(series.is_empty(), "{series:?}");
        assert!(
            text.contains("ppio_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        // Observed again, an instance gets one state series.
        m.instances.observe(
            "ml",
            "a",
            &status,
            Some(std::time::SystemTime::now()),
            MINUTE,
        );
        assert_eq!(m.encode().matches("ppio_instance_state{").count(), 1);
    }
}

#[cfg(test)]
mod not_synced_tests {
    use super::*;

    fn synced(status: &str, reason: &str) -> PpioInstanceStatus {
        serde_json::from_value(serde_json::json!({
            "state": "running",
            "conditions": [{
                "type": "Synced", "status": status, "reason": reason, "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }))
        .expect("status")
    }

    fn series(m: &Metrics, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = m
            .encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_not_synced_series_follows_the_reason_and_goes_when_synced() {
        let m = Metrics::new();
        let minute = std::time::Duration::from_secs(60);
        m.instances
            .observe("ml", "a", &synced("False", "Suspended"), None, minute);
        assert_eq!(
            series(&m, "ppio_instance_not_synced{"),
            [r#"ppio_instance_not_synced{namespace="ml",name="a",reason="Suspended"} 1"#]
        );
        m.instances
            .observe("ml", "a", &synced("False", "ApiUnavailable"), None, minute);
        assert_eq!(
            series(&m, "ppio_instance_not_synced{"),
            [r#"ppio_instance_not_synced{namespace="ml",name="a",reason="ApiUnavailable"} 1"#]
        );
        m.instances
            .observe("ml", "a", &synced("True", "Observed"), None, minute);
        assert_eq!(
            series(&m, "ppio_instance_not_synced{"),
            Vec::<String>::new()
        );
        assert_eq!(
            series(&m, "ppio_instance_refresh_interval_seconds{"),
            [r#"ppio_instance_refresh_interval_seconds{namespace="ml",name="a"} 60.0"#]
        );
        m.instances
            .observe("ml", "a", &synced("False", "RateLimited"), None, minute);
        m.instances.forget("ml", "a");
        assert_eq!(
            series(&m, "ppio_instance_not_synced{"),
            Vec::<String>::new()
        );
        assert_eq!(
            series(&m, "ppio_instance_refresh_interval_seconds{"),
            Vec::<String>::new()
        );
    }
}
