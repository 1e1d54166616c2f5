//! A LIST that misbehaves: errors only the LIST answers, errors on a later page, failing pages,
//! LISTs that never end. Whatever the LIST does, every instance stays observed (by GETs when
//! the walks cannot), and no LIST error becomes an instance's outcome. Virtual time, a seeded
//! scheduler, the in-memory PPIO of `scheduler.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{Endless, FakePpio, LIST, context, ids, metric, objects, run};
use crate::support::mock::MockApi;
use ppio_operator::ppio::{DecodeError, PpioError};
use rand::SeedableRng;
use tokio::time::Instant;

/// Every write of every PpioInstance named `prefix{0..n}` shows the instance running and
/// observed: nothing a LIST did reached a status.
fn assert_always_observed(api: &MockApi, prefix: &str, n: usize, why: &str) {
    for i in 0..n {
        let writes = api.writes_of(&format!("ml/{prefix}{i}"));
        assert!(!writes.is_empty(), "{why}: {prefix}{i} never observed");
        for (_, status) in &writes {
            assert_eq!(
                status.state.as_deref(),
                Some("running"),
                "{why}: {prefix}{i}: {status:?}"
            );
            let synced = status.condition("Synced").expect("Synced");
            assert_eq!(synced.status, "True", "{why}: {prefix}{i}: {synced:?}");
        }
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn any_list_failure_falls_back_to_gets_and_never_shows_on_an_instance() {
    for (why, refusal) in [
        ("403 on LIST alone", PpioError::Forbidden),
        (
            "400 for the page size",
            PpioError::Rejected {
                status: 400,
                code: Some("INVALID_PARAMS".into()),
            },
        ),
        (
            "a page over its cap",
            PpioError::TooLarge { limit: 1 << 20 },
        ),
        (
            "a page that is not a page",
            PpioError::Decode(DecodeError::NotAPage),
        ),
        ("503 for good", PpioError::Server { status: 503 }),
        ("401 on LIST alone", PpioError::Unauthorized),
    ] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let all = objects("u", 20, None);
        ppio.list_ids(ids(&all));
        *ppio.list_error.lock().expect("lock") = Some(refusal.clone());
        let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
        run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(600)).await;
        assert_always_observed(&api, "u", 20, why);
        let by_id = ppio.by_id();
        for i in 0..20 {
            let gets = by_id.get(&format!("u{i}")).map_or(0, Vec::len);
            assert!((9..=12).contains(&gets), "{why}: u{i} fetched {gets} times");
        }
        // LIST is tried again later (each walk tries a page three times), not every interval
        // of every instance.
        let pages = by_id.get("LIST").map_or(0, Vec::len);
        assert!((6..=40).contains(&pages), "{why}: {pages} LIST requests");
        assert_eq!(
            metric(&ctx, "ppio_api_list_unavailable{"),
            1.0,
            "{why}: observed by GETs, said in the metric"
        );
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_later_page_answering_not_found_marks_nothing_gone() {
    for (why, error) in [
        ("an expired cursor", PpioError::NotFound { status: 400 }),
        ("a 404 on page 2", PpioError::NotFound { status: 404 }),
    ] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let all = objects("n", 250, None);
        ppio.list_ids(ids(&all));
        // Page 1 answers; page 2 (from item 100 on) answers "not found", every time.
        ppio.page_errors.lock().expect("lock").insert(100, error);
        let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
        run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(600)).await;
        assert_always_observed(&api, "n", 250, why);
        // The instances past page 1 are observed by their own GETs.
        let sorted = {
            let mut ids = ids(&objects("n", 250, None));
            ids.sort();
            ids
        };
        let by_id = ppio.by_id();
        for id in &sorted[100..] {
            let gets = by_id.get(id).map_or(0, Vec::len);
            assert!(gets >= 5, "{why}: {id} fetched {gets} times in 10 minutes");
        }
    }
}

/// For each id, the longest time between two observations of it (a LIST page that served it,
/// or a GET) from `from` to `to`, counting the edges.
pub(crate) fn longest_gaps(
    ppio: &FakePpio,
    from: Instant,
    to: Instant,
) -> BTreeMap<String, Duration> {
    let mut seen: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for (id, at) in ppio.served.lock().expect("lock").iter() {
        seen.entry(id.clone()).or_default().push(*at);
    }
    for (id, times) in ppio.by_id() {
        if id != "LIST" {
            seen.entry(id).or_default().extend(times);
        }
    }
    seen.into_iter()
        .map(|(id, mut times)| {
            times.retain(|t| *t >= from && *t <= to);
            times.sort();
            let mut last = from;
            let mut longest = Duration::ZERO;
            for t in times.into_iter().chain([to]) {
                longest = longest.max(t - last);
                last = t;
            }
            (id, longest)
        })
        .collect()
}

