//! Money: each key's catalogue and bills read inside its budget, hourly costs calibrated or
//! left unknown, bills folded into month to date, the account's balance and runway, spot and
//! prepaid warnings; and none of it ever touches an instance's observation.

use std::sync::Arc;
use std::time::Duration;

use crate::scheduler::{FakePpio, LIST, context_with, ids, metric, objects, run};
use crate::support::mock::MockApi;
use ppio_operator::controller::{MoneySettings, Observe};
use ppio_operator::crd::{PpioInstance, PpioInstanceStatus};
use ppio_operator::money::{Amount, BillTotals, Catalogue, ProductPrice, Spend};
use ppio_operator::ppio::PpioError;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Reads every minute (tests only: the flags allow a minute at the least), in CNY.
fn every_minute() -> MoneySettings {
    MoneySettings {
        currency: Some("CNY".into()),
        catalogue_every: Duration::from_secs(60),
        bills_every: Duration::from_secs(60),
        ..MoneySettings::default()
    }
}

/// One product, `p1`: 12.600 an hour postpaid, 5.000 spot.
fn catalogue() -> Catalogue {
    let mut c = Catalogue::default();
    c.products.insert(
        "p1".into(),
        ProductPrice {
            precision: 3,
            postpaid: Some(12600),
            spot: Some(5000),
        },
    );
    c
}

/// An instance of product `p1` billed `mode`, at `price` with `cards` GPUs.
fn priced(ppio: &FakePpio, id: &str, mode: &str, price: i64, cards: i64) {
    ppio.patches.lock().expect("lock").insert(
        id.into(),
        json!({
            "product_id": "p1",
            "billing": {"mode": mode, "prepaid": null},
            "resource_specs": {"gpu_num": cards},
            "pricing": {"instance_price": price, "spot": {"spot_status": "running", "spot_reclaim_time": 0}},
        }),
    );
}

fn patch(ppio: &FakePpio, id: &str, more: Value) {
    let mut patches = ppio.patches.lock().expect("lock");
    let p = patches.entry(id.into()).or_insert_with(|| json!({}));
    ppio_operator::simulator::merge_patch(p, &more);
}

/// The status last written for `name`.
fn last(api: &MockApi, name: &str) -> PpioInstanceStatus {
    api.writes_of(&format!("ml/{name}"))
        .pop()
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("{name} has a status"))
}

fn condition(s: &PpioInstanceStatus, type_: &str) -> (String, String) {
    let c = s
        .condition(type_)
        .unwrap_or_else(|| panic!("{type_} is set"));
    (c.status.clone(), c.reason.clone())
}

fn the_objects(n: usize) -> Vec<PpioInstance> {
    objects("m", n, None)
}

#[ppio_test_macros::test(start_paused = true)]
async fn hourly_cost_is_calibrated_per_instance_per_card_or_left_unknown() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    priced(&ppio, "m1", "postpaid", 25200, 2);
    priced(&ppio, "m2", "postpaid", 999, 1);
    priced(&ppio, "m3", "spot", 5000, 1);
    ppio.money.lock().expect("lock").catalogue = Some(Ok(catalogue()));
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(4),
        8,
        Duration::from_secs(150),
    )
    .await;

    let cost = |name: &str| last(&api, name).cost.expect("cost");
    let m0 = cost("m0");
    assert_eq!(m0.hourly.as_deref(), Some("12.600"));
    assert_eq!(m0.hourly_basis.as_deref(), Some("perInstance"));
    assert_eq!(m0.currency.as_deref(), Some("CNY"));
    let m1 = cost("m1");
    assert_eq!(m1.hourly.as_deref(), Some("25.200"));
    assert_eq!(m1.hourly_basis.as_deref(), Some("perCard"));
    // No match: no hourly figure, and the raw integers stay.
    let m2 = last(&api, "m2");
    let c2 = m2.cost.clone().expect("cost");
    assert_eq!(c2.hourly, None);
    assert_eq!(c2.hourly_basis.as_deref(), Some("Unknown"));
    assert_eq!(m2.pricing.and_then(|p| p.instance_price), Some(999));
    assert_eq!(cost("m3").hourly.as_deref(), Some("5.000"));
    // Calibration cost no instance request: one GET per interval each, as without money.
    for i in 0..4 {
        let gets = ppio.since(&format!("m{i}"), Instant::now() - Duration::from_secs(150));
        assert!((2..=4).contains(&gets), "m{i}: {gets} GETs in 150s");
    }
    let products = ppio.money.lock().expect("lock").count("products");
    assert!((2..=3).contains(&products), "{products} catalogue reads");
    assert_eq!(
        metric(&ctx, "ppio_instance_hourly_cost{"),
        12.6 + 25.2 + 5.0,
        "hourly cost series of the calibrated instances"
    );
}

