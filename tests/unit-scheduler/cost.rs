//! What a key's observation costs follows its PpioInstances, not its account: a few
//! PpioInstances on a large account are observed by GETs, and one short interval is served by
//! GETs rather than by walking the whole account faster.

use std::sync::Arc;
use std::time::Duration;

use crate::list_faults::longest_gaps;
use crate::scheduler::{FakePpio, LIST, Wakes, context, ids, objects, run};
use crate::support::mock::MockApi;
use ppio_operator::controller::Context;
use ppio_operator::crd::PpioInstance;
use tokio::time::Instant;

#[ppio_test_macros::test(start_paused = true)]
async fn a_few_ppioinstances_on_a_large_account_cost_about_their_gets() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // The account lists 10,000 instances (walks of 100 pages); 3 PpioInstances track three.
    let tracked = objects("a", 3, None);
    ppio.list_ids((0..10_000).map(|i| format!("a{i}")));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    run(ctx, &api, wakes, tracked, 16, Duration::from_secs(40 * 60)).await;
    // After the first minutes: 30 intervals of 60 s. GETs alone cost 3 requests an interval.
    let (from, to) = (
        start + Duration::from_secs(5 * 60),
        start + Duration::from_secs(35 * 60),
    );
    let requests: usize = ppio
        .by_id()
        .values()
        .map(|times| times.iter().filter(|t| **t >= from && **t < to).count())
        .sum();
    assert!(
        requests <= 2 * 3 * 30,
        "{requests} PPIO requests in 30 intervals for 3 PpioInstances"
    );
    // Learning that took a few pages, not the account's 100: a walk stops once its pages
    // cost more than the GETs.
    let pages = ppio.by_id().get("LIST").map_or(0, Vec::len);
    assert!(pages <= 10, "{pages} LIST pages in 40 minutes");
    for i in 0..3 {
        let writes = api.writes_of(&format!("ml/a{i}"));
        let (_, last) = writes.last().expect("observed");
        assert_eq!(last.state.as_deref(), Some("running"));
        let gets = ppio.since(&format!("a{i}"), from) - ppio.since(&format!("a{i}"), to);
        assert!(
            (27..=33).contains(&gets),
            "a{i}: {gets} GETs in 30 intervals"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn one_short_interval_is_kept_by_gets_without_changing_the_walks() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // 1,000 instances at 60 s (walks of 10 pages), and one PpioInstance at 10 s.
    let mut all = objects("s", 1000, None);
    all[0].spec.refresh_interval = Some("10s".into());
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    run(ctx, &api, wakes, all, 64, Duration::from_secs(15 * 60)).await;
    let (from, to) = (
        start + Duration::from_secs(5 * 60),
        start + Duration::from_secs(15 * 60),
    );
    // The walks keep their pace for the 60 s intervals: every 48 s, 10 pages.
    let pages = ppio.since("LIST", from);
    assert!(pages <= 10 * 14, "{pages} LIST pages in 10 minutes");
    // The 10 s PpioInstance is observed every 10 s (and a little jitter).
    let gaps = longest_gaps(&ppio, from, to);
    let fast = gaps.get("s0").copied().unwrap_or(to - from);
    assert!(
        fast <= Duration::from_secs(12),
        "s0 unobserved for {fast:?}"
    );
}

/// A busy key: 1,000 instances (named `prefix0`...) and a full GET of each every interval,
/// so routine GETs alone would ask for 16.7 requests/s of a key that has 10: their period
/// stretches so that they take what walks leave of four fifths of it.
fn busy_key(
    prefix: &str,
) -> (
    MockApi,
    Arc<FakePpio>,
    Vec<PpioInstance>,
    Arc<Context>,
    Wakes,
) {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects(prefix, 1000, None);
    ppio.list_ids(ids(&all));
    let busy = ppio_operator::controller::Observe::List {
        page_size: 100,
        full_refresh_intervals: 1,
    };
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, busy);
    (api, ppio, all, ctx, wakes)
}