#[ppio_test_macros::test(start_paused = true)]
async fn failed_pages_are_tried_again_from_their_cursor_and_no_observation_grows_old() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    // 2,000 instances: walks of 20 pages, of which one in twenty fails (seeded).
    let all = objects("f", 2000, None);
    ppio.list_ids(ids(&all));
    *ppio.page_failures.lock().expect("lock") = Some((rand::rngs::StdRng::seed_from_u64(7), 0.05));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
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
    assert_always_observed(&api, "f", 2000, "5% failing pages");
    // After the start: no instance goes unobserved for longer than its interval (60 s) and
    // one walk period (48 s), with a few seconds for the page retries.
    let gaps = longest_gaps(
        &ppio,
        start + Duration::from_secs(5 * 60),
        start + Duration::from_secs(20 * 60),
    );
    let worst = gaps
        .iter()
        .filter(|(id, _)| id.starts_with('f'))
        .max_by_key(|(_, gap)| **gap)
        .expect("observations");
    assert!(
        *worst.1 <= Duration::from_secs(60 + 48 + 8),
        "{} unobserved for {:?}",
        worst.0,
        worst.1
    );
    assert!(
        metric(&ctx, "ppio_api_sweeps_total{result=\"ok\"}") >= 20.0,
        "walks end well despite failing pages"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_list_that_never_ends_is_cut_short_and_counted() {
    for endless in [Endless::Repeat, Endless::Empty] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let all = objects("e", 250, None);
        ppio.list_ids(ids(&all));
        *ppio.endless.lock().expect("lock") = Some(endless);
        let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
        run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(600)).await;
        let why = format!("{endless:?}");
        assert_always_observed(&api, "e", 250, &why);
        // About 13 walks in 10 minutes, each of the 3 real pages and the 3 that bring
        // nothing new.
        let pages = ppio.by_id().get("LIST").map_or(0, Vec::len);
        assert!(pages <= 14 * 6, "{why}: {pages} LIST pages in 10 minutes");
        let truncated = metric(&ctx, "ppio_api_sweeps_total{result=\"truncated\"}");
        assert!(
            truncated >= 10.0,
            "{why}: {truncated} walks counted as cut short"
        );
        assert_eq!(metric(&ctx, "ppio_api_sweeps_total{result=\"ok\"}"), 0.0);
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_list_past_its_usual_length_goes_over_to_gets() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let all = objects("g", 250, None);
    ppio.list_ids(ids(&all));
    let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, LIST);
    let start = Instant::now();
    let turn = start + Duration::from_secs(120);
    let fault = {
        let ppio = ppio.clone();
        async move {
            tokio::time::sleep_until(turn).await;
            // From now on, past its 250 items the LIST brings new items without end.
            *ppio.endless.lock().expect("lock") = Some(Endless::Fresh);
        }
    };
    tokio::join!(
        run(ctx.clone(), &api, wakes, all, 16, Duration::from_secs(900)),
        fault
    );
    assert_always_observed(&api, "g", 250, "a LIST without end");
    let pages_after = ppio.since("LIST", turn);
    // One walk of at most twice the 3 pages of the last complete walk and 10, then GETs.
    assert!(
        pages_after <= 2 * 3 + 10,
        "{pages_after} LIST pages after the LIST stopped ending"
    );
    let last_minutes = start + Duration::from_secs(600);
    for i in 0..250 {
        let gets = ppio.since(&format!("g{i}"), last_minutes);
        assert!(gets >= 4, "g{i} fetched {gets} times in the last 5 minutes");
    }
    assert_eq!(metric(&ctx, "ppio_api_list_unavailable{"), 1.0);
}

#[ppio_test_macros::test(start_paused = true)]
async fn lean_list_items_cost_no_write_and_lose_no_field() {
    use ppio_operator::ppio::Instance;
    use ppio_operator::status::{Observation, compute_status};
    for lean in [
        vec!["/billing/prepaid"],
        vec!["/network", "/created_at", "/resource_specs/gpu_ids"],
        vec![
            "/ports",
            "/volumes",
            "/billing",
            "/status/message",
            "/auto_migrate",
        ],
    ] {
        let api = MockApi::default();
        let ppio = Arc::new(FakePpio::default());
        let all = objects("l", 50, None);
        ppio.list_ids(ids(&all));
        *ppio.lean.lock().expect("lock") = lean.clone();
        // A full GET every 2 intervals: several over the run, between walks of lean items.
        let often = ppio_operator::controller::Observe::List {
            page_size: 100,
            full_refresh_intervals: 2,
        };
        let (ctx, wakes) = context(&api, ppio.clone(), 10.0, 20, often);
        let start = Instant::now();
        run(ctx, &api, wakes, all, 16, Duration::from_secs(15 * 60)).await;
        let settled = start + Duration::from_secs(5 * 60);
        for i in 0..50 {
            let name = format!("l{i}");
            let writes = api.writes_of(&format!("ml/{name}"));
            let late: Vec<_> = writes.iter().filter(|(at, _)| *at >= settled).collect();
            assert!(
                late.is_empty(),
                "{lean:?}: {name} written {} times at rest",
                late.len()
            );
            let full = ppio.since(&name, settled);
            assert!(full >= 3, "{lean:?}: {name} fetched {full} times at rest");
            // The status shows every field the GET gives, the lean items' gaps included.
            let get =
                Instance::from_slice(ppio.object(&name).to_string().as_bytes()).expect("fixture");
            let (_, last) = writes.last().expect("a write");
            let expected = compute_status(
                &name,
                None,
                None,
                Observation::Instance(&get),
                None,
                jiff::Timestamp::UNIX_EPOCH,
            );
            let observed = |s: &ppio_operator::crd::PpioInstanceStatus| {
                let mut s = s.clone();
                s.conditions.clear();
                s.observed_generation = None;
                s
            };
            assert_eq!(observed(last), observed(&expected), "{lean:?}: {name}");
        }
    }
}
