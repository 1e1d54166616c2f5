//! Prometheus metrics (OpenMetrics text), prefix `ppio_`.
//!
//! Operator metrics describe the controller itself; per-instance metrics carry only the
//! bounded labels `namespace` and `name` (plus `state` for the state series, and `kind` for
//! prices) and are removed when the PpioInstance goes away.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
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
use crate::status::condition;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub namespace: String,
    pub name: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriceLabels {
    pub namespace: String,
    pub name: String,
    pub kind: String,
}

/// All metrics of the operator.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub api_requests: Family<RequestLabels, Counter>,
    pub api_request_duration: Histogram,
    pub status_writes: Counter,
    pub status_writes_skipped: Counter,
    pub backoffs: Gauge,
    pub leader: Gauge,
    pub instance_state: Family<StateLabels, Gauge>,
    pub instance_ready: Family<ObjectLabels, Gauge>,
    pub instance_synced: Family<ObjectLabels, Gauge>,
    pub instance_last_success: Family<ObjectLabels, Gauge<f64, AtomicU64>>,
    pub instance_price: Family<PriceLabels, Gauge>,
    pub instance_prepaid_end: Family<ObjectLabels, Gauge>,
    /// The state label currently exported per object, to replace it on change.
    states: Mutex<std::collections::HashMap<ObjectLabels, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ppio");
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            api_requests: Family::default(),
            api_request_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            status_writes: Counter::default(),
            status_writes_skipped: Counter::default(),
            backoffs: Gauge::default(),
            leader: Gauge::default(),
            instance_state: Family::default(),
            instance_ready: Family::default(),
            instance_synced: Family::default(),
            instance_last_success: Family::default(),
            instance_price: Family::default(),
            instance_prepaid_end: Family::default(),
            states: Mutex::new(Default::default()),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "api_requests",
            "PPIO API requests by endpoint and status class (2xx, 4xx, 5xx, error)",
            m.api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Latency of PPIO API requests",
            m.api_request_duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status subresource writes",
            m.status_writes.clone(),
        );
        registry.register(
            "status_writes_skipped",
            "Status writes skipped because nothing changed",
            m.status_writes_skipped.clone(),
        );
        registry.register(
            "backoffs",
            "PpioInstances currently in error backoff",
            m.backoffs.clone(),
        );
        registry.register(
            "leader",
            "1 when this replica is the leader and reconciles",
            m.leader.clone(),
        );
        registry.register(
            "instance_state",
            "1 for the current PPIO state of each instance (label state)",
            m.instance_state.clone(),
        );
        registry.register(
            "instance_ready",
            "1 when the instance is running",
            m.instance_ready.clone(),
        );
        registry.register(
            "instance_synced",
            "1 when the last poll succeeded",
            m.instance_synced.clone(),
        );
        registry.register(
            "instance_last_success_timestamp_seconds",
            "Unix time of the last successful poll",
            m.instance_last_success.clone(),
        );
        registry.register(
            "instance_price",
            "Raw PPIO price integers by kind (instance, base, storage)",
            m.instance_price.clone(),
        );
        registry.register(
            "instance_prepaid_end_time_seconds",
            "Unix time when the prepaid term ends (prepaid instances only)",
            m.instance_prepaid_end.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Times a reconcile until the guard is dropped.
    pub fn reconcile_timer(&self) -> Timer<'_> {
        Timer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    /// Counts one PPIO request.
    pub fn api_request(&self, class: &str, seconds: f64) {
        self.api_requests
            .get_or_create(&RequestLabels {
                endpoint: "get_instance".into(),
                class: class.into(),
            })
            .inc();
        self.api_request_duration.observe(seconds);
    }

    /// Exports the per-instance series from a status.
    pub fn observe_instance(
        &self,
        namespace: &str,
        name: &str,
        status: &PpioInstanceStatus,
        polled_ok: bool,
    ) {
        let obj = ObjectLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        let is_true = |t: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True") as i64
        };
        self.instance_ready
            .get_or_create(&obj)
            .set(is_true(condition::READY));
        self.instance_synced
            .get_or_create(&obj)
            .set(is_true(condition::SYNCED));
        if polled_ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            self.instance_last_success.get_or_create(&obj).set(now);
        }
        if let Some(state) = &status.state {
            let mut states = lock(&self.states);
            if let Some(old) = states
                .insert(obj.clone(), state.clone())
                .filter(|o| o != state)
            {
                self.instance_state.remove(&state_labels(&obj, &old));
            }
            self.instance_state
                .get_or_create(&state_labels(&obj, state))
                .set(1);
        }
        let prepaid_end = status
            .billing
            .as_ref()
            .and_then(|b| b.prepaid.as_ref())
            .and_then(|p| p.end_time.as_deref())
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        match prepaid_end {
            Some(t) => {
                self.instance_prepaid_end
                    .get_or_create(&obj)
                    .set(t.as_second());
            }
            None => {
                self.instance_prepaid_end.remove(&obj);
            }
        }
        if let Some(p) = &status.pricing {
            for (kind, v) in [
                ("instance", p.instance_price),
                ("base", p.instance_base_price),
                ("storage", p.rootfs_storage_price),
            ] {
                let labels = PriceLabels {
                    namespace: namespace.into(),
                    name: name.into(),
                    kind: kind.into(),
                };
                match v {
                    Some(v) => {
                        self.instance_price.get_or_create(&labels).set(v);
                    }
                    None => {
                        self.instance_price.remove(&labels);
                    }
                }
            }
        }
    }

    /// Removes every series of a PpioInstance that is gone.
    pub fn forget_instance(&self, namespace: &str, name: &str) {
        let obj = ObjectLabels {
            namespace: namespace.into(),
            name: name.into(),
        };
        if let Some(old) = lock(&self.states).remove(&obj) {
            self.instance_state.remove(&state_labels(&obj, &old));
        }
        self.instance_ready.remove(&obj);
        self.instance_synced.remove(&obj);
        self.instance_last_success.remove(&obj);
        self.instance_prepaid_end.remove(&obj);
        for kind in ["instance", "base", "storage"] {
            self.instance_price.remove(&PriceLabels {
                namespace: namespace.into(),
                name: name.into(),
                kind: kind.into(),
            });
        }
    }
}

fn state_labels(obj: &ObjectLabels, state: &str) -> StateLabels {
    StateLabels {
        namespace: obj.namespace.clone(),
        name: obj.name.clone(),
        state: state.into(),
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
