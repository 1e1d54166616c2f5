//! The scheduler under load, in virtual time (tokio's paused clock): kube's controller is
//! modelled by a loop that runs at most `concurrency` reconciles at once and requeues each
//! object after the delay its reconcile asked for; PPIO is an in-memory fake that records
//! every request. What is pinned is behaviour: who is polled, and how often.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::mock::{FIXTURE, MockApi, instance};
use futures::StreamExt;
use futures::future::BoxFuture;
use kube::core::DeserializeGuard;
use ppio_operator::controller::{
    Budget, CachedInstance, Context, MoneySettings, Observe, Settings, Waker, reconcile,
    seed_jitter,
};
use ppio_operator::crd::{PpioInstance, SecretKeyRef};
use ppio_operator::metrics::Metrics;
use ppio_operator::money::{Amount, BillTotals, Catalogue};
use ppio_operator::ppio::{
    ApiKey, BillKind, BillQuery, Instance, InstancePage, ListQuery, PpioApi, PpioError,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// PPIO in memory: every GET answers the fixture at once (with the id asked for, and its
/// state), and the LIST serves pages of `listed` (sorted, with an opaque cursor, without
/// `tools` and `pricing`), leaving out `skipped`; requests are recorded by id (`LIST` for a
/// page).
#[derive(Default)]
pub(crate) struct FakePpio {
    pub(crate) requests: Mutex<Vec<(String, Instant)>>,
    pub(crate) listed: Mutex<Vec<String>>,
    pub(crate) skipped: Mutex<BTreeSet<String>>,
    pub(crate) states: Mutex<BTreeMap<String, String>>,
    pub(crate) list_error: Mutex<Option<PpioError>>,
    pub(crate) get_error: Mutex<Option<PpioError>>,
    /// GETs of the ids that start with this prefix take this long (a slow account).
    pub(crate) get_latency: Mutex<Option<(String, Duration)>>,
    /// The error of the page that starts at this offset, every time it is asked for.
    pub(crate) page_errors: Mutex<BTreeMap<usize, PpioError>>,
    /// A share of pages that fail (503), drawn from a seeded source.
    pub(crate) page_failures: Mutex<Option<(rand::rngs::StdRng, f64)>>,
    /// How the LIST goes on past its last item; `None`: it ends there.
    pub(crate) endless: Mutex<Option<Endless>>,
    /// JSON pointers of the fields LIST items lack, besides `tools` and `pricing`.
    pub(crate) lean: Mutex<Vec<&'static str>>,
    /// The ids on each page served, with when.
    pub(crate) served: Mutex<Vec<(String, Instant)>>,
    /// The next LIST request panics (a bug in the sweeper's path), once.
    pub(crate) panic_once: std::sync::atomic::AtomicBool,
    /// A JSON merge patch applied to every answer about an instance (by id).
    pub(crate) patches: Mutex<BTreeMap<String, Value>>,
    /// The money calls' answers (`None`: not served, the trait's default) and the calls
    /// made: (call, owner, when).
    pub(crate) money: Mutex<MoneyAnswers>,
}

/// What [`FakePpio`] answers to the money calls.
#[derive(Default)]
pub(crate) struct MoneyAnswers {
    pub(crate) catalogue: Option<Result<Catalogue, PpioError>>,
    /// Bill totals by kind.
    pub(crate) bills: Option<Result<BillTotals, PpioError>>,
    pub(crate) prepaid_bills: Option<BillTotals>,
    /// An answer for a window longer than half the month so far is too large.
    pub(crate) too_large_over_half_month: bool,
    /// Only a window that starts with the month has the totals (the others are empty).
    pub(crate) bills_first_slice_only: bool,
    pub(crate) balance: Option<Result<Amount, PpioError>>,
    pub(crate) calls: Vec<(&'static str, Option<String>, Instant)>,
}

impl MoneyAnswers {
    /// How many calls of `call` were made.
    pub(crate) fn count(&self, call: &str) -> usize {
        self.calls.iter().filter(|(c, _, _)| *c == call).count()
    }
}

/// A LIST that does not end, as the simulator's.
pub(crate) use ppio_operator::simulator::Endless;

impl FakePpio {
    pub(crate) fn object(&self, id: &str) -> Value {
        let mut v: Value = serde_json::from_str(FIXTURE).expect("fixture");
        v["id"] = id.into();
        let state = self.states.lock().expect("lock").get(id).cloned();
        v["status"]["status"] = state.unwrap_or_else(|| "running".into()).into();
        if let Some(patch) = self.patches.lock().expect("lock").get(id) {
            ppio_operator::simulator::merge_patch(&mut v, patch);
        }
        v
    }

    pub(crate) fn list_ids(&self, ids: impl IntoIterator<Item = String>) {
        let mut listed = self.listed.lock().expect("lock");
        listed.extend(ids);
        listed.sort();
    }

    /// Request times per instance id (`LIST`: the LIST pages).
    pub(crate) fn by_id(&self) -> BTreeMap<String, Vec<Instant>> {
        let mut out: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for (id, at) in self.requests.lock().expect("lock").iter() {
            out.entry(id.clone()).or_default().push(*at);
        }
        out
    }

    /// GET requests, all instances together.
    pub(crate) fn gets(&self) -> usize {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|(id, _)| id != "LIST")
            .count()
    }

    /// Requests for `id` at or after `from`.
    pub(crate) fn since(&self, id: &str, from: Instant) -> usize {
        self.by_id()
            .get(id)
            .map_or(0, |times| times.iter().filter(|t| **t >= from).count())
    }
}

impl PpioApi for FakePpio {
    fn get_instance<'a>(
        &'a self,
        _key: &'a ApiKey,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Instance, PpioError>> {
        self.requests
            .lock()
            .expect("lock")
            .push((instance_id.to_string(), Instant::now()));
        let body = self.object(instance_id).to_string();
        let error = self.get_error.lock().expect("lock").clone();
        let latency = self
            .get_latency
            .lock()
            .expect("lock")
            .as_ref()
            .filter(|(prefix, _)| instance_id.starts_with(prefix.as_str()))
            .map(|(_, latency)| *latency);
        Box::pin(async move {
            if let Some(latency) = latency {
                tokio::time::sleep(latency).await;
            }
            match error {
                Some(e) => Err(e),
                None => Ok(Instance::from_slice(body.as_bytes()).expect("fixture")),
            }
        })
    }

    fn list_instances<'a>(
        &'a self,
        _key: &'a ApiKey,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<InstancePage, PpioError>> {
        self.requests
            .lock()
            .expect("lock")
            .push(("LIST".into(), Instant::now()));
        if self
            .panic_once
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a LIST page that the sweeper cannot take");
        }
        let skipped = self.skipped.lock().expect("lock").clone();
        let ids: Vec<String> = self
            .listed
            .lock()
            .expect("lock")
            .iter()
            .filter(|id| !skipped.contains(*id))
            .cloned()
            .collect();
        let start: usize = query
            .cursor
            .as_deref()
            .and_then(|c| c.strip_prefix("after-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let limit = query.limit.max(1) as usize;
        let drawn = self
            .page_failures
            .lock()
            .expect("lock")
            .as_mut()
            .and_then(|(rng, share)| {
                use rand::Rng;
                rng.random_bool(*share)
                    .then_some(PpioError::Server { status: 503 })
            });
        let error = self
            .list_error
            .lock()
            .expect("lock")
            .clone()
            .or_else(|| self.page_errors.lock().expect("lock").get(&start).cloned())
            .or(drawn);
        let endless = *self.endless.lock().expect("lock");
        let page_ids: Vec<String> = match endless {
            Some(_) if start >= ids.len() => match endless {
                Some(Endless::Repeat) => ids.iter().rev().take(limit).cloned().collect(),
                Some(Endless::Fresh) => (start..start + limit)
                    .map(|n| format!("ghost-{n}"))
                    .collect(),
                _ => Vec::new(),
            },
            _ => ids.iter().skip(start).take(limit).cloned().collect(),
        };
        let lean = self.lean.lock().expect("lock").clone();
        let page: Vec<Value> = page_ids
            .iter()
            .map(|id| {
                let mut v = self.object(id);
                ppio_operator::simulator::lean_item(&mut v, &lean);
                v
            })
            .collect();
        let end = start + limit;
        let more = endless.is_some() || start + page_ids.len() < ids.len();
        let data = if page.is_empty() && endless == Some(Endless::Empty) {
            Value::Null
        } else {
            Value::Array(page)
        };
        let body = json!({
            "data": data,
            "next_cursor": if more { format!("after-{end}") } else { String::new() },
            "has_more": more,
        })
        .to_string();
        if error.is_none() {
            let now = Instant::now();
            self.served
                .lock()
                .expect("lock")
                .extend(page_ids.into_iter().map(|id| (id, now)));
        }
        Box::pin(async move {
            match error {
                Some(e) => Err(e),
                None => Ok(InstancePage::from_slice(body.as_bytes()).expect("page")),
            }
        })
    }

    fn products<'a>(&'a self, _key: &'a ApiKey) -> BoxFuture<'a, Result<Catalogue, PpioError>> {
        let mut m = self.money.lock().expect("lock");
        m.calls.push(("products", None, Instant::now()));
        let answer = m
            .catalogue
            .clone()
            .unwrap_or(Err(PpioError::UnexpectedStatus { status: 501 }));
        Box::pin(async move { answer })
    }

    fn bills<'a>(
        &'a self,
        _key: &'a ApiKey,
        query: &'a BillQuery,
    ) -> BoxFuture<'a, Result<BillTotals, PpioError>> {
        let mut m = self.money.lock().expect("lock");
        let call = match query.kind {
            BillKind::PayAsYouGo => "bills",
            BillKind::Prepaid => "monthly_bills",
        };
        m.calls.push((call, query.owner.clone(), Instant::now()));
        let month = ppio_operator::money::Window::month_to(jiff::Timestamp::now());
        let too_large = m.too_large_over_half_month
            && query.window.end - query.window.start > (month.end - month.start) / 2 + 1;
        let later_slice = m.bills_first_slice_only && query.window.start != month.start;
        let answer = match (query.kind, too_large) {
            (_, true) => Err(PpioError::TooLarge { limit: 1 << 20 }),
            (BillKind::PayAsYouGo, _) if later_slice => Ok(BillTotals::default()),
            (BillKind::PayAsYouGo, _) => m
                .bills
                .clone()
                .unwrap_or(Err(PpioError::UnexpectedStatus { status: 501 })),
            (BillKind::Prepaid, _) => Ok(m.prepaid_bills.clone().unwrap_or_default()),
        };
        // Only the asked owner's totals (or every one), as the API filters them.
        let answer = answer.map(|mut t| {
            if let Some(owner) = &query.owner {
                t.by_owner.retain(|o, _| o == owner);
            }
            t
        });
        Box::pin(async move { answer })
    }

    fn balance<'a>(&'a self, _key: &'a ApiKey) -> BoxFuture<'a, Result<Amount, PpioError>> {
        let mut m = self.money.lock().expect("lock");
        m.calls.push(("balance", None, Instant::now()));
        let answer = m
            .balance
            .clone()
            .unwrap_or(Err(PpioError::UnexpectedStatus { status: 501 }));
        Box::pin(async move { answer })
    }
}

