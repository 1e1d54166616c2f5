//! Status as a pure function of (spec, observation, previous status).
//!
//! The same inputs always give the same status, byte for byte, so an unchanged instance (or a
//! repeated identical failure) produces no write. Nothing here reads a clock: `now` is passed
//! in and only lands in a condition's `lastTransitionTime` when that condition's status
//! changes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::{
    AutoMigrate, AutoRenew, Billing, Endpoints, Jupyter, LogEndpoints, MonthlyPrice, Network, Port,
    PpioInstanceStatus, Prepaid, PrepaidPricing, Pricing, Resources, Spot, Ssh, Volume,
    WebTerminal,
};
use crate::outcome::{Class, Progress};
use crate::ppio::{PpioError, wire};
use crate::vocabulary::{condition, reason, state, status as cstatus};

use crate::conditions::make_condition;
/// The longest text field copied from PPIO.
pub const MAX_TEXT_CHARS: usize = 1024;
/// The most entries of an array copied from PPIO (ports, volumes, GPU ids, prices).
pub const MAX_ITEMS: usize = 256;
/// The largest observation the status holds, in bytes of JSON (etcd refuses objects over
/// 1.5 MiB; a status is kept well below).
pub const MAX_STATUS_BYTES: usize = 256 * 1024;
/// The longest refresh annotation value echoed in `status.lastHandledRefresh`.
pub const MAX_REFRESH_TOKEN_CHARS: usize = 128;

/// Why a poll did not produce an observation: its class and a message built from a fixed
/// vocabulary (never response text, never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: Class,
    pub message: String,
}

impl From<&PpioError> for Failure {
    fn from(e: &PpioError) -> Failure {
        Failure {
            class: e.class(),
            message: e.to_string(),
        }
    }
}

impl Failure {
    pub fn credentials_missing(message: impl Into<String>) -> Failure {
        Failure {
            class: Class::CredentialsMissing,
            message: message.into(),
        }
    }
}