/// A key's first catalogue and bills go ahead of its GETs: a bulk apply on a busy key shows
/// the hourly cost in every first status, and no status is written a second time when the
/// catalogue comes (the catalogue used to wait behind every first GET, and then rewrote
/// every status of the key).
#[ppio_test_macros::test(start_paused = true)]
async fn a_bulk_apply_shows_the_cost_in_every_first_status_and_writes_each_once() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let n = 40;
    for i in 0..n {
        priced(&ppio, &format!("m{i}"), "postpaid", 12600, 1);
    }
    ppio.money.lock().expect("lock").catalogue = Some(Ok(catalogue()));
    // Two requests a second: the 40 first GETs take 20 s.
    let (ctx, wakes) = context_with(&api, ppio.clone(), 2.0, 2, Observe::Get, every_minute());
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(n),
        8,
        Duration::from_secs(40),
    )
    .await;
    // The key's burst (two GETs) goes before its first catalogue read: those two are
    // written again, with the cost, half a second later. Every other PpioInstance's first
    // status shows the cost, and nothing writes it again.
    for i in 0..n {
        let writes = api.writes_of(&format!("ml/m{i}"));
        let hourly = |k: usize| {
            writes
                .get(k)
                .and_then(|(_, s)| s.cost.clone())
                .and_then(|c| c.hourly)
        };
        let last = writes.len().saturating_sub(1);
        assert_eq!(hourly(last).as_deref(), Some("12.600"), "m{i}'s status");
        if i < 2 {
            assert_eq!(writes.len(), 2, "m{i}: written before the catalogue came");
            assert!(writes[1].0 - writes[0].0 <= Duration::from_secs(1));
        } else {
            assert_eq!(writes.len(), 1, "m{i}: one observation, one write");
        }
    }
}

#[ppio_test_macros::test(start_paused = true)]
async fn month_to_date_comes_from_bills_per_instance_on_a_small_key() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    priced(&ppio, "m1", "postpaid", 12600, 1);
    let hour = jiff::Timestamp::now().as_second() / 3600 * 3600;
    let through = hour - 2 * 3600;
    {
        let mut m = ppio.money.lock().expect("lock");
        let mut postpaid = BillTotals::default();
        postpaid.by_owner.insert(
            "m0".into(),
            Spend {
                paid: 421_100,
                through: Some(through),
            },
        );
        m.bills = Some(Ok(postpaid));
        let mut prepaid = BillTotals::default();
        prepaid.by_owner.insert(
            "m1".into(),
            Spend {
                paid: 90_720_000,
                through: None,
            },
        );
        m.prepaid_bills = Some(prepaid);
    }
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    run(
        ctx,
        &api,
        wakes,
        the_objects(3),
        8,
        Duration::from_secs(100),
    )
    .await;

    let m0 = last(&api, "m0").cost.expect("cost");
    assert_eq!(m0.month_to_date.as_deref(), Some("42.1100"));
    assert_eq!(
        m0.billed_through,
        Some(jiff::Timestamp::from_second(through).unwrap().to_string())
    );
    // A prepaid term counts in the month it was charged.
    let m1 = last(&api, "m1").cost.expect("cost");
    assert_eq!(m1.month_to_date.as_deref(), Some("9072.0000"));
    // Nothing billed: zero, not absent.
    let m2 = last(&api, "m2").cost.expect("cost");
    assert_eq!(m2.month_to_date.as_deref(), Some("0.0000"));
    assert_eq!(m2.billed_through, None);
    // Three instances: asked per instance, both kinds.
    let m = ppio.money.lock().expect("lock");
    let owners: std::collections::BTreeSet<_> = m
        .calls
        .iter()
        .filter(|(c, _, _)| *c == "bills")
        .map(|(_, o, _)| o.clone())
        .collect();
    assert_eq!(
        owners,
        ["m0", "m1", "m2"]
            .iter()
            .map(|o| Some(o.to_string()))
            .collect()
    );
    assert_eq!(m.count("monthly_bills"), m.count("bills"));
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_large_account_asks_for_its_bills_whole_and_in_slices_when_too_large() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let mut totals = BillTotals::default();
    totals.by_owner.insert(
        "m7".into(),
        Spend {
            paid: 10_000,
            through: None,
        },
    );
    {
        let mut m = ppio.money.lock().expect("lock");
        m.bills = Some(Ok(totals));
        m.bills_first_slice_only = true;
        m.too_large_over_half_month = true;
    }
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    run(
        ctx,
        &api,
        wakes,
        the_objects(8),
        8,
        Duration::from_secs(100),
    )
    .await;

    assert_eq!(
        last(&api, "m7")
            .cost
            .and_then(|c| c.month_to_date)
            .as_deref(),
        Some("1.0000")
    );
    let m = ppio.money.lock().expect("lock");
    let bills: Vec<_> = m.calls.iter().filter(|(c, _, _)| *c == "bills").collect();
    // The whole account (no ownerId), first in one answer (too large), then in halves.
    assert!(bills.iter().all(|(_, owner, _)| owner.is_none()));
    assert!(
        bills.len() >= 3,
        "{} bill requests: one too large, then two halves",
        bills.len()
    );
}