/// The delay a reconcile's Action asks for (kube's Action has no accessor: read its Debug).
pub(crate) fn requeue_after(action: &kube::runtime::controller::Action) -> Option<Duration> {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1)?.split(')').next()?;
    let (number, unit) = inner
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .map(|i| inner.split_at(i))?;
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Runs reconciles like kube's controller for `length` of virtual time: at most
/// `concurrency` at once, each object again after the delay its reconcile asked for, or at
/// once when the controller's waker names it; before each reconcile the object carries the
/// status last written (as the watch would deliver it).
pub(crate) async fn run(
    ctx: Arc<Context>,
    api: &MockApi,
    wakes: Wakes,
    objects: Vec<PpioInstance>,
    concurrency: usize,
    length: Duration,
) {
    let end = Instant::now() + length;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for mut object in objects {
        let ctx = ctx.clone();
        let slots = slots.clone();
        let api = api.clone();
        let key = format!(
            "{}/{}",
            object.metadata.namespace.clone().unwrap_or_default(),
            object.metadata.name.clone().unwrap_or_default()
        );
        let wake = wakes.of(&object.metadata.name.clone().unwrap_or_default());
        let wakes = wakes.clone();
        tasks.spawn(async move {
            while Instant::now() < end {
                if let Some((_, status)) = api.writes_of(&key).pop() {
                    object.status = Some(status);
                }
                let name = object.metadata.name.clone().unwrap_or_default();
                if let Some(annotations) = wakes.1.lock().expect("lock").get(&name) {
                    object.metadata.annotations = Some(annotations.clone());
                }
                let action = {
                    let _slot = slots.acquire().await.expect("semaphore");
                    reconcile(
                        Arc::new(DeserializeGuard(Ok(
                            CachedInstance::new(object.clone()).expect("cached")
                        ))),
                        ctx.clone(),
                    )
                    .await
                    .expect("reconcile")
                };
                let delay = requeue_after(&action).unwrap_or(Duration::from_secs(3600));
                let left = end.saturating_duration_since(Instant::now());
                tokio::select! {
                    _ = tokio::time::sleep(delay.max(Duration::from_millis(1)).min(left)) => {}
                    _ = wake.notified() => {}
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The controller's waker, delivered per object name (kube's `reconcile_on`).
#[derive(Clone, Default)]
pub(crate) struct Wakes(
    Arc<Mutex<BTreeMap<String, Arc<tokio::sync::Notify>>>>,
    /// Annotations set on an object (by name) from then on, as an edit would.
    pub(crate) Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>,
);

impl Wakes {
    pub(crate) fn of(&self, name: &str) -> Arc<tokio::sync::Notify> {
        self.0
            .lock()
            .expect("lock")
            .entry(name.into())
            .or_default()
            .clone()
    }

    /// A waker for the controller, and the task that delivers what it names.
    fn waker(&self) -> Waker {
        let waker = Waker::new(usize::MAX);
        let mut woken = Box::pin(waker.stream());
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(object) = woken.next().await {
                me.of(&object.name).notify_one();
            }
        });
        waker
    }
}

pub(crate) fn context(
    api: &MockApi,
    ppio: Arc<FakePpio>,
    per_second: f64,
    burst: u32,
    observe: Observe,
) -> (Arc<Context>, Wakes) {
    context_with(api, ppio, per_second, burst, observe, MoneySettings::off())
}

/// [`context`], reading money with `money`.
pub(crate) fn context_with(
    api: &MockApi,
    ppio: Arc<FakePpio>,
    per_second: f64,
    burst: u32,
    observe: Observe,
    money: MoneySettings,
) -> (Arc<Context>, Wakes) {
    let wakes = Wakes::default();
    // A repeatable run: the same jitter and the same full-refresh slots every time (the
    // controller's tasks all run on this test's thread, on tokio's paused clock).
    seed_jitter(SEED);
    let ctx = Context::new(
        api.client(),
        ppio,
        Settings {
            default_refresh: Duration::from_secs(60),
            default_key: ApiKey::new("key-a"),
            default_key_namespaces: None,
            credentials_namespaces: None,
            budget: Budget {
                per_second: Some(per_second),
                burst,
            },
            observe,
            money,
            exports: Default::default(),
        },
        Arc::new(Metrics::new()),
    )
    .with_phase_seed(SEED)
    .with_waker(wakes.waker());
    (Arc::new(ctx), wakes)
}

/// The seed of the scheduler's randomness in these tests.
const SEED: u64 = 1;

pub(crate) fn objects(prefix: &str, n: usize, secret: Option<&str>) -> Vec<PpioInstance> {
    (0..n)
        .map(|i| {
            let mut o = instance(&format!("{prefix}{i}"), None);
            o.spec.instance_id = format!("{prefix}{i}");
            o.spec.credentials_secret_ref = secret.map(|name| SecretKeyRef {
                name: name.into(),
                key: None,
            });
            o
        })
        .collect()
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_spent_budget_never_runs_away_polls_continue_at_its_rate() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let (ctx, wakes) = context(&api, ppio.clone(), 0.5, 1, Observe::Get);
    let start = Instant::now();
    run(
        ctx,
        &api,
        wakes,
        objects("a", 80, None),
        64,
        Duration::from_secs(1200),
    )
    .await;
    let requests: Vec<Instant> = ppio.by_id().into_values().flatten().collect();
    // 0.5 requests per second: in the last 10 minutes about 300, never run away to nothing.
    let late = requests
        .iter()
        .filter(|t| **t >= start + Duration::from_secs(600))
        .count();
    assert!(
        (270..=310).contains(&late),
        "{late} requests in the last 600s at 0.5/s"
    );
    // Every instance keeps being polled (80 instances share 0.5/s: one poll each per 160s).
    let by_id = ppio.by_id();
    assert_eq!(by_id.len(), 80);
    for (id, times) in &by_id {
        let last = times.iter().max().copied().unwrap_or(start);
        assert!(
            last >= start + Duration::from_secs(1200 - 400),
            "{id} was last polled at {:?}",
            last - start
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_saturated_key_does_not_delay_another_keys_instances() {
    let api = MockApi::default();
    api.put_secret("ml", "key-b", "apiKey", "key-b");
    let ppio = Arc::new(FakePpio::default());
    let (ctx, wakes) = context(&api, ppio.clone(), 1.0, 1, Observe::Get);
    let start = Instant::now();
    // Key A: 600 instances at 60s need 10 requests/s; its budget is 1/s. Key B: 5 instances.
    let mut all = objects("a", 600, None);
    all.extend(objects("b", 5, Some("key-b")));
    run(ctx, &api, wakes, all, 16, Duration::from_secs(600)).await;
    let by_id = ppio.by_id();
    for i in 0..5 {
        let times = &by_id[&format!("b{i}")];
        assert!(
            times.len() >= 9,
            "b{i} polled {} times in 600s at a 60s interval",
            times.len()
        );
        let gaps = times.windows(2).map(|w| w[1] - w[0]);
        for gap in gaps {
            assert!(
                gap <= Duration::from_secs(67),
                "b{i}: {gap:?} between polls while key A is saturated"
            );
        }
        // Its own budget (1/s, burst 1) spaces key B's five first polls a second apart.
        assert!(
            times[0] - start <= Duration::from_secs(5),
            "b{i} first polled after {:?}",
            times[0] - start
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn one_namespaces_backlog_on_a_shared_key_does_not_stretch_another_namespaces_intervals() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, Observe::Get);
    // One key at the default budget (10/s): namespace "big" has 2,000 PpioInstances at 60s
    // (33/s asked), namespace "small" has 5.
    let mut all = objects("big", 2000, None);
    for o in &mut all {
        o.metadata.namespace = Some("big".into());
    }
    let mut small = objects("small", 5, None);
    for o in &mut small {
        o.metadata.namespace = Some("small".into());
    }
    all.extend(small);
    let start = Instant::now();
    run(ctx, &api, wakes, all, 16, Duration::from_secs(900)).await;
    let by_id = ppio.by_id();
    for i in 0..5 {
        let times = &by_id[&format!("small{i}")];
        // Every PpioInstance's first poll is urgent, in arrival order: the small namespace's
        // come after the big one's, about 200s in. From then on it keeps its interval.
        assert!(
            times[0] - start <= Duration::from_secs(220),
            "{:?}",
            times[0] - start
        );
        assert!(
            times.len() >= 11,
            "small{i} polled {} times in 900s at a 60s interval",
            times.len()
        );
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            assert!(
                gap <= Duration::from_secs(70),
                "small{i}: {gap:?} between polls while namespace big saturates the key"
            );
        }
    }
    // The big namespace still gets the rest of the budget.
    let big: usize = by_id
        .iter()
        .filter(|(id, _)| id.starts_with("big"))
        .map(|(_, t)| t.len())
        .sum();
    assert!(big >= 8500, "{big} polls of namespace big in 900s at 10/s");
}

/// Sweeps at the defaults: pages of 100, a full GET every 30 intervals.
pub(crate) const LIST: Observe = Observe::List {
    page_size: 100,
    full_refresh_intervals: 30,
};

/// The value of the metric `name` (the lines of its series, with any labels, or of those
/// that start with `name` when it ends in `{`), summed.
pub(crate) fn metric(ctx: &Context, name: &str) -> f64 {
    ctx.metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with(name) && (name.ends_with('{') || l[name.len()..].starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reconciles run so far (`ppio_reconciles_total`, every result).
pub(crate) fn reconciles(ctx: &Context) -> f64 {
    ctx.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("ppio_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn ids(objects: &[PpioInstance]) -> Vec<String> {
    objects.iter().map(|o| o.spec.instance_id.clone()).collect()
}

#[ppio_test_macros::test(start_paused = true)]
async fn sweeps_observe_every_instance_by_pages_and_fetch_each_in_full_as_the_budget_allows() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // 299 + 1 instances: 3 pages of 100.
    let all = objects("s", 299, None);
    ppio.list_ids(ids(&all));
    ppio.states
        .lock()
        .expect("lock")
        .insert("s0".into(), "starting".into());
    // One more PpioInstance appears after 20 minutes, its instance listed since the start.
    let mut late = instance("late", None);
    late.spec.instance_id = "late".into();
    // And a second PpioInstance of an instance the sweeps observed unchanged for 20 minutes
    // (they no longer hold its item decoded).
    let mut dup = instance("dup", None);
    dup.spec.instance_id = "s7".into();
    ppio.list_ids(["late".to_string()]);
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    let length = Duration::from_secs(40 * 60);
    let late_start = start + Duration::from_secs(20 * 60);
    let late_run = {
        let (ctx, api, wakes) = (ctx.clone(), api.clone(), wakes.clone());
        async move {
            tokio::time::sleep_until(late_start).await;
            run(
                ctx,
                &api,
                wakes,
                vec![late, dup],
                16,
                length - Duration::from_secs(20 * 60),
            )
            .await;
        }
    };
    let window = start + Duration::from_secs(30 * 60);
    let at_window = {
        let ctx = ctx.clone();
        async move {
            tokio::time::sleep_until(window).await;
            reconciles(&ctx)
        }
    };
    let (_, _, at_window) = tokio::join!(
        run(ctx.clone(), &api, wakes, all, 16, length),
        late_run,
        at_window
    );
    // An unchanged instance costs no reconcile: its key's walks only note that it is
    // current (one reconcile per instance per interval would be about 3,000 here).
    let in_window = reconciles(&ctx) - at_window;
    assert!(
        in_window < 1000.0,
        "{in_window} reconciles of 300 PpioInstances in 10 minutes"
    );

    // Every state shows within seconds, from the first pages, long before most GETs.
    for i in 0..299 {
        let writes = api.writes_of(&format!("ml/s{i}"));
        let (first, status) = writes.first().expect("observed");
        assert!(
            *first - start <= Duration::from_secs(5),
            "s{i} first observed after {:?}",
            *first - start
        );
        assert!(status.state.is_some(), "s{i}: {status:?}");
    }
    let (first, _) = api
        .writes_of("ml/late")
        .first()
        .cloned()
        .expect("late observed");
    assert!(
        first - late_start <= Duration::from_secs(3),
        "a new PpioInstance was observed {:?} after it appeared",
        first - late_start
    );
    let (first, status) = api
        .writes_of("ml/dup")
        .first()
        .cloned()
        .expect("dup observed");
    assert!(
        first - late_start <= Duration::from_secs(3),
        "a second PpioInstance of a listed instance was observed {:?} after it appeared",
        first - late_start
    );
    // From the LIST item (a GET would have brought the pricing).
    assert!(
        status.state.is_some() && status.pricing.is_none(),
        "{status:?}"
    );
    // Each instance is fetched in full (the status then carries the GET-only fields).
    let by_id = ppio.by_id();
    for i in 0..299 {
        assert!(by_id.contains_key(&format!("s{i}")), "s{i} never fetched");
        let (_, last) = api.writes_of(&format!("ml/s{i}")).pop().expect("a write");
        assert!(last.pricing.is_some(), "s{i} has no pricing: {last:?}");
    }
    // Steady state (the last 10 minutes): LIST pages at most once per 0.8 interval (3 pages
    // each), a stable instance fetched at most once, the transitional one every ~10 s, and
    // no status write (the same observation gives the same status).
    let pages = ppio.since("LIST", window);
    assert!(
        (3 * 10..=3 * 14).contains(&pages),
        "{pages} LIST pages in 10 minutes"
    );
    for i in 1..299 {
        let gets = ppio.since(&format!("s{i}"), window);
        assert!(gets <= 1, "s{i}: {gets} GETs in 10 minutes");
        let writes = api
            .writes_of(&format!("ml/s{i}"))
            .iter()
            .filter(|(at, _)| *at >= window)
            .count();
        assert_eq!(writes, 0, "s{i} written in steady state");
    }
    let transitional = ppio.since("s0", window);
    assert!(
        (50..=70).contains(&transitional),
        "the starting instance was fetched {transitional} times in 10 minutes"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_walk_that_skips_an_instance_does_not_mark_it_gone() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("k", 120, None);
    ppio.list_ids(ids(&all));
    // A walk over a changing list can skip items: k7 is never on a page.
    ppio.skipped.lock().expect("lock").insert("k7".into());
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    run(ctx, &api, wakes, all, 16, Duration::from_secs(600)).await;
    let writes = api.writes_of("ml/k7");
    assert!(!writes.is_empty());
    for (_, status) in &writes {
        assert_eq!(status.state.as_deref(), Some("running"), "{status:?}");
    }
    // A GET by id answers for it, at its interval.
    let gets = ppio.by_id().get("k7").map_or(0, Vec::len);
    assert!(
        (8..=12).contains(&gets),
        "k7 fetched {gets} times in 10 minutes"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn an_unavailable_list_falls_back_to_one_get_per_instance() {
    for refusal in [
        PpioError::NotFoundWithoutPpioBody,
        PpioError::Rejected {
            status: 405,
            code: None,
        },
    ] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let all = objects("u", 20, None);
        ppio.list_ids(ids(&all));
        *ppio.list_error.lock().expect("lock") = Some(refusal.clone());
        let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
        run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(600)).await;
        let by_id = ppio.by_id();
        assert_eq!(
            by_id.get("LIST").map_or(0, Vec::len),
            1,
            "{refusal:?}: LIST asked once"
        );
        for i in 0..20 {
            let gets = by_id.get(&format!("u{i}")).map_or(0, Vec::len);
            assert!(
                (9..=12).contains(&gets),
                "{refusal:?}: u{i} fetched {gets} times"
            );
            let (_, last) = api.writes_of(&format!("ml/u{i}")).pop().expect("a write");
            assert_eq!(last.state.as_deref(), Some("running"));
        }
        let metrics = ctx.metrics.encode();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("ppio_api_list_unavailable{") && l.ends_with(" 1")),
            "{metrics}"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn full_gets_waiting_for_a_short_budget_wait_without_spinning() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("w", 200, None);
    ppio.list_ids(ids(&all));
    // A full GET every interval for 200 instances needs 3.3 requests/s; the key has 1/s.
    let every_interval = Observe::List {
        page_size: 100,
        full_refresh_intervals: 1,
    };
    let (ctx, wakes) = context(&api, ppio.clone(), 1.0, 5, every_interval);
    run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(900)).await;
    let reconciles = reconciles(&ctx);
    // GETs queue for their slots (about 900 in 15 minutes) and come back when it is theirs,
    // not every second in between (which would be some 150,000 reconciles).
    let gets = ppio.gets();
    assert!(
        (600..=1000).contains(&gets),
        "{gets} GETs in 15 minutes at 1/s"
    );
    assert!(
        reconciles < 8000.0,
        "{reconciles} reconciles of 200 PpioInstances in 15 minutes"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn when_ppio_fails_every_instance_shows_it_within_its_own_interval() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // One key, two intervals: 10 s and 60 s.
    let mut all = objects("fast", 10, None);
    for o in &mut all {
        o.spec.refresh_interval = Some("10s".into());
    }
    all.extend(objects("slow", 10, None));
    ppio.list_ids(ids(&all));
    // Only the walks answer after the first GETs: no full refresh.
    let no_full = Observe::List {
        page_size: 100,
        full_refresh_intervals: 0,
    };
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, no_full);
    let failing_from = Instant::now() + Duration::from_secs(120);
    let fault = {
        let ppio = ppio.clone();
        async move {
            tokio::time::sleep_until(failing_from).await;
            // PPIO is down: its LIST and its GETs fail.
            *ppio.list_error.lock().expect("lock") = Some(PpioError::Server { status: 503 });
            *ppio.get_error.lock().expect("lock") = Some(PpioError::Server { status: 503 });
            tokio::time::sleep_until(failing_from + Duration::from_secs(120)).await;
            *ppio.list_error.lock().expect("lock") = None;
            *ppio.get_error.lock().expect("lock") = None;
        }
    };
    tokio::join!(
        run(ctx, &api, wakes, all.clone(), 16, Duration::from_secs(300)),
        fault
    );
    for o in &all {
        let name = o.metadata.name.clone().unwrap_or_default();
        let refresh = if name.starts_with("fast") { 10 } else { 60 };
        let writes = api.writes_of(&format!("ml/{name}"));
        let shown = writes
            .iter()
            .find(|(_, s)| s.condition("Synced").is_some_and(|c| c.status == "False"));
        let (at, _) = shown.unwrap_or_else(|| panic!("{name} never showed that PPIO fails"));
        // Its last good item is at most one sweep period (0.8 of 10 s) older than the fault,
        // and goes stale one interval after it was read; the GET then fails (a page is tried
        // three times first, a few seconds).
        let late = at.saturating_duration_since(failing_from);
        assert!(
            *at >= failing_from && late <= Duration::from_secs(refresh + 6),
            "{name} (every {refresh} s) showed the failure {late:?} after it began"
        );
        // The first good walk after them shows the observation again.
        let (_, last) = writes.last().expect("a write");
        assert!(
            last.condition("Synced").is_some_and(|c| c.status == "True"),
            "{name} still shows the failure: {last:?}"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_changed_list_item_reaches_its_status_within_a_sweep_and_only_its_own() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("c", 250, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let changed_at = Instant::now() + Duration::from_secs(300);
    let change = {
        let ppio = ppio.clone();
        async move {
            tokio::time::sleep_until(changed_at).await;
            ppio.states
                .lock()
                .expect("lock")
                .insert("c123".into(), "exited".into());
        }
    };
    tokio::join!(
        run(ctx, &api, wakes, all, 16, Duration::from_secs(420)),
        change
    );
    let writes = api.writes_of("ml/c123");
    let (shown, _) = writes
        .iter()
        .find(|(_, s)| s.state.as_deref() == Some("exited"))
        .expect("the new state reaches the status");
    // The next walk (every 0.8 of the 60 s interval) carries it.
    let after = shown.saturating_duration_since(changed_at);
    assert!(after <= Duration::from_secs(50), "shown {after:?} after");
    for i in (0..250).filter(|i| *i != 123) {
        let late = api
            .writes_of(&format!("ml/c{i}"))
            .into_iter()
            .filter(|(at, _)| *at >= changed_at)
            .count();
        assert_eq!(late, 0, "c{i} written after the change of another item");
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_429_on_a_get_shows_on_every_instance_of_the_key_once_its_item_is_stale() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let mut all = objects("p", 2, None);
    for o in &mut all {
        o.spec.refresh_interval = Some("10s".into());
    }
    ppio.list_ids(ids(&all));
    // The LIST answers; every GET (the first sight's) meets a 429 asking for 2 minutes.
    *ppio.get_error.lock().expect("lock") = Some(PpioError::RateLimited {
        retry_after: Some(Duration::from_secs(120)),
    });
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    run(ctx, &api, wakes, all, 16, Duration::from_secs(60)).await;
    // One GET met the 429; the pause holds every other request of the key.
    let gets = ppio.gets();
    assert_eq!(gets, 1, "{:?}", ppio.by_id());
    for name in ["p0", "p1"] {
        let writes = api.writes_of(&format!("ml/{name}"));
        let limited = writes.iter().find(|(_, s)| {
            s.condition("Synced")
                .is_some_and(|c| c.reason == "RateLimited")
        });
        let (at, _) = limited.unwrap_or_else(|| panic!("{name} never showed the pause"));
        // Its item, read at the start, is stale 10 s later.
        let after = at.saturating_duration_since(start);
        assert!(
            after <= Duration::from_secs(13),
            "{name} showed it after {after:?}"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn full_gets_after_a_long_fill_run_at_the_even_rate_not_as_a_backlog() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // 600 instances at 60 s, a full GET every 30 intervals (1,800 s): 20 full GETs a minute.
    // The budget leaves about 0.47 GETs/s besides the walks, so fetching every instance once
    // takes about 1,300 s, most of a full-refresh period (as 10,000 at 10/s do).
    let all = objects("f", 600, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 0.6, 20, LIST);
    let start = Instant::now();
    run(ctx, &api, wakes, all, 64, Duration::from_secs(4000)).await;
    let by_id = ppio.by_id();
    let firsts: Vec<Instant> = by_id
        .iter()
        .filter(|(id, _)| *id != "LIST")
        .filter_map(|(_, times)| times.first().copied())
        .collect();
    assert_eq!(firsts.len(), 600, "every instance fetched in full");
    let filled = firsts.iter().max().copied().unwrap_or(start) - start;
    assert!(
        filled >= Duration::from_secs(900),
        "filled after {filled:?}: the budget is meant to make the fill long"
    );
    let gets_between = |from: u64, to: u64| {
        by_id
            .iter()
            .filter(|(id, _)| *id != "LIST")
            .flat_map(|(_, times)| times.iter().skip(1))
            .filter(|t| {
                **t >= start + Duration::from_secs(from) && **t < start + Duration::from_secs(to)
            })
            .count()
    };
    // After the fill, no ten minutes hold more full GETs than the even rate's 200 (+10%):
    // the full GETs that came due during the fill are not run after it as a backlog.
    let mut from = filled.as_secs();
    while from + 600 <= 4000 {
        let gets = gets_between(from, from + 600);
        assert!(
            gets <= 220,
            "{gets} full GETs in the 10 minutes from {from} s (even: 200)"
        );
        from += 600;
    }
    // Once every instance is past its first full-refresh slot, each is fetched once per
    // period.
    let period_gets = gets_between(2200, 4000);
    assert!(
        (570..=630).contains(&period_gets),
        "{period_gets} full GETs of 600 instances in one full-refresh period"
    );
}

/// Reconciles of the PpioInstances run so far, read at `at`.
async fn reconciles_at(ctx: Arc<Context>, at: Instant) -> f64 {
    tokio::time::sleep_until(at).await;
    reconciles(&ctx)
}

/// Runs `all` for 66 minutes and counts, over one full-refresh period of it (30 intervals,
/// from minute 35: every instance was fetched once before), the reconciles and the GETs.
async fn one_full_refresh_period(
    api: &MockApi,
    ppio: &FakePpio,
    (ctx, wakes): (Arc<Context>, Wakes),
    all: Vec<PpioInstance>,
) -> (f64, usize) {
    let start = Instant::now();
    let (from, to) = (
        start + Duration::from_secs(35 * 60),
        start + Duration::from_secs(65 * 60),
    );
    let (_, before, after) = tokio::join!(
        run(
            ctx.clone(),
            api,
            wakes,
            all,
            16,
            Duration::from_secs(66 * 60)
        ),
        reconciles_at(ctx.clone(), from),
        reconciles_at(ctx.clone(), to),
    );
    let gets = ppio
        .by_id()
        .iter()
        .filter(|(id, _)| *id != "LIST")
        .map(|(_, times)| times.iter().filter(|t| **t >= from && **t < to).count())
        .sum();
    (after - before, gets)
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_listed_unchanged_instance_is_reconciled_at_its_full_get_and_not_between() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("q", 300, None);
    ppio.list_ids(ids(&all));
    let ctx = context(&api, ppio.clone(), 10.0, 20, LIST);
    let (in_period, gets) = one_full_refresh_period(&api, &ppio, ctx, all).await;
    // Each instance is fetched in full once per period, and that GET's reconcile is the only
    // one: the walks keep its observation current without a reconcile (a look every 10
    // intervals besides would be 900 here).
    assert!(
        (270..=330).contains(&gets),
        "{gets} full GETs in one period"
    );
    assert!(
        in_period <= gets as f64 * 1.1,
        "{in_period} reconciles for {gets} full GETs of 300 unchanged instances in one period"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_full_get_on_a_busy_key_costs_one_reconcile() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // The scale benchmark's key, scaled down: 3,000 instances on 3 requests/s. Walks of 30
    // pages and full GETs take most of the budget, so a full GET that comes due often waits
    // behind a walk's pages.
    let all = objects("r", 3000, None);
    ppio.list_ids(ids(&all));
    let ctx = context(&api, ppio.clone(), 3.0, 20, LIST);
    let (in_period, gets) = one_full_refresh_period(&api, &ppio, ctx, all).await;
    assert!(
        (2900..=3100).contains(&gets),
        "{gets} full GETs in one period"
    );
    // The line sends a full GET when it is due and its turn has come, and wakes its
    // PpioInstance with the answer: one reconcile per GET, not one to ask and another to
    // apply the answer that waited (1.22 per GET that way).
    let per_get = in_period / gets as f64;
    assert!(
        per_get <= 1.02,
        "{in_period} reconciles for {gets} full GETs: {per_get:.2} per GET"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn gets_waiting_behind_walks_come_back_about_once_when_their_slot_has_come() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // 1,000 instances, 2 requests/s: walks of 10 pages take a tenth of the budget, and the
    // first full GETs of a bulk apply queue for about 10 minutes behind each other and behind
    // every walk meanwhile (each page moves the waiting GETs one request later).
    let all = objects("m", 1000, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 2.0, 20, LIST);
    let start = Instant::now();
    run(
        ctx.clone(),
        &api,
        wakes,
        all,
        64,
        Duration::from_secs(12 * 60),
    )
    .await;
    let by_id = ppio.by_id();
    let fetched = (0..1000)
        .filter(|i| by_id.contains_key(&format!("m{i}")))
        .count();
    assert_eq!(fetched, 1000, "every instance fetched in full");
    // The budget is used: the last first GET comes about when the budget allows.
    let last = by_id
        .iter()
        .filter(|(id, _)| *id != "LIST")
        .filter_map(|(_, times)| times.first().copied())
        .max()
        .unwrap_or(start);
    assert!(
        last - start <= Duration::from_secs(10 * 60),
        "the last first GET came after {:?}",
        last - start
    );
    // A PpioInstance is reconciled when it appears, when the walk answers it, and when its
    // GET's slot has come (3,000 here), seldom once more; coming back at each walk that moved
    // its slot would be over 5,000.
    let reconciles = reconciles(&ctx);
    assert!(
        reconciles <= 3300.0,
        "{reconciles} reconciles of 1,000 PpioInstances for their first full GETs"
    );
}
