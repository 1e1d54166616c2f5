//! One poll: resolve the key, respect the key's pause and budget, observe the instance (from
//! the key's sweeps, or by a GET), record the outcome in status, and decide when to look again.

use std::time::Duration;

use tokio::time::Instant;

use kube::Resource;
use tracing::debug;

use super::apply::write_status;
use super::budget::Reservation;
use super::credentials::{SECRET_TTL, resolve_key};
use super::schedule::{
    CONFIRM_GONE, GONE_POLL, MAX_KEY_PAUSE, backoff, jitter, jitter_up, poll_interval,
};
use super::sweep::{LISTED_RECHECK_INTERVALS, Lookup, Observe, SWEEP_WAIT};
use super::{Context, Error};
use kube::ResourceExt;

use crate::crd::PpioInstance;
use crate::outcome::Retry;
use crate::ppio::{Instance, PpioError};
use crate::status::{Failure, Observation};
use crate::vocabulary::state;

/// What the controller keeps of the last observation of a PpioInstance, between polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// The digest ([`super::sweep::Sweeps::digest`]) of the last LIST item taken; an item that
    /// differs from it asks for a GET. `None`: none yet (the next item is taken as it is).
    pub observed: Option<u64>,
    /// Its state, as status shows it.
    pub state: Option<String>,
    /// When PPIO sent it.
    pub observed_at: Option<Instant>,
    /// The digest of the LIST item the stored status shows.
    pub listed: Option<u64>,
    /// Whether a GET observed the instance since start-up.
    pub fetched: bool,
    /// When the next full GET is due.
    pub full_due: Option<Instant>,
    /// A GET is wanted (first sight, a LIST item that changed).
    pub get_wanted: bool,
}

/// The outcome of one poll.
#[derive(Debug, Clone, PartialEq)]
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
    pub reserved: Option<Reservation>,
    /// The observation kept for the next poll.
    pub seen: Seen,
    /// The next reconcile polls, however early it comes: it waits for a walk over the key's
    /// LIST (which reconciles it when it ends), or for the watch to bring back the status it
    /// just wrote (a GET follows on top of that status, not of the one before).
    pub poll_on_wake: bool,
}

impl Polled {
    /// A poll that sent its request and is done with it.
    fn sent(next: Duration, failures: u32, wrote: bool, seen: Seen) -> Polled {
        Polled {
            next: Some(next),
            failures,
            wrote,
            requested: true,
            gone_suspected: false,
            reserved: None,
            seen,
            poll_on_wake: false,
        }
    }
}

/// What a poll needs to know of the polls before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Consecutive failures so far.
    pub failures: u32,
    /// The last poll answered "not found" and was not reported yet.
    pub gone_suspected: bool,
    /// A request slot reserved earlier in the key's budget.
    pub reserved: Option<Reservation>,
    /// When this poll was due (its interval), to measure how late it runs.
    pub due: Option<Instant>,
    /// The refresh annotation asks for this poll: a GET, whatever sweeps know.
    pub forced: bool,
    /// The last observation.
    pub seen: Seen,
}

impl From<u32> for History {
    fn from(failures: u32) -> History {
        History {
            failures,
            ..History::default()
        }
    }
}

