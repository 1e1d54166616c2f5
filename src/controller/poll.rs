//! One poll: resolve the key, respect the key's pause and budget, observe the instance (from
//! the key's sweeps, or by a GET), record the outcome in status, and decide when to look again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use kube::Resource;
use tracing::debug;

use super::apply::write_status;
use super::credentials::{SECRET_TTL, resolve_key};
use super::line::{Answer, GetAsk, Obtained};
use super::schedule::{
    CONFIRM_GONE, GONE_POLL, MAX_KEY_PAUSE, backoff, jitter, jitter_up, poll_interval,
};
use super::sweep::{LISTED_RECHECK_INTERVALS, Lookup, Observe, SWEEP_WAIT};
use super::wakes::Wake;
use super::{Context, Error};

use kube::ResourceExt;

use crate::crd::PpioInstance;
use crate::outcome::Retry;
use crate::ppio::{ApiKey, Instance, PpioError};
use crate::status::{Failure, Observation};
use crate::vocabulary::state;

/// How long after a status write its watch event is taken to have reached the controller: an
/// answer asked for right after the write is not handed over sooner.
pub const WATCH_LAG: Duration = Duration::from_secs(1);

/// A PpioInstance whose full GET its key's line sends when due (and wakes it with the
/// answer) looks again by itself this many intervals after that, should no wake come.
pub const PLAN_BACKSTOP: u32 = 2;

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
    /// When a LIST item that changed the observation (or the status) was applied: a GET's
    /// answer that came before then is stale. An unchanged item does not make it stale.
    pub changed_at: Option<Instant>,
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
    /// Its GET waits in the key's line (sent by the line, which wakes it with the answer).
    pub queued: bool,
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
            queued: false,
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
///
/// The steps: a suspended PpioInstance or one without a usable key is answered at once;
/// with sweeps, the key's LIST item is applied and decides whether a GET is wanted
/// ([`Step::by_sweeps`]); a GET waits for the key's pause ([`Step::paused`]) and is asked of
/// the key's line ([`Step::obtain`]), which answers it now or wakes the PpioInstance with the
/// answer; the answer is applied ([`Step::fetched`]) or recorded as a failure ([`failed`]).
pub async fn poll(
    instance: &PpioInstance,
    ctx: &Context,
    refresh: Duration,
    history: impl Into<History>,
) -> Result<Polled, Error> {
    let history = history.into();
    if instance.spec.suspend == Some(true) {
        forget_sweeps(instance, ctx);
        let wrote = write_status(instance, ctx, Observation::Suspended, None).await?;
        return Ok(Polled {
            next: None,
            failures: 0,
            wrote,
            requested: false,
            gone_suspected: false,
            queued: false,
            seen: Seen::default(),
            poll_on_wake: false,
        });
    }
    let api_key = match resolve_key(instance, ctx).await? {
        Ok(k) => k,
        Err(failure) => return without_key(instance, ctx, &failure, history).await,
    };
    let mut step = Step::new(instance, ctx, refresh, history, api_key);
    if let Observe::List {
        full_refresh_intervals,
        ..
    } = ctx.settings.observe
        && !step.get_now
        && let Some(done) = step.by_sweeps(full_refresh_intervals).await?
    {
        return Ok(done);
    }
    if let Some(waiting) = step.paused() {
        return Ok(waiting);
    }
    let answer = match step.obtain().await {
        Ok(answer) => answer,
        Err(waiting) => return Ok(waiting),
    };
    let answer = match step.refused_rotated(answer).await {
        Ok(answer) => answer,
        Err(waiting) => return Ok(waiting),
    };
    match answer.result {
        Ok(observed) => step.fetched(observed, answer.at).await,
        Err(e) => {
            failed(
                instance,
                ctx,
                &step.api_key,
                e,
                step.failures,
                step.gone_suspected,
                refresh,
                step.seen,
            )
            .await
        }
    }
}

/// No usable key: the failure is shown, and the key looked up again at least every
/// [`SECRET_TTL`] (a Secret created or marked later is used within about a minute, whatever
/// the backoff has grown to).
async fn without_key(
    instance: &PpioInstance,
    ctx: &Context,
    failure: &Failure,
    history: History,
) -> Result<Polled, Error> {
    forget_sweeps(instance, ctx);
    let wrote = write_status(instance, ctx, Observation::Failed(failure), None).await?;
    let failures = history.failures + 1;
    Ok(Polled {
        next: Some(backoff(failures).min(SECRET_TTL)),
        failures,
        wrote,
        requested: false,
        gone_suspected: false,
        queued: false,
        seen: history.seen,
        poll_on_wake: false,
    })
}