/// A PpioInstance that comes after its key's bills were read is not shown a month to date of
/// zero (the bills did not answer for it): none until the bills are read again, which is
/// brought forward to within UNCOVERED_BILLS, then its own.
#[ppio_test_macros::test(start_paused = true)]
async fn a_newcomer_after_the_bill_read_shows_no_month_to_date_until_its_bills_are_read() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    let mut totals = BillTotals::default();
    for (owner, paid) in [("m0", 10_000), ("m3", 20_000)] {
        totals.by_owner.insert(
            owner.into(),
            Spend {
                paid,
                through: None,
            },
        );
    }
    ppio.money.lock().expect("lock").bills = Some(Ok(totals));
    let hourly_bills = MoneySettings {
        bills_every: Duration::from_secs(3600),
        ..every_minute()
    };
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, hourly_bills);
    let month_to_date = |name: &str| last(&api, name).cost.and_then(|c| c.month_to_date);
    let bill_reads = || {
        let m = ppio.money.lock().expect("lock");
        m.calls.iter().filter(|(c, _, _)| *c == "bills").count()
    };
    // Three PpioInstances; their bills are read a minute after the key's first use, one
    // owner at a time.
    let wakes_again = wakes.clone();
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(3),
        8,
        Duration::from_secs(100),
    )
    .await;
    assert_eq!(month_to_date("m0").as_deref(), Some("1.0000"));
    assert_eq!(month_to_date("m1").as_deref(), Some("0.0000"));
    assert_eq!(bill_reads(), 3);
    // A fourth comes: the bills read did not ask for it, so it shows no month to date (not
    // a zero), and the bills are read again within ten minutes, not in an hour.
    let wakes_later = wakes_again.clone();
    run(
        ctx.clone(),
        &api,
        wakes_again,
        the_objects(4),
        8,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(month_to_date("m3"), None, "before its bills are read");
    run(
        ctx,
        &api,
        wakes_later,
        the_objects(4),
        8,
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(month_to_date("m3").as_deref(), Some("2.0000"));
    assert_eq!(month_to_date("m0").as_deref(), Some("1.0000"));
    assert_eq!(bill_reads(), 3 + 4, "one more read, of the four owners");
}

#[ppio_test_macros::test(start_paused = true)]
async fn money_failures_never_touch_an_instances_observation() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    let mut totals = BillTotals::default();
    totals.by_owner.insert(
        "m0".into(),
        Spend {
            paid: 5_000,
            through: None,
        },
    );
    {
        let mut m = ppio.money.lock().expect("lock");
        m.catalogue = Some(Ok(catalogue()));
        m.bills = Some(Ok(totals));
        m.balance = Some(Ok(Amount::new(1_000_000, 4)));
    }
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    let start = Instant::now();
    let failing = {
        let ppio = ppio.clone();
        tokio::spawn(async move {
            // Every money call fails after the first reads, a different way each time.
            tokio::time::sleep(Duration::from_secs(150)).await;
            for e in [
                PpioError::Unauthorized,
                PpioError::RateLimited {
                    retry_after: Some(Duration::from_secs(30)),
                },
                PpioError::Server { status: 503 },
                PpioError::NotFound { status: 404 },
            ] {
                {
                    let mut m = ppio.money.lock().expect("lock");
                    m.catalogue = Some(Err(e.clone()));
                    m.bills = Some(Err(e.clone()));
                    m.balance = Some(Err(e));
                }
                tokio::time::sleep(Duration::from_secs(700)).await;
            }
        })
    };
    run(
        ctx,
        &api,
        wakes,
        the_objects(1),
        8,
        Duration::from_secs(150 + 4 * 700),
    )
    .await;
    failing.await.expect("failures injected");

    let calls = ppio.money.lock().expect("lock").calls.len();
    assert!(calls >= 10, "{calls} money calls were tried");
    let writes = api.writes_of("ml/m0");
    // Synced stays True in every status written, and the figures read before stay.
    for (_, s) in &writes {
        assert_eq!(condition(s, "Synced").0, "True");
    }
    let cost = last(&api, "m0").cost.expect("cost");
    assert_eq!(cost.hourly.as_deref(), Some("12.600"));
    assert_eq!(cost.month_to_date.as_deref(), Some("0.5000"));
    // One GET per interval throughout (a 429 on billing pauses no instance call).
    let gets = ppio.since("m0", start);
    let intervals = (150 + 4 * 700) / 60;
    assert!(
        gets + 2 >= intervals && gets <= intervals + 2,
        "{gets} GETs in {intervals} intervals"
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_spot_reclaim_shows_within_one_interval_and_prepaid_ends_warn() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "spot", 5000, 1);
    priced(&ppio, "m1", "postpaid", 12600, 1);
    // m2: prepaid, ends in a day without auto-renew; m3 the same with auto-renew.
    let end = jiff::Timestamp::now().as_second() + 24 * 3600;
    for (id, renew) in [("m2", false), ("m3", true)] {
        patch(
            &ppio,
            id,
            json!({"billing": {"mode": "prepaid", "prepaid": {"end_time": end, "auto_renew": {"enabled": renew}}}}),
        );
    }
    let objects = the_objects(4);
    ppio.list_ids(ids(&objects));
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, LIST, MoneySettings::off());
    let start = Instant::now();
    let reclaim_at = jiff::Timestamp::now().as_second() + 3600;
    let announce = {
        let ppio = ppio.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            patch(
                &ppio,
                "m0",
                json!({"pricing": {"spot": {"spot_status": "notified", "spot_reclaim_time": reclaim_at}}}),
            );
            Instant::now()
        })
    };
    run(
        ctx.clone(),
        &api,
        wakes,
        objects,
        8,
        Duration::from_secs(900),
    )
    .await;
    let announced = announce.await.expect("announced");

    let first_expiring = api
        .writes_of("ml/m0")
        .into_iter()
        .find(|(_, s)| condition(s, "Expiring").0 == "True")
        .expect("the reclaim is shown");
    assert_eq!(
        condition(&first_expiring.1, "Expiring").1,
        "SpotReclaimScheduled"
    );
    let late = first_expiring.0 - announced;
    assert!(
        late <= Duration::from_secs(70),
        "shown {late:?} after it was announced"
    );
    assert_eq!(
        metric(&ctx, "ppio_instance_spot_reclaim_timestamp_seconds"),
        reclaim_at as f64
    );
    // The spot instance is fetched every interval; the postpaid one only at first sight and
    // at its full refresh (LIST items keep it current).
    let spot_gets = ppio.since("m0", start + Duration::from_secs(120));
    let postpaid_gets = ppio.since("m1", start + Duration::from_secs(120));
    assert!(
        spot_gets >= 11,
        "{spot_gets} GETs of the spot instance in 13 intervals"
    );
    assert!(
        postpaid_gets <= 2,
        "{postpaid_gets} GETs of the postpaid instance"
    );
    assert_eq!(
        condition(&last(&api, "m1"), "Expiring"),
        ("False".into(), "NotExpiring".into())
    );
    assert_eq!(
        condition(&last(&api, "m2"), "Expiring"),
        ("True".into(), "PrepaidEnding".into())
    );
    assert_eq!(
        condition(&last(&api, "m3"), "Expiring"),
        ("False".into(), "NotExpiring".into())
    );
}

