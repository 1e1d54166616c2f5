//! Keys are isolated and their state is bounded: a rotated key's state is freed once its
//! PpioInstances stop using it, a key's sweeper that ends unexpectedly is started again, and
//! a key whose calls hang does not hold every reconcile permit.

use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{FakePpio, LIST, context, ids, metric, objects, run};
use crate::support::mock::MockApi;
use ppio_operator::controller::Observe;
use tokio::time::Instant;

#[ppio_test_macros::test(start_paused = true)]
async fn a_rotated_keys_state_is_freed() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("k", 50, Some("creds"));
    ppio.list_ids(ids(&all));
    api.put_secret("ml", "creds", "apiKey", "key-0");
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    // The key is rotated every 2 minutes, 10 times; then it stays.
    let rotate = {
        let api = api.clone();
        let ctx = ctx.clone();
        async move {
            let mut most = 0.0f64;
            for n in 1..=10 {
                tokio::time::sleep_until(start + Duration::from_secs(120 * n)).await;
                most = most.max(metric(&ctx, "ppio_api_keys"));
                api.put_secret("ml", "creds", "apiKey", &format!("key-{n}"));
            }
            most
        }
    };
    let (_, most) = tokio::join!(
        run(
            ctx.clone(),
            &api,
            wakes,
            all,
            16,
            Duration::from_secs(60 * 60)
        ),
        rotate
    );
    assert!(most >= 2.0, "rotations overlap: {most} keys held at most");
    // Long after the last rotation, only the key in use holds state, and only its series
    // remain.
    assert_eq!(metric(&ctx, "ppio_api_keys"), 1.0);
    assert_eq!(ctx.key_lines(), 1, "request lines held");
    let series = ctx
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("ppio_api_list_unavailable{"))
        .count();
    assert_eq!(series, 1, "{}", ctx.metrics.encode());
    for i in 0..50 {
        let (_, last) = api.writes_of(&format!("ml/k{i}")).pop().expect("observed");
        assert_eq!(last.state.as_deref(), Some("running"));
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_sweeper_that_ends_unexpectedly_is_started_again() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("c", 50, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    let crash = start + Duration::from_secs(120);
    let change = start + Duration::from_secs(300);
    let faults = {
        let ppio = ppio.clone();
        async move {
            tokio::time::sleep_until(crash).await;
            ppio.panic_once
                .store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep_until(change).await;
            ppio.states
                .lock()
                .expect("lock")
                .insert("c7".into(), "exited".into());
        }
    };
    tokio::join!(
        run(
            ctx.clone(),
            &api,
            wakes,
            all,
            16,
            Duration::from_secs(15 * 60)
        ),
        faults
    );
    assert_eq!(metric(&ctx, "ppio_api_key_restarts_total"), 1.0);
    // The walks resumed: a change after the crash reaches the status.
    let (_, last) = api.writes_of("ml/c7").pop().expect("observed");
    assert_eq!(last.state.as_deref(), Some("exited"));
    let pages_late = ppio.since("LIST", start + Duration::from_secs(600));
    assert!(
        pages_late >= 5,
        "{pages_late} LIST pages in the last 5 minutes"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_key_whose_calls_hang_does_not_hold_every_reconcile_permit() {
    let api = MockApi::default();
    api.put_secret("ml", "key-b", "apiKey", "key-b");
    let ppio = Arc::new(FakePpio::default());
    // Key A's account answers every GET after 30 s; key B's at once.
    *ppio.get_latency.lock().expect("lock") = Some(("a".into(), Duration::from_secs(30)));
    let (ctx, wakes) = context(&api, ppio.clone(), 100.0, 100, Observe::Get);
    let ctx = Arc::new(
        Arc::into_inner(ctx)
            .expect("the only reference")
            .with_concurrency(8),
    );
    // 40 PpioInstances on A would need about 13 reconciles at work at once (a 30 s call
    // every 90 s each); 5 on B. Asked for A's first, as a bulk apply would.
    let mut all = objects("a", 40, None);
    all.extend(objects("b", 5, Some("key-b")));
    let start = Instant::now();
    run(ctx, &api, wakes, all, 64, Duration::from_secs(600)).await;
    let by_id = ppio.by_id();
    for i in 0..5 {
        let times = by_id.get(&format!("b{i}")).expect("b polled");
        assert!(
            times[0] <= start + Duration::from_secs(5),
            "b{i} first polled after {:?}",
            times[0] - start
        );
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(75)),
            "b{i} gaps {gaps:?}"
        );
        assert!(
            times.len() >= 9,
            "b{i} polled {} times in 10 minutes",
            times.len()
        );
    }
    // A is served too, with what it may hold.
    let a_polls: usize = (0..40)
        .map(|i| by_id.get(&format!("a{i}")).map_or(0, Vec::len))
        .sum();
    assert!(
        a_polls >= 100,
        "A's PpioInstances were polled {a_polls} times"
    );
}