/// One poll on its way, once its key is known: what the steps share.
struct Step<'a> {
    instance: &'a PpioInstance,
    ctx: &'a Context,
    refresh: Duration,
    api_key: ApiKey,
    fingerprint: u64,
    now: Instant,
    failures: u32,
    gone_suspected: bool,
    due: Option<Instant>,
    forced: bool,
    seen: Seen,
    /// A GET is to be sent in this poll.
    get_now: bool,
    /// The status was written (from a LIST item).
    wrote: bool,
    /// When a listed PpioInstance looks again at its item.
    listed_next: Option<Duration>,
    /// The next reconcile polls, however early it comes ([`Polled::poll_on_wake`]).
    poll_on_wake: bool,
    /// The key's walks list the instance and keep its observation current.
    walks_list_it: bool,
}

impl<'a> Step<'a> {
    fn new(
        instance: &'a PpioInstance,
        ctx: &'a Context,
        refresh: Duration,
        history: History,
        api_key: ApiKey,
    ) -> Step<'a> {
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
        Step {
            instance,
            ctx,
            refresh,
            api_key,
            fingerprint,
            now: Instant::now(),
            failures: history.failures,
            gone_suspected: history.gone_suspected,
            due: history.due,
            forced: history.forced,
            seen: history.seen,
            get_now: history.forced || history.gone_suspected,
            wrote: false,
            listed_next: None,
            poll_on_wake: false,
            walks_list_it: false,
        }
    }

    /// A poll that sends nothing now: back after `next` (`queued`: its GET waits in the key's
    /// line).
    fn waiting(&mut self, next: Duration, queued: bool) -> Polled {
        Polled {
            next: Some(next),
            failures: self.failures,
            wrote: self.wrote,
            requested: false,
            gone_suspected: self.gone_suspected,
            queued,
            seen: std::mem::take(&mut self.seen),
            poll_on_wake: self.poll_on_wake,
        }
    }

    /// By sweeps: the key's LIST answers for most polls; a GET only when one is wanted.
    /// `Some`: the poll is done (no GET now).
    async fn by_sweeps(&mut self, full_refresh_intervals: u32) -> Result<Option<Polled>, Error> {
        match self.lookup() {
            Lookup::Listed {
                item,
                digest,
                at,
                failing,
            } => {
                self.listed(item, digest, at, failing, full_refresh_intervals)
                    .await?
            }
            Lookup::Wait => {
                // The walk wakes it (see `sweep`); the interval is only a safety net. A
                // shorter one would, during a bulk apply, put every waiting PpioInstance in
                // the controller's queue unordered, ahead of the walk's wakes.
                self.listed_next = Some(jitter(self.refresh));
                self.poll_on_wake = true;
            }
            Lookup::Failed(e) => return self.walk_failed(e).await.map(Some),
            Lookup::Missing | Lookup::Unavailable => self.get_now = true,
        }
        self.get_now |= self.get_wanted(full_refresh_intervals);
        if self.get_now && self.wrote {
            return Ok(Some(self.back_for_get()));
        }
        if !self.get_now {
            let next = self.listed_next.unwrap_or_else(|| jitter(self.refresh));
            return Ok(Some(self.waiting(next, false)));
        }
        Ok(None)
    }

    /// What the key's sweeps know of the instance, the key's pause counting as the answer
    /// while nothing fresh is known.
    fn lookup(&self) -> Lookup {
        let (instance, ctx) = (self.instance, self.ctx);
        let ns = instance.namespace().unwrap_or_default();
        let name = instance.name_any();
        // The LIST item the stored status shows, while it still shows it.
        let applied = self.seen.listed.filter(|_| {
            instance.status.as_ref().is_some_and(|s| {
                s.observed_generation == instance.meta().generation
                    && s.state.is_some()
                    && s.state == self.seen.state
            })
        });
        let lookup = ctx.sweeps.lookup(
            &self.api_key,
            self.fingerprint,
            &instance.spec.instance_id,
            (&ns, &name),
            self.refresh,
            applied,
            self.seen.fetched || fetched_before(instance),
        );
        match lookup {
            Lookup::Wait if ctx.key_pause(&self.api_key).is_some() => {
                Lookup::Failed(PpioError::RateLimited { retry_after: None })
            }
            other => other,
        }
    }

    /// A LIST item read `at`: applied when newer than the last observation; decides when the
    /// PpioInstance looks again by itself.
    async fn listed(
        &mut self,
        item: Option<Arc<Instance>>,
        digest: u64,
        at: Instant,
        failing: bool,
        full_refresh_intervals: u32,
    ) -> Result<(), Error> {
        let (instance, ctx) = (self.instance, self.ctx);
        if self.seen.observed_at.is_none_or(|t| at > t) {
            self.wrote = match item {
                Some(item) => {
                    apply_listed(
                        instance,
                        ctx,
                        self.refresh,
                        &mut self.seen,
                        &item,
                        digest,
                        at,
                    )
                    .await?
                }
                None => {
                    // The item the stored status shows: only its age moves.
                    ctx.metrics.instances.observed_at(
                        &instance.namespace().unwrap_or_default(),
                        &instance.name_any(),
                        super::wall_time(at),
                    );
                    self.seen.observed_at = Some(at);
                    false
                }
            };
        }
        // The key's walks reconcile it when its item changes or goes missing, or when they
        // fail; otherwise it looks again at its next full GET (with full GETs off, after
        // LISTED_RECHECK_INTERVALS). While walks fail, it looks again when its item goes
        // stale, to show why. A full GET already due waits in the key's line, not here.
        let recheck = if failing {
            listed_recheck(&self.seen, full_refresh_intervals, self.refresh, self.now)
        } else {
            self.recheck(&self.seen, full_refresh_intervals, self.now)
        };
        self.walks_list_it = !failing;
        self.listed_next = Some(if failing {
            recheck.min(
                (at + self.refresh).saturating_duration_since(self.now)
                    + jitter_up(Duration::from_secs(1)),
            )
        } else {
            recheck
        });
        self.poll_on_wake = true;
        Ok(())
    }

    /// The key's walk failed (rate limited): that is this instance's outcome too (its pause,
    /// if any, is already set by the walk).
    async fn walk_failed(&mut self, e: PpioError) -> Result<Polled, Error> {
        let (instance, ctx) = (self.instance, self.ctx);
        let failure = Failure::from(&e);
        let wrote = write_status(instance, ctx, Observation::Failed(&failure), None).await?;
        let failures = self.failures + 1;
        let pause = ctx.key_pause(&self.api_key).map(|until| {
            until.saturating_duration_since(self.now) + jitter_up(Duration::from_secs(1))
        });
        self.seen.listed = None;
        Ok(Polled {
            next: Some(
                pause
                    .unwrap_or_else(|| backoff(failures))
                    .min(self.refresh.max(SWEEP_WAIT)),
            ),
            failures,
            wrote,
            requested: false,
            gone_suspected: self.gone_suspected,
            queued: false,
            seen: std::mem::take(&mut self.seen),
            poll_on_wake: true,
        })
    }

    /// Whether a GET is wanted besides what the LIST said: one asked for earlier, a
    /// transition followed, a full refresh due, a spot instance's interval, a connection
    /// Secret's passwords.
    fn get_wanted(&self, full_refresh_intervals: u32) -> bool {
        let (seen, now) = (&self.seen, self.now);
        let transitional = seen
            .state
            .as_deref()
            .is_some_and(|s| !state::STABLE.contains(&s));
        let full_due = seen.full_due.is_some_and(|t| t <= now) && full_refresh_intervals > 0;
        // A spot instance's reclaim notice is in `pricing`, which LIST items lack: a GET
        // every interval sees it within one.
        let spot_due =
            is_spot(self.instance) && (!seen.fetched || seen.full_due.is_none_or(|t| t <= now));
        // A connection Secret asked for and not written since the start: its passwords come
        // with a GET.
        let export_due = self
            .ctx
            .exports
            .wants_fetch(self.instance, self.ctx.settings.exports.connection_secrets);
        seen.get_wanted || transitional || full_due || spot_due || export_due
    }

    /// A GET is wanted right after a status write: it is asked of the key's line now (it
    /// keeps its place from now on), and its answer is handed over once the watch has
    /// brought the status just written ([`WATCH_LAG`]), so that it is applied on top of that
    /// status, not of the one before. The line wakes the PpioInstance with the answer.
    fn back_for_get(&mut self) -> Polled {
        let hand_after = Some(self.now + WATCH_LAG);
        let guess = match self.ask_line(hand_after) {
            Obtained::Queued(guess) => guess,
            // An answer that came meanwhile is dropped (it would go on top of the status
            // before this one): the GET is asked again.
            Obtained::Answer(_) | Obtained::Now => match self.ask_line(hand_after) {
                Obtained::Queued(guess) => guess,
                _ => Duration::ZERO,
            },
        };
        self.queued(guess)
    }

    /// The GET's ask of the key's line.
    fn ask_line(&self, hand_after: Option<Instant>) -> Obtained {
        let namespace = self.instance.namespace().unwrap_or_default();
        let ask = self.get_ask(&namespace, hand_after);
        self.ctx.lines.obtain(&self.api_key, self.fingerprint, ask)
    }

    fn get_ask<'n>(&'n self, namespace: &'n str, hand_after: Option<Instant>) -> GetAsk<'n> {
        GetAsk {
            object: Wake::new(&self.instance.name_any()).within(namespace),
            instance_id: &self.instance.spec.instance_id,
            urgent: self.is_urgent(),
            namespace,
            newer_than: self.seen.changed_at,
            hand_after,
        }
    }

    /// When a PpioInstance its key's walks keep current looks again by itself, from `from`
    /// ([`listed_recheck`]). Its next full GET is planned with the key's line, which sends it
    /// when due and wakes the PpioInstance with the answer: it then looks again by itself
    /// only [`PLAN_BACKSTOP`] intervals after that, should no wake come.
    fn recheck(&self, seen: &Seen, full_refresh_intervals: u32, from: Instant) -> Duration {
        let recheck = listed_recheck(seen, full_refresh_intervals, self.refresh, from);
        let Some(due) = seen
            .full_due
            .filter(|t| *t > self.now && full_refresh_intervals > 0)
        else {
            return recheck;
        };
        let namespace = self.instance.namespace().unwrap_or_default();
        let ask = self.get_ask(&namespace, None);
        if self
            .ctx
            .lines
            .plan(&self.api_key, self.fingerprint, ask, due)
        {
            recheck + self.refresh.max(SWEEP_WAIT).saturating_mul(PLAN_BACKSTOP)
        } else {
            recheck
        }
    }

    /// A poll whose GET waits in the key's line (`guess`: about how long). The line wakes it
    /// with the answer; it also looks again by itself later, in case no wake comes. The
    /// controller keeps the earlier of two requeues: this one is set past the poll the
    /// answer's reconcile asks for, so that a wake that comes leaves no extra reconcile.
    fn queued(&mut self, guess: Duration) -> Polled {
        // Past the poll the answer's reconcile asks for (about `guess` + an interval from
        // now), so that it replaces this one. A listed PpioInstance keeps the time it looks
        // again at its item: the key's walks wake it too.
        let backstop = (self.refresh.max(SWEEP_WAIT) + guess).saturating_mul(2);
        let next = self.listed_next.unwrap_or_else(|| jitter(backstop));
        self.poll_on_wake = true;
        self.waiting(next, true)
    }

    fn is_urgent(&self) -> bool {
        urgent(self.instance, &self.seen, self.forced, self.gone_suspected)
    }

    /// The key's pause: `Some` when the GET must wait for it. Another object using this key
    /// was told to wait (429 Retry-After): so do we. A listed instance looks again when its
    /// item goes stale, to show the pause then.
    fn paused(&mut self) -> Option<Polled> {
        let until = self.ctx.key_pause(&self.api_key)?;
        let delay = until.saturating_duration_since(self.now) + jitter_up(Duration::from_secs(1));
        let next = sooner(self.listed_next, delay);
        Some(self.waiting(next, false))
    }

    /// The GET, asked of the key's line: its answer when one that waited came, or sent now
    /// when the budget allows it. `Err`: it waits in the line ([`Step::queued`]). A GET that
    /// waits keeps its place however often it is asked again, and moves ahead when it became
    /// urgent meanwhile (a transition began).
    async fn obtain(&mut self) -> Result<Answer, Polled> {
        let ctx = self.ctx;
        let answer = match self.ask_line(None) {
            Obtained::Answer(answer) => *answer,
            Obtained::Now => {
                let result = ctx
                    .lines
                    .get(&self.api_key, &self.instance.spec.instance_id)
                    .await;
                Answer {
                    result,
                    at: Instant::now(),
                }
            }
            Obtained::Queued(guess) => return Err(self.queued(guess)),
        };
        if let Some(due) = self.due
            && ctx.settings.observe == Observe::Get
        {
            ctx.record_lateness(
                self.fingerprint,
                self.now.saturating_duration_since(due),
                self.refresh,
            );
        }
        Ok(answer)
    }

    /// A key refused (401) may just have been rotated: the Secret is read again, and the GET
    /// asked once more of the line of the key it holds now, when that is another.
    async fn refused_rotated(&mut self, answer: Answer) -> Result<Answer, Polled> {
        let (instance, ctx) = (self.instance, self.ctx);
        let Some(sref) = &instance.spec.credentials_secret_ref else {
            return Ok(answer);
        };
        if !matches!(answer.result, Err(PpioError::Unauthorized)) {
            return Ok(answer);
        }
        ctx.secrets
            .forget(&instance.namespace().unwrap_or_default(), &sref.name);
        match resolve_key(instance, ctx).await {
            Ok(Ok(fresh)) if fresh != self.api_key => {
                self.fingerprint = ctx.fingerprint(&fresh);
                self.api_key = fresh;
                self.obtain().await
            }
            _ => Ok(answer),
        }
    }

    /// A GET's answer: the status written, the observation kept, and when to look again.
    async fn fetched(mut self, observed: Instance, at: Instant) -> Result<Polled, Error> {
        let (instance, ctx, refresh) = (self.instance, self.ctx, self.refresh);
        let observed_state = observed.state().unwrap_or_default().to_string();
        let spot = is_spot(instance)
            || observed
                .billing
                .as_ref()
                .and_then(|b| b.mode.as_ref())
                .is_some_and(|m| m.0 == "spot");
        let wrote = write_status(instance, ctx, Observation::Instance(&observed), Some(at)).await?
            || self.wrote;
        let Observe::List {
            full_refresh_intervals,
            ..
        } = ctx.settings.observe
        else {
            let next = jitter(poll_interval(refresh, &observed_state));
            return Ok(Polled::sent(next, 0, wrote, self.seen));
        };
        let seen = self.seen_after_get(observed, &observed_state, spot, at, full_refresh_intervals);
        // The key's walks list a stable instance and keep it current: it looks again by
        // itself only at its next full GET, and a walk that finds its item changed or
        // missing reconciles it before that.
        if self.walks_list_it && state::STABLE.contains(&observed_state.as_str()) && !spot {
            let next = self.recheck(&seen, full_refresh_intervals, at);
            return Ok(Polled {
                poll_on_wake: true,
                ..Polled::sent(next, 0, wrote, seen)
            });
        }
        let next = jitter(poll_interval(refresh, &observed_state));
        Ok(Polled::sent(next, 0, wrote, seen))
    }

    /// What is kept of a GET's observation `at`, with sweeps: the next full GET at this
    /// PpioInstance's own slot of the (maybe stretched) full-refresh period, at least half a
    /// period from now (a spot instance: after an interval, for its reclaim notice).
    ///
    /// A LIST item lacks fields the GET has (`tools`, `pricing`, and maybe more): the next
    /// item is compared with the last item read, not with this GET, and one that differs asks
    /// for a GET. The status shows that item when the GET, as an item would show it, is the
    /// same.
    fn seen_after_get(
        &mut self,
        observed: Instance,
        observed_state: &str,
        spot: bool,
        at: Instant,
        full_refresh_intervals: u32,
    ) -> Seen {
        let ctx = self.ctx;
        let period =
            ctx.full_refresh_period(self.fingerprint, self.refresh, full_refresh_intervals);
        let as_item = ctx.sweeps.digest(&Instance {
            tools: None,
            pricing: None,
            ..observed
        });
        let last_item = ctx
            .sweeps
            .listed_digest(self.fingerprint, &self.instance.spec.instance_id);
        Seen {
            observed: last_item,
            state: status_state(Some(observed_state)),
            observed_at: Some(at),
            changed_at: None,
            listed: last_item.filter(|listed| *listed == as_item),
            fetched: true,
            full_due: Some(if spot {
                at + self.refresh.mul_f64(0.9)
            } else {
                ctx.full_refresh_slot(self.instance, at, period / 2, period)
            }),
            get_wanted: false,
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
    if changed || wrote {
        seen.changed_at = Some(at);
    }
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
                queued: false,
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