#[ppio_test_macros::test(start_paused = true)]
async fn the_balance_gives_the_runway_of_running_hourly_instances_or_is_not_asked_again() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    priced(&ppio, "m1", "postpaid", 25200, 2);
    // Stopped: adds nothing to what the account burns.
    priced(&ppio, "m2", "postpaid", 12600, 1);
    ppio.states
        .lock()
        .expect("lock")
        .insert("m2".into(), "exited".into());
    {
        let mut m = ppio.money.lock().expect("lock");
        m.catalogue = Some(Ok(catalogue()));
        m.bills = Some(Ok(BillTotals::default()));
        // 378.0000 at 37.800 an hour: 10 hours.
        m.balance = Some(Ok(Amount::new(3_780_000, 4)));
    }
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(3),
        8,
        Duration::from_secs(200),
    )
    .await;
    assert_eq!(metric(&ctx, "ppio_account_balance"), 378.0);
    assert_eq!(metric(&ctx, "ppio_account_runway_hours"), 10.0);
    assert!(ctx.metrics.encode().contains("currency=\"CNY\""));

    // Not served here: no series, and not asked again.
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    {
        let mut m = ppio.money.lock().expect("lock");
        m.catalogue = Some(Ok(catalogue()));
        m.bills = Some(Ok(BillTotals::default()));
        m.balance = Some(Err(PpioError::NotFound { status: 404 }));
    }
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(1),
        8,
        Duration::from_secs(400),
    )
    .await;
    let m = ppio.money.lock().expect("lock");
    assert!(m.count("bills") >= 4);
    assert_eq!(m.count("balance"), 1);
    assert_eq!(
        metric(&ctx, "ppio_api_call_unavailable"),
        1.0,
        "the balance is said not served, in a metric"
    );
    assert!(
        ctx.metrics
            .encode()
            .contains("ppio_api_call_unavailable{key=")
    );
    assert!(!ctx.metrics.encode().contains("ppio_account_balance{"));
    assert!(!ctx.metrics.encode().contains("ppio_account_runway_hours{"));
}

