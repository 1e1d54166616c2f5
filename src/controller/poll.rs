//! One poll: resolve the key, respect the key's pause and budget, fetch the instance, record
//! the outcome in status, and decide when to look again.

use std::time::Duration;

use tokio::time::Instant;

use tracing::debug;

use super::apply::write_status;
use super::credentials::{SECRET_TTL, resolve_key};
use super::schedule::{
    CONFIRM_GONE, GONE_POLL, MAX_KEY_PAUSE, backoff, jitter, jitter_up, poll_interval,
};
use super::{Context, Error};
use kube::ResourceExt;

use crate::crd::PpioInstance;
use crate::outcome::Retry;
use crate::ppio::PpioError;
use crate::status::{Failure, Observation};
use crate::vocabulary::state;

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
    /// The request slot reserved in the key's budget for the next poll (it waits for it
    /// outside any reconcile slot and uses it when it comes back).
    pub reserved: Option<Instant>,
}

/// What a poll needs to know of the polls before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The last poll answered "not found" and was not reported yet.
    pub gone_suspected: bool,
    /// A request slot reserved earlier in the key's budget.
    pub reserved: Option<Instant>,
    /// When this poll was due (its interval), to measure how late it runs.
    pub due: Option<Instant>,
}

impl From<u32> for History {
    fn from(failures: u32) -> History {
        History {
            failures,
            ..History::default()
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
        reserved,
        due,
    } = history.into();
    if instance.spec.suspend == Some(true) {
        let wrote = write_status(instance, ctx, Observation::Suspended).await?;
        return Ok(Polled {
            next: None,
            failures: 0,
            wrote,
            requested: false,
            gone_suspected: false,
            reserved: None,
        });
    }

    let api_key = match resolve_key(instance, ctx).await? {
        Ok(k) => k,
        Err(failure) => {
            let wrote = write_status(instance, ctx, Observation::Failed(&failure)).await?;
            let failures = failures + 1;
            // Checked again at least every SECRET_TTL: a Secret created or marked later is
            // used within about a minute, whatever the backoff has grown to.
            return Ok(Polled {
                next: Some(backoff(failures).min(SECRET_TTL)),
                failures,
                wrote,
                requested: false,
                gone_suspected: false,
                reserved: None,
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
            reserved: None,
        });
    }

    // The key's budget: a slot reserved earlier, or the next free one. A poll never waits for
    // its slot inside a reconcile (that would hold a concurrency slot and delay every other
    // key): it comes back when the slot is due, and keeps it until then.
    let fingerprint = ctx.fingerprint(&api_key);
    let slot = reserved
        .unwrap_or_else(|| now + ctx.buckets.reserve(ctx.settings.budget, fingerprint, now));
    if slot > now {
        return Ok(Polled {
            next: Some(slot - now),
            failures,
            wrote: false,
            requested: false,
            gone_suspected,
            reserved: Some(slot),
        });
    }
    if let Some(due) = due {
        ctx.record_lateness(fingerprint, now.saturating_duration_since(due), refresh);
    }
    let mut result = get_instance(ctx, &api_key, instance).await;
    if matches!(result, Err(PpioError::Unauthorized))
        && let Some(sref) = &instance.spec.credentials_secret_ref
    {
        // The key may just have been rotated: read the Secret again now, and try once more
        // when it holds another key.
        ctx.secrets
            .forget(&instance.namespace().unwrap_or_default(), &sref.name);
        if let Ok(Ok(fresh)) = resolve_key(instance, ctx).await
            && fresh != api_key
        {
            result = get_instance(ctx, &fresh, instance).await;
        }
    }
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
                        reserved: None,
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
                // A refused key from a Secret is tried again within a minute: the Secret
                // may be rotated by then (it is read again at each such poll).
                _ if matches!(e, PpioError::Unauthorized)
                    && instance.spec.credentials_secret_ref.is_some() =>
                {
                    (backoff(failures + 1).min(2 * SECRET_TTL), failures + 1)
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
        reserved: None,
    })
}

/// `GET /gpus/v2/instances/{id}`, counted in the request metrics.
async fn get_instance(
    ctx: &Context,
    key: &crate::ppio::ApiKey,
    instance: &PpioInstance,
) -> Result<crate::ppio::Instance, PpioError> {
    let start = Instant::now();
    let result = ctx.ppio.get_instance(key, &instance.spec.instance_id).await;
    let class = result
        .as_ref()
        .map_or_else(PpioError::request_class, |_| "2xx");
    ctx.metrics
        .api
        .request(class, start.elapsed().as_secs_f64());
    result
}

/// True when the stored status already reports the instance gone.
fn reported_gone(instance: &PpioInstance) -> bool {
    instance
        .status
        .as_ref()
        .is_some_and(|s| s.state.as_deref() == Some(state::NOT_FOUND))
}
