//! The status write: computed from the observation, applied (a forced server-side apply
//! under the operator's field manager) only when it differs from the stored status.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use tracing::debug;

use super::events::{log_transitions, publish_events, transitions};
use super::{Context, Error, FIELD_MANAGER, KUBE_CALL_TIMEOUT, refresh_request};
use crate::crd::{PpioInstance, PpioInstanceStatus};
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
    let polled_ok = matches!(
        observation,
        Observation::Instance(_) | Observation::Listed(_) | Observation::ListedFirst(_)
    ) && new
        .condition(condition::SYNCED)
        .is_some_and(|c| c.status == crate::vocabulary::status::TRUE);
    let observed_at = observed_at.filter(|_| polled_ok).map(super::wall_time);
    ctx.metrics.instances.observe(
        &instance.namespace().unwrap_or_default(),
        &instance.name_any(),
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