/// One poll, whatever the timing: resolve the key, observe the instance (from the key's
/// sweeps, or by a GET), write the status if it changed, and decide the delay to the next
/// poll. `history`: what earlier polls left (a plain number is the count of consecutive
/// failures).
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
        forced,
        mut seen,
    } = history.into();
    let waiting = |next: Duration, reserved: Option<Reservation>, wrote: bool, seen: Seen| Polled {
        next: Some(next),
        failures,
        wrote,
        requested: false,
        gone_suspected,
        reserved,
        seen,
        poll_on_wake: false,
    };
    if instance.spec.suspend == Some(true) {
        forget_sweeps(instance, ctx);
        let wrote = write_status(instance, ctx, Observation::Suspended, None).await?;
        return Ok(Polled {
            next: None,
            failures: 0,
            wrote,
            requested: false,
            gone_suspected: false,
            reserved: None,
            seen: Seen::default(),
            poll_on_wake: false,
        });
    }

    let api_key = match resolve_key(instance, ctx).await? {
        Ok(k) => k,
        Err(failure) => {
            forget_sweeps(instance, ctx);
            let wrote = write_status(instance, ctx, Observation::Failed(&failure), None).await?;
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
                seen,
                poll_on_wake: false,
            });
        }
    };

    let now = Instant::now();
    let fingerprint = ctx.fingerprint(&api_key);
    ctx.ledger.note(
        &api_key,
        fingerprint,
        (
            &instance.namespace().unwrap_or_default(),
            &instance.name_any(),
        ),
        &instance.spec.instance_id,
    );

    // By sweeps: the key's LIST answers for most polls; a GET only when one is wanted.
    let mut wrote = false;
    let mut get_now = forced || gone_suspected;
    let mut listed_next = None;
    let mut poll_on_wake = false;
    // The key's walks list the instance and keep its observation current.
    let mut walks_list_it = false;
    if let Observe::List {
        full_refresh_intervals,
        ..
    } = ctx.settings.observe
        && !get_now
    {
        let ns = instance.namespace().unwrap_or_default();
        let name = instance.name_any();
        // The LIST item the stored status shows, while it still shows it.
        let applied = seen.listed.filter(|_| {
            instance.status.as_ref().is_some_and(|s| {
                s.observed_generation == instance.meta().generation
                    && s.state.is_some()
                    && s.state == seen.state
            })
        });
        let lookup = ctx.sweeps.lookup(
            &api_key,
            fingerprint,
            &instance.spec.instance_id,
            (&ns, &name),
            refresh,
            applied,
            seen.fetched || fetched_before(instance),
        );
        // Nothing fresh while a 429 pauses the key: the pause is this instance's answer.
        let lookup = match lookup {
            Lookup::Wait if ctx.key_pause(&api_key).is_some() => {
                Lookup::Failed(PpioError::RateLimited { retry_after: None })
            }
            other => other,
        };
        match lookup {
            Lookup::Listed {
                item,
                digest,
                at,
                failing,
            } => {
                if seen.observed_at.is_none_or(|t| at > t) {
                    wrote = match item {
                        Some(item) => {
                            apply_listed(instance, ctx, refresh, &mut seen, &item, digest, at)
                                .await?
                        }
                        None => {
                            // The item the stored status shows: only its age moves.
                            ctx.metrics
                                .instances
                                .observed_at(&ns, &name, super::wall_time(at));
                            seen.observed_at = Some(at);
                            false
                        }
                    };
                }
                // The key's walks reconcile it when its item changes or goes missing, or
                // when they fail; otherwise it looks again at its next full GET (with full
                // GETs off, after LISTED_RECHECK_INTERVALS). While walks fail, it looks
                // again when its item goes stale, to show why. A full GET already due
                // waits for its budget slot below, not here.
                let recheck = listed_recheck(&seen, full_refresh_intervals, refresh, now);
                walks_list_it = !failing;
                listed_next = Some(if failing {
                    recheck.min(
                        (at + refresh).saturating_duration_since(now)
                            + jitter_up(Duration::from_secs(1)),
                    )
                } else {
                    recheck
                });
                poll_on_wake = true;
            }
            Lookup::Wait => {
                // The walk wakes it (see `sweep`); the interval is only a safety net. A
                // shorter one would, during a bulk apply, put every waiting PpioInstance in
                // the controller's queue unordered, ahead of the walk's wakes.
                listed_next = Some(jitter(refresh));
                poll_on_wake = true;
            }
            Lookup::Failed(e) => {
                // The walk's failure is this instance's too (its pause, if any, is already
                // set by the walk).
                let failure = Failure::from(&e);
                let wrote =
                    write_status(instance, ctx, Observation::Failed(&failure), None).await?;
                let failures = failures + 1;
                let pause = ctx.key_pause(&api_key).map(|until| {
                    until.saturating_duration_since(now) + jitter_up(Duration::from_secs(1))
                });
                seen.listed = None;
                return Ok(Polled {
                    next: Some(
                        pause
                            .unwrap_or_else(|| backoff(failures))
                            .min(refresh.max(SWEEP_WAIT)),
                    ),
                    failures,
                    wrote,
                    requested: false,
                    gone_suspected,
                    reserved: None,
                    seen,
                    poll_on_wake: true,
                });
            }
            Lookup::Missing | Lookup::Unavailable => get_now = true,
        }
        let transitional = seen
            .state
            .as_deref()
            .is_some_and(|s| !state::STABLE.contains(&s));
        let full_due = seen.full_due.is_some_and(|t| t <= now) && full_refresh_intervals > 0;
        // A spot instance's reclaim notice is in `pricing`, which LIST items lack: a GET
        // every interval sees it within one.
        let spot_due =
            is_spot(instance) && (!seen.fetched || seen.full_due.is_none_or(|t| t <= now));
        // A connection Secret asked for and not written since the start: its passwords come
        // with a GET.
        let export_due = ctx
            .exports
            .wants_fetch(instance, ctx.settings.exports.connection_secrets);
        get_now |= seen.get_wanted || transitional || full_due || spot_due || export_due;
        if get_now && wrote {
            // The GET follows once the watch brings the status just written, at its slot of
            // the key's budget, taken now: after a bulk apply each PpioInstance comes back
            // once, at its slot, not once more just to take one.
            let is_urgent = urgent(instance, &seen, forced, gone_suspected);
            let slot = match reserved {
                Some(r) if r.serves(is_urgent) => Some(r),
                _ if ctx.key_pause(&api_key).is_none() => {
                    Some(reserve_get(ctx, instance, fingerprint, now, is_urgent))
                }
                _ => None,
            };
            // Come back when the slot has come, counting the walk pages that go first.
            let wait = slot.map_or(Duration::ZERO, |r| slot_wait(ctx, fingerprint, r, now));
            let next = sooner(listed_next, wait).max(Duration::from_secs(1));
            return Ok(Polled {
                poll_on_wake: true,
                ..waiting(next, slot, wrote, seen)
            });
        }
        if !get_now {
            let next = listed_next.unwrap_or_else(|| jitter(refresh));
            return Ok(Polled {
                poll_on_wake,
                ..waiting(next, None, wrote, seen)
            });
        }
    }

    if let Some(until) = ctx.key_pause(&api_key) {
        // Another object using this key was told to wait (429 Retry-After): so do we. A
        // listed instance looks again when its item goes stale, to show the pause then.
        let delay = until.saturating_duration_since(now) + jitter_up(Duration::from_secs(1));
        let next = sooner(listed_next, delay);
        return Ok(Polled {
            poll_on_wake,
            ..waiting(next, None, wrote, seen)
        });
    }

    // The key's budget: a slot reserved earlier, or the next free one. A poll never waits for
    // its slot inside a reconcile (that would hold a concurrency slot and delay every other
    // key): it comes back when the slot is due, and keeps it until then. Sweeps of the key's
    // LIST go first: a slot moves later by each page they take meanwhile.
    // A routine slot reserved earlier is given up when the GET became urgent meanwhile (a
    // transition began while it waited for its full refresh).
    let is_urgent = urgent(instance, &seen, forced, gone_suspected);
    let slot = match reserved {
        Some(r) if r.serves(is_urgent) => r,
        _ => reserve_get(ctx, instance, fingerprint, now, is_urgent),
    };
    if let Err(moved) = ctx.buckets.redeem(fingerprint, slot, now) {
        let wait = slot_wait(ctx, fingerprint, moved, now);
        let next = sooner(listed_next, wait);
        return Ok(Polled {
            poll_on_wake,
            ..waiting(next, Some(moved), wrote, seen)
        });
    }
    if let Some(due) = due
        && ctx.settings.observe == Observe::Get
    {
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
    match result {
        Ok(observed) => {
            let observed_state = observed.state().unwrap_or_default().to_string();
            let spot = is_spot(instance)
                || observed
                    .billing
                    .as_ref()
                    .and_then(|b| b.mode.as_ref())
                    .is_some_and(|m| m.0 == "spot");
            let at = Instant::now();
            let wrote = write_status(instance, ctx, Observation::Instance(&observed), Some(at))
                .await?
                || wrote;
            if let Observe::List {
                full_refresh_intervals,
                ..
            } = ctx.settings.observe
            {
                // The next full GET: at this PpioInstance's own slot of the full-refresh
                // period, at least half a period from now.
                let period = refresh.saturating_mul(full_refresh_intervals);
                // A LIST item lacks fields the GET has (`tools`, `pricing`, and maybe more): the
                // next item is compared with the last item read, not with this GET, and one
                // that differs asks for a GET. The status shows that item when the GET, as
                // an item would show it, is the same.
                let as_item = ctx.sweeps.digest(&Instance {
                    tools: None,
                    pricing: None,
                    ..observed
                });
                let last_item = ctx
                    .sweeps
                    .listed_digest(fingerprint, &instance.spec.instance_id);
                let listed = last_item.filter(|listed| *listed == as_item);
                seen = Seen {
                    observed: last_item,
                    state: status_state(Some(&observed_state)),
                    observed_at: Some(at),
                    listed,
                    fetched: true,
                    // A spot instance is fetched again after an interval (its reclaim notice).
                    full_due: Some(if spot {
                        at + refresh.mul_f64(0.9)
                    } else {
                        ctx.full_refresh_slot(instance, at, period / 2, period)
                    }),
                    get_wanted: false,
                };
            }
            match ctx.settings.observe {
                // The key's walks list a stable instance and keep it current: it looks again
                // by itself only at its next full GET, and a walk that finds its item
                // changed or missing reconciles it before that.
                Observe::List {
                    full_refresh_intervals,
                    ..
                } if walks_list_it && state::STABLE.contains(&observed_state.as_str()) && !spot => {
                    let next = listed_recheck(&seen, full_refresh_intervals, refresh, at);
                    Ok(Polled {
                        poll_on_wake: true,
                        ..Polled::sent(next, 0, wrote, seen)
                    })
                }
                _ => Ok(Polled::sent(
                    jitter(poll_interval(refresh, &observed_state)),
                    0,
                    wrote,
                    seen,
                )),
            }
        }
        Err(e) => {
            failed(
                instance,
                ctx,
                &api_key,
                e,
                failures,
                gone_suspected,
                refresh,
                seen,
            )
            .await
        }
    }
}

