//! Transitions worth a log line and an Event (never one per poll), and publishing them.

use kube::Resource;
use tracing::{info, warn};

use super::{Context, KUBE_CALL_TIMEOUT};
use crate::crd::{PpioInstance, PpioInstanceStatus};
use crate::outcome::{Class, Severity};
use crate::vocabulary::{condition, event, reason, state};

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
    /// `Expiring` turned True, or its reason changed while True: a spot reclaim announced, a
    /// prepaid term without auto-renew ending soon.
    Expiring { reason: String, message: String },
    /// `Stalled` turned True with `UnexpectedState`: the instance drifted from
    /// `spec.expect.state` past the grace period.
    Drifted { message: String },
    /// `Exported` turned False, or its reason changed while False: an export could not be
    /// written (a name taken, an address refused, exports off).
    ExportFailed { reason: String, message: String },
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
    let expiring = |s: Option<&PpioInstanceStatus>| {
        s?.condition(condition::EXPIRING)
            .filter(|c| c.status == crate::vocabulary::status::TRUE)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let drifted = |s: Option<&PpioInstanceStatus>| {
        s?.condition(condition::STALLED)
            .filter(|c| {
                c.status == crate::vocabulary::status::TRUE && c.reason == reason::UNEXPECTED_STATE
            })
            .map(|c| c.message.clone())
    };
    if let Some(message) = drifted(Some(new))
        && drifted(old).is_none()
    {
        out.push(Transition::Drifted { message });
    }
    if let Some((reason, message)) = expiring(Some(new))
        && expiring(old).map(|(r, _)| r) != Some(reason.clone())
    {
        out.push(Transition::Expiring { reason, message });
    }
    let export_failed = |s: Option<&PpioInstanceStatus>| {
        s?.condition(condition::EXPORTED)
            .filter(|c| c.status == crate::vocabulary::status::FALSE)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = export_failed(Some(new))
        && export_failed(old).map(|(r, _)| r) != Some(reason.clone())
    {
        out.push(Transition::ExportFailed { reason, message });
    }
    out
}

/// Logs each transition (info for good news, warn for failures).
pub(super) fn log_transitions(
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
            Transition::Drifted { message } => {
                warn!(
                    detail = message.as_str(),
                    "instance drifted from spec.expect"
                )
            }
            Transition::Expiring { reason, message } => {
                warn!(
                    reason = reason.as_str(),
                    detail = message.as_str(),
                    "instance expiring"
                )
            }
            Transition::ExportFailed { reason, message } => {
                warn!(
                    reason = reason.as_str(),
                    detail = message.as_str(),
                    "export not written"
                )
            }
        }
    }
}

/// Publishes an Event per transition; a failure to publish is logged, never fatal.
pub(super) async fn publish_events(ctx: &Context, instance: &PpioInstance, list: &[Transition]) {
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
                note: Some(crate::conditions::bounded(&format!(
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
            Transition::Drifted { message } => Event {
                type_: EventType::Warning,
                reason: reason::UNEXPECTED_STATE.into(),
                note: Some(message.clone()),
                action: event::ACTION_OBSERVE.into(),
                secondary: None,
            },
            Transition::Expiring { reason, message } => Event {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: Some(message.clone()),
                action: event::ACTION_OBSERVE.into(),
                secondary: None,
            },
            Transition::ExportFailed { reason, message } => Event {
                type_: EventType::Warning,
                reason: reason.clone(),
                note: Some(message.clone()),
                action: event::ACTION_EXPORT.into(),
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
