//! The status write: computed from the observation, applied (a forced server-side apply
//! under the operator's field manager) only when it differs from the stored status.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use tracing::debug;

use super::events::{log_transitions, publish_events, transitions};
use super::{Context, Error, FIELD_MANAGER, KUBE_CALL_TIMEOUT, refresh_request};
use crate::crd::{PpioInstance, PpioInstanceStatus};
use crate::expect::apply_expectation;
use crate::money::status::apply_money;
use crate::status::{Observation, compute_status};
use crate::vocabulary::condition;

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
pub(super) async fn write_status(
    instance: &PpioInstance,
    ctx: &Context,
    observation: Observation<'_>,
    observed_at: Option<tokio::time::Instant>,
) -> Result<bool, Error> {
    let new = compute_status(
        &instance.spec.instance_id,
        instance.meta().generation,
        refresh_request(instance),
        observation,
        instance.status.as_ref(),
        jiff::Timestamp::now(),
    );
    // Metrics follow what is stored: only once the write succeeded or was not needed.
    let polled_ok = matches!(
        observation,
        Observation::Instance(_) | Observation::Listed(_) | Observation::ListedFirst(_)
    ) && new
        .condition(condition::SYNCED)
        .is_some_and(|c| c.status == crate::vocabulary::status::TRUE);
    let observed_at = observed_at.filter(|_| polled_ok).map(super::wall_time);
    let fetched = match observation {
        Observation::Instance(i) => Some(i),
        _ => None,
    };
    record(instance, ctx, new, observed_at, fetched).await
}

/// Computes the money part of the stored status again (the key's catalogue or bills changed,
/// or the `Expiring` condition changes by itself now), without a new observation. Returns
/// whether a write happened.
pub(super) async fn rerender(instance: &PpioInstance, ctx: &Context) -> Result<bool, Error> {
    let Some(stored) = instance
        .status
        .as_ref()
        .filter(|s| s.instance_id.as_deref() == Some(instance.spec.instance_id.as_str()))
    else {
        return Ok(false);
    };
    record(instance, ctx, stored.clone(), None, None).await
}

/// Adds the money part to a computed status, brings the exports in line with it, and records
/// it: the instance's metrics, the
/// write (only when the status changed), then a log line and an Event per transition.
async fn record(
    instance: &PpioInstance,
    ctx: &Context,
    mut new: PpioInstanceStatus,
    observed_at: Option<std::time::SystemTime>,
    fetched: Option<&crate::ppio::Instance>,
) -> Result<bool, Error> {
    let current = instance.status.as_ref();
    let (ns, name) = (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    );
    let snapshot = ctx.ledger.snapshot((&ns, &name));
    let view = ctx.ledger.view(snapshot.as_ref());
    let now = jiff::Timestamp::now();
    let money_change = apply_money(&mut new, current, &view, now);
    let drift = apply_expectation(&mut new, current, instance.spec.expect.as_ref(), now);
    // When the status changes by itself: computed again then.
    let next_change = match (money_change, drift) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    super::export::export(instance, ctx, &mut new, current, fetched).await;
    let wrote = apply_status(instance, ctx, &new).await?;
    ctx.ledger.rendered(
        (&ns, &name),
        snapshot.map_or(0, |s| s.version),
        next_change,
        hourly_burn(&new),
    );
    ctx.metrics.instances.observe(
        &ns,
        &name,
        &new,
        observed_at,
        super::refresh_interval(instance, ctx.settings.default_refresh),
    );
    if !wrote {
        return Ok(false);
    }
    let changes = transitions(current, &new);
    log_transitions(current, &new, &changes);
    publish_events(ctx, instance, &changes).await;
    Ok(true)
}

/// The hourly cost a status adds to its key's burn rate: a running instance billed by the
/// hour (postpaid or spot) with a calibrated cost.
fn hourly_burn(status: &PpioInstanceStatus) -> Option<crate::money::Amount> {
    let mode = status.billing.as_ref().and_then(|b| b.mode.as_deref());
    (status.state.as_deref() == Some(crate::vocabulary::state::RUNNING)
        && matches!(mode, Some("postpaid" | "spot")))
    .then(|| status.cost.as_ref()?.hourly.as_deref())
    .flatten()
    .and_then(crate::money::Amount::parse)
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