/// What one reconcile learned.
#[derive(Debug, Clone, Copy)]
pub enum Observation<'a> {
    /// PPIO returned the instance.
    Instance(&'a wire::Instance),
    /// The instance's item on a page of PPIO's LIST, which lacks `tools` and `pricing`: the
    /// fields those give (`pricing`, and the endpoints but `ports`) keep their stored values
    /// until the next GET.
    Listed(&'a wire::Instance),
    /// A LIST item of an instance not yet fetched in full: as [`Observation::Listed`], with
    /// `Reconciling=True FetchingDetails` until the first GET.
    ListedFirst(&'a wire::Instance),
    /// The poll failed (or could not be made).
    Failed(&'a Failure),
    /// `spec.suspend` is true: no poll was made.
    Suspended,
}

/// Computes the status to write.
///
/// * `instance_id`, `generation`: from the PpioInstance being reconciled.
/// * `refresh_request`: the value of its refresh annotation, if set; any poll answers it
///   (`lastHandledRefresh`), a suspended instance is not polled.
/// * `previous`: the status currently stored (its last good observation is kept on errors).
/// * `now`: used only as the `lastTransitionTime` of a condition whose status changes.
pub fn compute_status(
    instance_id: &str,
    generation: Option<i64>,
    refresh_request: Option<&str>,
    observation: Observation<'_>,
    previous: Option<&PpioInstanceStatus>,
    now: Timestamp,
) -> PpioInstanceStatus {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let again = |observation: Observation<'_>| {
        compute_status(
            instance_id,
            generation,
            refresh_request,
            observation,
            previous,
            now,
        )
    };
    let stored = previous;
    // An observation of another instance id (possible only if immutability was bypassed) is
    // not this instance's: start over.
    let previous = previous.filter(|p| p.instance_id.as_deref() == Some(instance_id));
    let settle = |status: PpioInstanceStatus| {
        Settle {
            instance_id,
            generation,
            refresh_request,
            stored,
            previous,
            now,
        }
        .status(status, observation)
    };
    match observation {
        Observation::ListedFirst(item) => {
            let mut listed = again(Observation::Listed(item));
            fetching_details(&mut listed, previous, generation, now);
            listed
        }
        Observation::Listed(item) => {
            let mut listed = again(Observation::Instance(item));
            if let Some(stored) = previous {
                keep_unlisted_fields(&mut listed, stored, item);
            }
            listed
        }
        Observation::Instance(instance) => {
            let observed = observed_fields(instance);
            match too_large(&observed) {
                Some(message) => again(Observation::Failed(&Failure {
                    class: Class::InvalidResponse,
                    message,
                })),
                None => settle(observed),
            }
        }
        _ => settle(previous.cloned().unwrap_or_default()),
    }
}

/// A status from a LIST item whose instance was never fetched in full: while it is synced,
/// `Reconciling=True FetchingDetails` until the first GET brings its endpoints and prices.
fn fetching_details(
    listed: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let synced = listed
        .condition(condition::SYNCED)
        .is_some_and(|c| c.status == cstatus::TRUE);
    let old = previous.and_then(|p| p.condition(condition::RECONCILING));
    if let Some(c) = listed
        .conditions
        .iter_mut()
        .filter(|_| synced)
        .find(|c| c.type_ == condition::RECONCILING)
    {
        *c = make_condition(
            old,
            condition::RECONCILING,
            cstatus::TRUE,
            reason::FETCHING_DETAILS,
            "The status comes from the instance's LIST item; its endpoints and prices come with its first full GET.",
            generation,
            now,
        );
    }
}

/// What the status of one observation is settled with.
struct Settle<'a> {
    instance_id: &'a str,
    generation: Option<i64>,
    refresh_request: Option<&'a str>,
    /// The stored status, whichever instance's (its `lastHandledRefresh` is kept).
    stored: Option<&'a PpioInstanceStatus>,
    /// The stored status, when it is this instance's.
    previous: Option<&'a PpioInstanceStatus>,
    now: Timestamp,
}

impl Settle<'_> {
    /// The status of an observation (a GET's answer, a failure, or a suspended poll) on top
    /// of `status`: the fields observed, or the previous status kept; the conditions follow.
    fn status(
        self,
        mut status: PpioInstanceStatus,
        observation: Observation<'_>,
    ) -> PpioInstanceStatus {
        let Settle {
            instance_id,
            generation,
            refresh_request,
            stored,
            previous,
            now,
        } = self;
        status.conditions = Vec::new();
        let old = |t: &str| previous.and_then(|p| p.condition(t));
        let cond = |type_: &str, st: &str, reason: &str, message: &str| {
            make_condition(old(type_), type_, st, reason, message, generation, now)
        };
        let keep_ready = || match old(condition::READY) {
            Some(c) if c.status == cstatus::TRUE || c.status == cstatus::FALSE => {
                cond(condition::READY, &c.status, &c.reason, &c.message)
            }
            _ => cond(
                condition::READY,
                cstatus::UNKNOWN,
                reason::NOT_OBSERVED,
                "The instance has not been observed yet.",
            ),
        };
        if matches!(observation, Observation::Failed(f) if f.class == Class::InstanceNotFound) {
            status.state = Some(state::NOT_FOUND.to_string());
        }
        let (ready, synced) =
            ready_and_synced(observation, status.state.as_deref(), &cond, &keep_ready);
        // The refresh request this poll answers, or the one answered before.
        status.last_handled_refresh = match observation {
            Observation::Suspended => None,
            _ => refresh_request.map(refresh_token),
        }
        .or_else(|| stored.and_then(|p| p.last_handled_refresh.clone()));
        status.observed_generation = generation;
        status.instance_id = Some(instance_id.to_string());
        let (reconciling, stalled) =
            progress_conditions(observation, status.state.as_deref(), &cond);
        status.conditions = vec![ready, synced, reconciling, stalled];
        status
    }
}

