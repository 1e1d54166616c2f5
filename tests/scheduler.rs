//! The scheduler under load, in virtual time (tokio's paused clock): kube's controller is
//! modelled by a loop that runs at most `concurrency` reconciles at once and requeues each
//! object after the delay its reconcile asked for; PPIO is an in-memory fake that records
//! every request. What is pinned is behaviour: who is polled, and how often.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::core::DeserializeGuard;
use ppio_operator::controller::{Budget, Context, Settings, reconcile};
use ppio_operator::crd::{PpioInstance, SecretKeyRef};
use ppio_operator::metrics::Metrics;
use ppio_operator::ppio::{ApiKey, Instance, InstancePage, ListQuery, PpioApi, PpioError};
use support::mock::{FIXTURE, MockApi, instance};
use tokio::time::Instant;

/// PPIO in memory: every GET answers the fixture, at once; requests are recorded by id.
#[derive(Default)]
struct FakePpio {
    requests: Mutex<Vec<(String, Instant)>>,
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
        Box::pin(async { Ok(Instance::from_slice(FIXTURE.as_bytes()).expect("fixture")) })
    }

    fn list_instances<'a>(
        &'a self,
        _key: &'a ApiKey,
        _query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<InstancePage, PpioError>> {
        Box::pin(async { Ok(InstancePage::default()) })
    }
}

impl FakePpio {
    /// Request times per instance id.
    fn by_id(&self) -> BTreeMap<String, Vec<Instant>> {
        let mut out: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
        for (id, at) in self.requests.lock().expect("lock").iter() {
            out.entry(id.clone()).or_default().push(*at);
        }
        out
    }
}

/// The delay a reconcile's Action asks for (kube's Action has no accessor: read its Debug).
fn requeue_after(action: &kube::runtime::controller::Action) -> Option<Duration> {
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

/// Runs reconciles like kube's controller for `length` of virtual time.
async fn run(ctx: Arc<Context>, objects: Vec<PpioInstance>, concurrency: usize, length: Duration) {
    let end = Instant::now() + length;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for object in objects {
        let ctx = ctx.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let object = Arc::new(DeserializeGuard(Ok(object)));
            while Instant::now() < end {
                let action = {
                    let _slot = slots.acquire().await.expect("semaphore");
                    reconcile(object.clone(), ctx.clone())
                        .await
                        .expect("reconcile")
                };
                let delay = requeue_after(&action).unwrap_or(Duration::from_secs(3600));
                tokio::time::sleep(delay.max(Duration::from_millis(1))).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn context(api: &MockApi, ppio: Arc<FakePpio>, per_second: f64, burst: u32) -> Arc<Context> {
    Arc::new(Context::new(
        api.client(),
        ppio,
        Settings {
            default_refresh: Duration::from_secs(60),
            default_key: ApiKey::new("key-a"),
            default_key_namespaces: None,
            budget: Budget {
                per_second: Some(per_second),
                burst,
            },
        },
        Arc::new(Metrics::new()),
    ))
}

fn objects(prefix: &str, n: usize, secret: Option<&str>) -> Vec<PpioInstance> {
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

#[tokio::test(start_paused = true)]
async fn a_spent_budget_never_runs_away_polls_continue_at_its_rate() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let ctx = context(&api, ppio.clone(), 0.5, 1);
    let start = Instant::now();
    run(ctx, objects("a", 80, None), 64, Duration::from_secs(1200)).await;
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

#[tokio::test(start_paused = true)]
async fn a_saturated_key_does_not_delay_another_keys_instances() {
    let api = MockApi::default();
    api.put_secret("ml", "key-b", "apiKey", "key-b");
    let ppio = Arc::new(FakePpio::default());
    let ctx = context(&api, ppio.clone(), 1.0, 1);
    let start = Instant::now();
    // Key A: 600 instances at 60s need 10 requests/s; its budget is 1/s. Key B: 5 instances.
    let mut all = objects("a", 600, None);
    all.extend(objects("b", 5, Some("key-b")));
    run(ctx, all, 16, Duration::from_secs(600)).await;
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