/// Applies a LIST item: the status from the item, with the fields only a GET observes kept
/// as stored. A GET is wanted when the instance was never fetched or the item differs from
/// the last observation. Returns whether the status was written.
async fn apply_listed(
    instance: &PpioInstance,
    ctx: &Context,
    refresh: Duration,
    seen: &mut Seen,
    item: &Instance,
    digest: u64,
    at: Instant,
) -> Result<bool, Error> {
    let fetched_before = fetched_before(instance);
    if !seen.fetched && seen.full_due.is_none() {
        if fetched_before {
            // Fetched in full before (by an earlier run): its next full GET is at its own
            // slot of the full-refresh period, not all at once after a restart.
            if let Observe::List {
                full_refresh_intervals,
                ..
            } = ctx.settings.observe
            {
                let period = refresh.saturating_mul(full_refresh_intervals);
                seen.full_due = Some(ctx.full_refresh_slot(instance, at, Duration::ZERO, period));
            }
        } else {
            seen.get_wanted = true;
        }
    }
    let changed = seen.observed.is_some_and(|o| o != digest);
    // Until its first GET, the status says its details are still to come.
    let observation = if seen.fetched || fetched_before {
        Observation::Listed(item)
    } else {
        Observation::ListedFirst(item)
    };
    let wrote = write_status(instance, ctx, observation, Some(at)).await?;
    seen.get_wanted |= changed;
    seen.observed = Some(digest);
    seen.state = status_state(item.state());
    seen.observed_at = Some(at);
    seen.listed = Some(digest);
    Ok(wrote)
}