/// The conditions `Ready` and `Synced` of an observation (`observed`: the state the status
/// shows), built by `cond`; `keep_ready`: `Ready` as it was, for an observation that tells
/// nothing of the instance's state.
fn ready_and_synced(
    observation: Observation<'_>,
    observed: Option<&str>,
    cond: &dyn Fn(&str, &str, &str, &str) -> Condition,
    keep_ready: &dyn Fn() -> Condition,
) -> (Condition, Condition) {
    match observation {
        Observation::Failed(failure) if failure.class == Class::InstanceNotFound => (
            cond(
                condition::READY,
                cstatus::FALSE,
                reason::INSTANCE_NOT_FOUND,
                "The instance no longer exists in PPIO.",
            ),
            cond(
                condition::SYNCED,
                cstatus::FALSE,
                failure.class.reason(),
                &failure.message,
            ),
        ),
        Observation::Failed(failure) => (
            keep_ready(),
            cond(
                condition::SYNCED,
                cstatus::FALSE,
                failure.class.reason(),
                &failure.message,
            ),
        ),
        Observation::Suspended => (
            keep_ready(),
            cond(
                condition::SYNCED,
                cstatus::FALSE,
                reason::SUSPENDED,
                "Polling is suspended (spec.suspend is true); status shows the last observation.",
            ),
        ),
        // A GET's answer (LIST items come here as one, from compute_status).
        Observation::Instance(_) | Observation::Listed(_) | Observation::ListedFirst(_) => {
            let observed = observed.unwrap_or_default();
            let ready = if observed == state::RUNNING {
                cond(
                    condition::READY,
                    cstatus::TRUE,
                    reason::RUNNING,
                    "The instance is running.",
                )
            } else {
                cond(
                    condition::READY,
                    cstatus::FALSE,
                    reason::NOT_RUNNING,
                    &format!("The instance is {observed}, not running."),
                )
            };
            let synced = cond(
                condition::SYNCED,
                cstatus::TRUE,
                reason::OBSERVED,
                "The last poll of the PPIO API succeeded.",
            );
            (ready, synced)
        }
    }
}

/// The kstatus conditions `Reconciling` and `Stalled` of an outcome, built by `cond`.
fn progress_conditions(
    observation: Observation<'_>,
    observed_state: Option<&str>,
    cond: &dyn Fn(&str, &str, &str, &str) -> Condition,
) -> (Condition, Condition) {
    let reconciling =
        |st: &str, reason: &str, message: &str| cond(condition::RECONCILING, st, reason, message);
    let stalled =
        |st: &str, reason: &str, message: &str| cond(condition::STALLED, st, reason, message);
    const NOT_STALLED: &str = "Nothing keeps the operator from observing the instance.";
    match observation {
        Observation::Instance(_) | Observation::Listed(_) | Observation::ListedFirst(_) => {
            let st = observed_state.unwrap_or_default();
            let r = if state::is_transitional(st) {
                reconciling(
                    cstatus::TRUE,
                    reason::TRANSITIONING,
                    &format!("The instance is {st}; it is polled every 10s until it settles."),
                )
            } else {
                reconciling(
                    cstatus::FALSE,
                    reason::OBSERVED,
                    "The observation is current.",
                )
            };
            (r, stalled(cstatus::FALSE, reason::OBSERVED, NOT_STALLED))
        }
        Observation::Failed(f) => {
            let why = f.class.reason();
            match f.class.progress() {
                Progress::Stalled => (
                    reconciling(
                        cstatus::FALSE,
                        why,
                        "The operator waits for a change to the instance, its spec or its credentials.",
                    ),
                    stalled(cstatus::TRUE, why, &f.message),
                ),
                _ => (
                    reconciling(cstatus::TRUE, why, &f.message),
                    stalled(cstatus::FALSE, why, NOT_STALLED),
                ),
            }
        }
        Observation::Suspended => (
            reconciling(
                cstatus::FALSE,
                reason::SUSPENDED,
                "Polling is suspended (spec.suspend is true).",
            ),
            stalled(cstatus::FALSE, reason::SUSPENDED, NOT_STALLED),
        ),
    }
}

/// Vendor text as status shows it: no control characters, at most [`MAX_TEXT_CHARS`]
/// characters, omitted when empty.
fn text(t: &Option<wire::Text>) -> Option<String> {
    t.as_ref()
        .map(|t| clean_text(&t.0, MAX_TEXT_CHARS))
        .filter(|s| !s.is_empty())
}