#[ppio_test_macros::test(start_paused = true)]
async fn a_gone_instance_shows_no_money_figure() {
    let api = MockApi::default();
    let ppio = Arc::new(FakePpio::default());
    priced(&ppio, "m0", "postpaid", 12600, 1);
    ppio.money.lock().expect("lock").catalogue = Some(Ok(catalogue()));
    let (ctx, wakes) = context_with(&api, ppio.clone(), 10.0, 10, Observe::Get, every_minute());
    let gone = {
        let ppio = ppio.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            *ppio.get_error.lock().expect("lock") = Some(PpioError::NotFound { status: 404 });
        })
    };
    run(
        ctx.clone(),
        &api,
        wakes,
        the_objects(1),
        8,
        Duration::from_secs(400),
    )
    .await;
    gone.await.expect("gone");
    let before = api
        .writes_of("ml/m0")
        .into_iter()
        .rfind(|(_, s)| s.state.as_deref() == Some("running"))
        .expect("observed running");
    assert_eq!(
        before.1.cost.and_then(|c| c.hourly).as_deref(),
        Some("12.600")
    );
    let after = last(&api, "m0");
    assert_eq!(after.state.as_deref(), Some("NotFound"));
    assert_eq!(after.cost, None);
    assert_eq!(metric(&ctx, "ppio_instance_hourly_cost{"), 0.0);
    assert!(!ctx.metrics.encode().contains("ppio_instance_hourly_cost{"));
}