/// Records a failed observation (a GET's or the key's last walk) in status and decides when
/// to try again: a first "not found" is confirmed first, a 429 pauses the key.
#[allow(clippy::too_many_arguments)]
async fn failed(
    instance: &PpioInstance,
    ctx: &Context,
    api_key: &crate::ppio::ApiKey,
    e: PpioError,
    failures: u32,
    gone_suspected: bool,
    refresh: Duration,
    mut seen: Seen,
) -> Result<Polled, Error> {
    let now = Instant::now();
    let failure = Failure::from(&e);
    let (delay, failures) = match (failure.class.retry(), e.retry_after()) {
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
                seen,
                poll_on_wake: false,
            });
        }
        (Retry::Gone, _) => {
            seen = Seen::default();
            (jitter(refresh.max(GONE_POLL)), 0)
        }
        (_, Some(after)) => {
            // The server said when: every PpioInstance using this key waits as well,
            // never less than the error backoff and never more than MAX_KEY_PAUSE.
            let wait = after.max(backoff(failures + 1)).min(MAX_KEY_PAUSE);
            ctx.pause_key(api_key, now + wait);
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
    };
    let wrote = write_status(instance, ctx, Observation::Failed(&failure), None).await?;
    // The status no longer shows the last observation: apply the next one in full.
    seen.listed = None;
    Ok(Polled::sent(delay, failures, wrote, seen))
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