/// `s` without control characters, cut to `max` characters.
pub fn clean_text(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The value of the refresh annotation as `status.lastHandledRefresh` echoes it (and as the
/// operator compares it): cleaned and cut to [`MAX_REFRESH_TOKEN_CHARS`] characters.
pub fn refresh_token(annotation: &str) -> String {
    clean_text(annotation, MAX_REFRESH_TOKEN_CHARS)
}

/// Why an observation cannot be mirrored, if it cannot: an array over [`MAX_ITEMS`] entries or
/// a status over [`MAX_STATUS_BYTES`].
fn too_large(status: &PpioInstanceStatus) -> Option<String> {
    let endpoints = status.endpoints.as_ref();
    let arrays = [
        ("ports", endpoints.map_or(0, |e| e.ports.len())),
        ("volumes", status.volumes.len()),
        (
            "resource_specs.gpu_ids",
            status.resources.as_ref().map_or(0, |r| r.gpu_ids.len()),
        ),
        (
            "pricing.prepaid.monthly_price",
            status
                .pricing
                .as_ref()
                .and_then(|p| p.prepaid.as_ref())
                .map_or(0, |p| p.monthly_price.len()),
        ),
    ];
    if let Some((field, _)) = arrays.iter().find(|(_, n)| *n > MAX_ITEMS) {
        return Some(format!(
            "The PPIO API response lists more than {MAX_ITEMS} {field}; the status keeps the last observation that fits."
        ));
    }
    let bytes = serde_json::to_vec(status).map_or(usize::MAX, |v| v.len());
    (bytes > MAX_STATUS_BYTES).then(|| {
        format!(
            "The PPIO API response would make a status over {} KiB; the status keeps the last observation that fits.",
            MAX_STATUS_BYTES / 1024
        )
    })
}

fn int(i: &Option<wire::Int>) -> Option<i64> {
    i.map(|i| i.0)
}

fn flag(f: &Option<wire::Flag>) -> Option<bool> {
    f.map(|f| f.0)
}

/// RFC 3339 (UTC, seconds) from Unix seconds; 0, negative or absent is omitted.
pub fn rfc3339(unix: &Option<wire::Int>) -> Option<String> {
    let secs = int(unix).filter(|s| *s > 0)?;
    Timestamp::from_second(secs).ok().map(|t| t.to_string())
}

/// `Some(v)` unless `v` is the default (all fields absent).
fn some_unless_empty<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// Fields of the status that are not the observation itself: never taken over from the stored
/// status by [`keep_unlisted_fields`].
const NOT_OBSERVED: [&str; 6] = [
    "conditions",
    "observedGeneration",
    "instanceId",
    "lastHandledRefresh",
    "stateError",
    "stateMessage",
];

/// A LIST item is partial: every field of `status` that the item left out keeps its stored
/// value (`pricing` and the `tools` endpoints, which no item carries, and whatever else an
/// item lacks), so only what the item carries can change the status. `stateError` and
/// `stateMessage` follow the item's `status` block: cleared when it carries them empty, kept
/// when it leaves them out. A field PPIO empties is shown empty by the next GET, which a
/// changed item asks for.
fn keep_unlisted_fields(
    status: &mut PpioInstanceStatus,
    stored: &PpioInstanceStatus,
    item: &wire::Instance,
) {
    let (Ok(mut listed), Ok(kept)) = (serde_json::to_value(&*status), serde_json::to_value(stored))
    else {
        return;
    };
    fill_absent(&mut listed, &kept, true);
    let Ok(mut merged) = serde_json::from_value::<PpioInstanceStatus>(listed) else {
        return;
    };
    let block = item.status.as_ref();
    if block.is_none_or(|b| b.error.is_none()) {
        merged.state_error = stored.state_error.clone();
    }
    if block.is_none_or(|b| b.message.is_none()) {
        merged.state_message = stored.state_message.clone();
    }
    *status = merged;
}

/// Copies into the JSON object `into` each member of `from` it lacks, into nested objects too.
/// At the top (`top`), the members that are not the observation are left alone.
fn fill_absent(into: &mut serde_json::Value, from: &serde_json::Value, top: bool) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return;
    };
    for (key, value) in from {
        if top && NOT_OBSERVED.contains(&key.as_str()) {
            continue;
        }
        match into.get_mut(key) {
            Some(present) => fill_absent(present, value, false),
            None => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

fn observed_fields(i: &wire::Instance) -> PpioInstanceStatus {
    let state = i.status.as_ref();
    PpioInstanceStatus {
        state: state.and_then(|s| text(&s.status)),
        state_error: state.and_then(|s| text(&s.error)),
        state_message: state.and_then(|s| text(&s.message)),
        name: text(&i.name),
        r#type: text(&i.r#type),
        product_id: text(&i.product_id),
        image: text(&i.image),
        registry_auth_id: text(&i.registry_auth_id),
        region: text(&i.region),
        region_version: text(&i.region_version),
        owner_id: text(&i.owner_id),
        member_id: text(&i.member_id),
        created_at: rfc3339(&i.created_at),
        last_started_at: rfc3339(&i.last_started_at),
        last_stopped_at: rfc3339(&i.last_stopped_at),
        resources: i.resource_specs.as_ref().and_then(|r| {
            some_unless_empty(Resources {
                gpu_num: int(&r.gpu_num),
                cpu_num: int(&r.cpu_num),
                memory_gb: int(&r.memory_gb),
                rootfs_size_gb: int(&r.rootfs_size_gb),
                gpu_ids: r.gpu_ids.iter().flatten().map(|g| g.0).collect(),
            })
        }),
        network: i.network.as_ref().and_then(|n| {
            some_unless_empty(Network {
                id: text(&n.id),
                ip: text(&n.ip),
            })
        }),
        volumes: i
            .volumes
            .iter()
            .flatten()
            .map(|v| Volume {
                r#type: text(&v.r#type),
                id: text(&v.id),
                mount_point: text(&v.mount_point),
            })
            .filter(|v| *v != Volume::default())
            .collect(),
        billing: i.billing.as_ref().and_then(billing),
        auto_migrate: i.auto_migrate.as_ref().and_then(|a| {
            some_unless_empty(AutoMigrate {
                enabled: flag(&a.enabled),
                include_system_disk: flag(&a.include_system_disk),
            })
        }),
        endpoints: endpoints(i),
        pricing: i.pricing.as_ref().and_then(pricing),
        ..PpioInstanceStatus::default()
    }
}

fn billing(b: &wire::Billing) -> Option<Billing> {
    some_unless_empty(Billing {
        mode: text(&b.mode),
        prepaid: b.prepaid.as_ref().and_then(|p| {
            some_unless_empty(Prepaid {
                months: int(&p.months),
                end_time: rfc3339(&p.end_time),
                auto_renew: p.auto_renew.as_ref().and_then(|a| {
                    some_unless_empty(AutoRenew {
                        enabled: flag(&a.enabled),
                        months: int(&a.months),
                        status: text(&a.status),
                    })
                }),
            })
        }),
    })
}

/// The instance's ports and tools; never a password.
fn endpoints(i: &wire::Instance) -> Option<Endpoints> {
    let tools = i.tools.as_ref();
    some_unless_empty(Endpoints {
        ports: i
            .ports
            .iter()
            .flatten()
            .map(|p| Port {
                port: int(&p.port),
                protocol: text(&p.protocol),
                endpoint: text(&p.endpoint),
            })
            .filter(|p| *p != Port::default())
            .collect(),
        jupyter: tools.and_then(|t| t.jupyter.as_ref()).and_then(|j| {
            some_unless_empty(Jupyter {
                endpoint: text(&j.endpoint),
                enabled: flag(&j.enabled),
                port: int(&j.port),
            })
        }),
        ssh: tools.and_then(|t| t.ssh.as_ref()).and_then(|s| {
            some_unless_empty(Ssh {
                command: text(&s.command),
                username: text(&s.username),
            })
        }),
        web_terminal: tools.and_then(|t| t.web_terminal.as_ref()).and_then(|w| {
            some_unless_empty(WebTerminal {
                endpoint: text(&w.endpoint),
                enabled: flag(&w.enabled),
                username: text(&w.username),
            })
        }),
        log: tools.and_then(|t| t.log.as_ref()).and_then(|l| {
            some_unless_empty(LogEndpoints {
                instance_endpoint: text(&l.instance_endpoint),
                system_endpoint: text(&l.system_endpoint),
            })
        }),
    })
}

fn pricing(p: &wire::Pricing) -> Option<Pricing> {
    some_unless_empty(Pricing {
        instance_price: int(&p.instance_price),
        instance_base_price: int(&p.instance_base_price),
        rootfs_storage_price: int(&p.rootfs_storage_price),
        prepaid: p.prepaid.as_ref().and_then(|pp| {
            some_unless_empty(PrepaidPricing {
                monthly_price: pp
                    .monthly_price
                    .iter()
                    .flatten()
                    .map(|m| MonthlyPrice {
                        month: int(&m.month),
                        price: int(&m.price),
                        base_price: int(&m.base_price),
                        price_precision: int(&m.price_precision),
                        month_spec_id: text(&m.month_spec_id),
                    })
                    .filter(|m| *m != MonthlyPrice::default())
                    .collect(),
            })
        }),
        spot: p.spot.as_ref().and_then(|s| {
            some_unless_empty(Spot {
                status: text(&s.spot_status),
                reclaim_time: rfc3339(&s.spot_reclaim_time),
            })
        }),
    })
}