#[ppio_test_macros::test(start_paused = true)]
async fn transitions_are_followed_ahead_of_routine_gets_on_a_busy_key() {
    let (api, ppio, all, ctx, wakes) = busy_key("t");
    let start = Instant::now();
    let change = start + Duration::from_secs(300);
    let starting: Vec<String> = (0..10).map(|i| format!("t{}", i * 97)).collect();
    let fault = {
        let (ppio, starting) = (ppio.clone(), starting.clone());
        async move {
            tokio::time::sleep_until(change).await;
            let mut states = ppio.states.lock().expect("lock");
            for id in starting {
                states.insert(id, "starting".into());
            }
        }
    };
    let end = start + Duration::from_secs(15 * 60);
    tokio::join!(run(ctx, &api, wakes, all, 64, end - start), fault);
    // Once a walk showed the change (within a minute), each is fetched every 10 s.
    let gaps = longest_gaps(&ppio, change + Duration::from_secs(60), end);
    for id in &starting {
        let gap = gaps.get(id).copied().unwrap_or(end - change);
        assert!(
            gap <= Duration::from_secs(12),
            "{id} in transition went {gap:?} without a GET"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_refresh_request_on_a_busy_key_is_answered_within_seconds() {
    let (api, ppio, all, ctx, wakes) = busy_key("r");
    let start = Instant::now();
    let asked = start + Duration::from_secs(300);
    let edit = {
        let wakes = wakes.clone();
        async move {
            tokio::time::sleep_until(asked).await;
            wakes.1.lock().expect("lock").insert(
                "r5".into(),
                [(
                    ppio_operator::crd::REFRESH_ANNOTATION.to_string(),
                    "2026-12-05T10:00:00Z".to_string(),
                )]
                .into(),
            );
            // The watch brings the edit: a reconcile.
            wakes.of("r5").notify_one();
        }
    };
    tokio::join!(
        run(ctx, &api, wakes.clone(), all, 64, Duration::from_secs(600)),
        edit
    );
    let got = ppio
        .by_id()
        .get("r5")
        .and_then(|times| times.iter().find(|t| **t >= asked).copied())
        .expect("a GET after the request");
    assert!(
        got - asked <= Duration::from_secs(5),
        "the refresh request was answered {:?} after it was made",
        got - asked
    );
    let (_, last) = api.writes_of("ml/r5").pop().expect("written");
    assert!(last.last_handled_refresh.is_some(), "{last:?}");
}

#[ppio_test_macros::test(start_paused = true)]
async fn full_gets_the_budget_cannot_cover_are_spread_further_apart_and_said() {
    // The busy key: full GETs every interval would take 16.7 requests/s of its 10.
    let (api, ppio, all, ctx, wakes) = busy_key("f");
    let start = Instant::now();
    run(
        ctx.clone(),
        &api,
        wakes,
        all,
        64,
        Duration::from_secs(20 * 60),
    )
    .await;
    // Walks of 10 pages every 48 s take 0.2/s; a fifth of the budget stays free: full GETs
    // get 7.8/s, so they come about every 2.14 intervals.
    let stretch = crate::scheduler::metric(&ctx, "ppio_api_full_refresh_stretch_ratio");
    assert!((stretch - 2.14).abs() < 0.05, "stretch {stretch}");
    let (from, to) = (
        start + Duration::from_secs(10 * 60),
        start + Duration::from_secs(20 * 60),
    );
    let by_id = ppio.by_id();
    let in_window = |times: &Vec<Instant>| -> Vec<Instant> {
        times
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < to)
            .collect()
    };
    let gets: usize = by_id
        .iter()
        .filter(|(id, _)| *id != "LIST")
        .map(|(_, times)| in_window(times).len())
        .sum();
    assert!(
        gets <= 600 * 85 / 10,
        "{gets} GETs in 600 s: the key's budget is spent on full GETs"
    );
    // Every instance still gets its full GET, at its stretched pace (about 128 s).
    for i in 0..1000 {
        let id = format!("f{i}");
        let times = in_window(by_id.get(&id).unwrap_or(&Vec::new()));
        let mut last = from;
        for t in times.into_iter().chain([to]) {
            assert!(
                t - last <= Duration::from_secs(200),
                "{id} went {:?} without a full GET",
                t - last
            );
            last = t;
        }
    }
}