/// The PpioInstance no longer takes a LIST item (suspended, or without a usable key).
fn forget_sweeps(instance: &PpioInstance, ctx: &Context) {
    ctx.sweeps.forget(
        &instance.namespace().unwrap_or_default(),
        &instance.name_any(),
    );
}

/// When a PpioInstance that its key's walks keep current looks again by itself: at its next
/// full GET or, with full GETs off, after [`LISTED_RECHECK_INTERVALS`].
fn listed_recheck(
    seen: &Seen,
    full_refresh_intervals: u32,
    refresh: Duration,
    now: Instant,
) -> Duration {
    match seen
        .full_due
        .filter(|t| *t > now && full_refresh_intervals > 0)
    {
        Some(due) => due - now + jitter_up(Duration::from_secs(1)),
        None => jitter(refresh.saturating_mul(LISTED_RECHECK_INTERVALS)),
    }
}

/// `delay`, or the time a listed PpioInstance looks again at its item when that is sooner.
fn sooner(listed_next: Option<Duration>, delay: Duration) -> Duration {
    listed_next.map_or(delay, |n| n.min(delay))
}

/// A state as status shows it.
fn status_state(state: Option<&str>) -> Option<String> {
    state
        .map(|s| crate::status::clean_text(s, crate::status::MAX_TEXT_CHARS))
        .filter(|s| !s.is_empty())
}

/// Whether a GET goes ahead of the key's routine GETs (full refreshes, GETs by interval): a
/// refresh request, a "gone" to confirm, a first sight, a changed LIST item, a transition
/// followed.
fn urgent(instance: &PpioInstance, seen: &Seen, forced: bool, gone_suspected: bool) -> bool {
    let observed = seen
        .state
        .as_deref()
        .or_else(|| instance.status.as_ref().and_then(|s| s.state.as_deref()));
    forced
        || gone_suspected
        || is_spot(instance)
        || seen.get_wanted
        || observed.is_some_and(state::is_transitional)
        || (!seen.fetched && !fetched_before(instance))
}

/// How long a GET waits for its reserved slot, counting the walk pages that go first
/// ([`super::sweep::Sweeps::slot_wait`]).
fn slot_wait(ctx: &Context, fingerprint: u64, r: Reservation, now: Instant) -> Duration {
    ctx.sweeps
        .slot_wait(fingerprint, r.slot.saturating_duration_since(now))
}

/// A slot of the key's budget for a GET: ahead of the routine ones when `urgent`, else in
/// the namespace's fair share of the routine ones.
fn reserve_get(
    ctx: &Context,
    instance: &PpioInstance,
    fingerprint: u64,
    now: Instant,
    urgent: bool,
) -> Reservation {
    if urgent {
        ctx.buckets
            .reserve_ahead(ctx.settings.budget, fingerprint, now)
    } else {
        let namespace = instance.metadata.namespace.as_deref().unwrap_or_default();
        ctx.buckets
            .reserve_fair(ctx.settings.budget, fingerprint, namespace, now)
    }
}

/// Whether the stored status shows a spot instance (its reclaim notice needs a GET every
/// interval).
fn is_spot(instance: &PpioInstance) -> bool {
    instance
        .status
        .as_ref()
        .and_then(|s| s.billing.as_ref())
        .and_then(|b| b.mode.as_deref())
        == Some("spot")
}

/// Whether the stored status shows a full observation (a GET's, by an earlier run, say) of the
/// instance the spec names.
fn fetched_before(instance: &PpioInstance) -> bool {
    instance.status.as_ref().is_some_and(|s| {
        s.instance_id.as_deref() == Some(instance.spec.instance_id.as_str()) && s.pricing.is_some()
    })
}

/// True when the stored status already reports the instance gone.
fn reported_gone(instance: &PpioInstance) -> bool {
    instance
        .status
        .as_ref()
        .is_some_and(|s| s.state.as_deref() == Some(state::NOT_FOUND))
}
