//! New PpioInstances: a lone one is fetched in full first, so its first status is complete; a
//! bulk apply is served by walks and says so (`Reconciling=True FetchingDetails`) until each
//! instance's first GET; PpioInstances arriving one by one cost no walk each.

use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{FakePpio, LIST, context, ids, objects, run};
use crate::support::mock::MockApi;
use ppio_operator::crd::PpioInstanceStatus;
use tokio::time::Instant;

fn reconciling(status: &PpioInstanceStatus) -> (String, String) {
    let c = status.condition("Reconciling").expect("Reconciling");
    (c.status.clone(), c.reason.clone())
}

/// Whether a status shows the instance's details (only a GET brings them).
fn complete(status: &PpioInstanceStatus) -> bool {
    status.pricing.is_some()
        && status
            .endpoints
            .as_ref()
            .is_some_and(|e| e.jupyter.is_some() && e.ssh.is_some() && e.log.is_some())
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_lone_new_ppioinstance_is_fetched_first_and_its_first_status_is_complete() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // The account lists 300 instances; 100 PpioInstances already track some of them.
    let tracked = objects("t", 100, None);
    ppio.list_ids(ids(&tracked));
    ppio.list_ids((0..200).map(|i| format!("other{i}")));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    let arrives = start + Duration::from_secs(300);
    let mut lone = objects("lone", 1, None);
    ppio.list_ids(ids(&lone));
    lone[0].spec.instance_id = "lone0".into();
    let late = {
        let (ctx, api, wakes) = (ctx.clone(), api.clone(), wakes.clone());
        async move {
            tokio::time::sleep_until(arrives).await;
            run(ctx, &api, wakes, lone, 16, Duration::from_secs(300)).await;
        }
    };
    tokio::join!(
        run(ctx, &api, wakes, tracked, 16, Duration::from_secs(600)),
        late
    );
    // Its first request is its own GET, and its first status is whole: ready, with its
    // endpoints and prices, and nothing left to fetch.
    let first_get = ppio.by_id().get("lone0").and_then(|t| t.first().copied());
    let first_get = first_get.expect("fetched");
    assert!(first_get - arrives <= Duration::from_secs(2));
    let writes = api.writes_of("ml/lone0");
    let (_, first) = writes.first().expect("observed");
    assert!(complete(first), "{first:?}");
    assert_eq!(
        first.condition("Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(reconciling(first), ("False".into(), "Observed".into()));
    // No walk started for it: the next walk is the regular one.
    let pages_soon = ppio.by_id().get("LIST").map_or(0, |t| {
        t.iter()
            .filter(|t| **t >= arrives && **t < first_get + Duration::from_secs(1))
            .count()
    });
    assert_eq!(pages_soon, 0, "a walk ran for a lone new PpioInstance");
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_bulk_apply_says_its_details_are_still_coming_until_each_first_get() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("b", 300, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    run(ctx, &api, wakes, all, 16, Duration::from_secs(300)).await;
    let mut from_items = 0;
    for i in 0..300 {
        let writes = api.writes_of(&format!("ml/b{i}"));
        for (_, status) in &writes {
            // A status without the details always says they are coming.
            if !complete(status) {
                assert_eq!(
                    reconciling(status),
                    ("True".into(), "FetchingDetails".into()),
                    "b{i}: {status:?}"
                );
            }
        }
        let (_, first) = writes.first().expect("observed");
        from_items += usize::from(!complete(first));
        let (_, last) = writes.last().expect("observed");
        assert!(complete(last), "b{i} never fetched in full");
        assert_eq!(
            reconciling(last),
            ("False".into(), "Observed".into()),
            "b{i}"
        );
    }
    // The walks served the bulk apply (a GET each first would take 30 s of the budget).
    assert!(
        from_items >= 250,
        "{from_items} first statuses from LIST items"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn ppioinstances_arriving_one_by_one_cost_no_walk_each() {
    // Walks of 10 pages at 10 requests/s take about a second of each 48 s.
    let (pages, regular) = one_by_one(10.0, 40).await;
    assert!(
        pages <= regular + 15,
        "{pages} LIST pages (regular walks: {regular})"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn ppioinstances_arriving_one_by_one_during_walks_cost_no_walk_each() {
    // At 0.5 requests/s a walk of 10 pages takes 20 s of each 48 s: most newcomers arrive
    // while one is under way, and it may have read their page already.
    let (pages, regular) = one_by_one(0.5, 40).await;
    assert!(
        pages <= regular + 15,
        "{pages} LIST pages (regular walks: {regular})"
    );
}

/// A key whose account lists 1,000 instances (walks of 10 pages), 100 of them tracked from
/// the start, at `per_second`; from minute 5 on, `arrivals` new PpioInstances, one every
/// 15 s. The LIST pages in the 10 minutes from minute 5, and in the same 10 minutes of the
/// same run without the arrivals (the regular walks). Each newcomer's first status must be
/// complete.
async fn one_by_one(per_second: f64, arrivals: usize) -> (usize, usize) {
    let mut counts = [0, 0];
    for (run_no, arrivals) in [(0, 0), (1, arrivals)] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let tracked = objects("r", 100, None);
        ppio.list_ids((0..1000).map(|i| format!("r{i}")));
        let (ctx, wakes) = context(&api, ppio.clone(), per_second, 20, LIST);
        let start = Instant::now();
        let window = start + Duration::from_secs(300);
        let length = Duration::from_secs(900);
        let newcomers: Vec<_> = (0..arrivals)
            .map(|n| {
                let (ctx, api, wakes) = (ctx.clone(), api.clone(), wakes.clone());
                let mut object = objects("r", 101 + n, None).pop().expect("one");
                object.spec.instance_id = format!("r{}", 100 + n);
                object.metadata.name = Some(format!("r{}", 100 + n));
                async move {
                    let at = window + Duration::from_secs(15 * n as u64);
                    tokio::time::sleep_until(at).await;
                    run(ctx, &api, wakes, vec![object], 16, start + length - at).await;
                }
            })
            .collect();
        tokio::join!(
            run(ctx, &api, wakes, tracked, 16, length),
            futures::future::join_all(newcomers)
        );
        let end = window + Duration::from_secs(600);
        counts[run_no] = ppio.since("LIST", window) - ppio.since("LIST", end);
        for n in 0..arrivals {
            let name = format!("r{}", 100 + n);
            let (_, first) = api
                .writes_of(&format!("ml/{name}"))
                .first()
                .cloned()
                .unwrap_or_else(|| panic!("{name} never observed"));
            assert!(complete(&first), "{name}: {first:?}");
        }
    }
    (counts[1], counts[0])
}
