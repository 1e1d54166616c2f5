//! Keys are isolated and their state is bounded: a rotated key's state is freed once its
//! PpioInstances stop using it, and a key's sweeper that ends unexpectedly is started again.

use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{FakePpio, LIST, context, ids, metric, objects, run};
use crate::support::mock::MockApi;
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
