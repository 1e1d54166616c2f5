//! Money end to end: the real API server, kubectl, the PPIO simulator's products catalogue,
//! bills (a whole-account answer over 1 MiB) and balance, and the operator as its own
//! process: what a user reads in status, `kubectl get -o wide`, Events and metrics.

use crate::support::*;
use serde_json::{Value, json};

/// A bill row as PPIO's `bill/list` answers it.
fn bill(owner: &str, start: i64, end: i64, pay: i64) -> Value {
    json!({
        "userId": "user-1", "startTime": start.to_string(), "endTime": end.to_string(),
        "billingMethod": 1, "productName": "RTX 4090", "category": "gpu", "ownerID": owner,
        "billNum0": "1000", "basePrice0": "120", "discountPrice0": "100",
        "amount": pay.to_string(), "voucherAmount": "0", "payAmount": pay.to_string(),
        "payAmountDisplay": 1, "pricePrecision": 2, "productId": "product-id",
    })
}

#[ppio_test_macros::test]
async fn cost_month_to_date_and_a_spot_reclaim_show_in_status_kubectl_events_and_metrics() {
    let Scene {
        ns, sim, op, api, ..
    } = scene(
        "money",
        "key-money",
        &[
            "--currency",
            "CNY",
            "--money-first-read",
            "1s",
            "--catalogue-refresh-interval",
            "1m",
            "--billing-refresh-interval",
            "1m",
        ],
    )
    .await;
    let now = jiff::Timestamp::now().as_second();
    let month = ppio_operator::money::month_start(jiff::Timestamp::now()).as_second();
    let hour = now / 3600 * 3600;
    // The three samples (a prepaid, a postpaid with 4 cards, a spot one; all at price 100 of
    // product-id, whose postpaid price is 100 and spot price 30 at precision 2), and three
    // more postpaid copies and one priced per card: seven instances, so bills are asked for
    // the whole account.
    let sample = ppio_operator::simulator::Simulator::samples().remove(1);
    for i in 0..3 {
        sim.put_instance(&format!("extra{i}"), sample.clone());
    }
    // Priced per card: 2 cards at 100 each.
    let mut per_card = sample.clone();
    per_card["resource_specs"]["gpu_num"] = json!(2);
    per_card["pricing"]["instance_price"] = json!(200);
    sim.put_instance("card2", per_card);
    // b7e2c91d04: 1.0000 and 0.2500 this month; a row of last month does not count. 6,000
    // rows of other instances make the answer well over 1 MiB.
    let mut rows = vec![
        bill("b7e2c91d04", month, hour - 1, 10_000),
        bill("b7e2c91d04", month + 3600, hour - 1, 2_500),
        bill("b7e2c91d04", month - 86_400, month - 1, 990_000),
    ];
    rows.extend((0..6000).map(|i| bill(&format!("other-{i:05}"), month, hour - 1, 100)));
    sim.set_bills(Some(rows));
    let mut prepaid = bill("ca338f12f3", month, month + 30 * 86_400, 90_720_000);
    prepaid["createTime"] = json!((month + 60).to_string());
    prepaid["tradeType"] = json!("monthly_new_buy");
    prepaid["billingMethod"] = json!(2);
    sim.set_monthly_bills(vec![prepaid]);

    // The spot sample starts without a reclaim notice.
    assert!(sim.patch_instance(
        "c0ffee1234",
        &json!({"pricing": {"spot": {"spot_status": "running", "spot_reclaim_time": 0}}}),
    ));
    let names = [
        ("trainer-a", "ca338f12f3"),
        ("trainer-b", "b7e2c91d04"),
        ("notebook-c", "c0ffee1234"),
        ("extra-0", "extra0"),
        ("extra-1", "extra1"),
        ("extra-2", "extra2"),
        ("per-card", "card2"),
    ];
    for (name, id) in names {
        apply_instance(&ns, name, &format!("instanceId: {id}"));
    }
    let billed = |name: &'static str, want: &'static str| {
        let api = api.clone();
        async move {
            // Billed, and calibrated (after its first full GET).
            wait_for(&api, name, "month to date and hourly basis", |o| {
                let cost = o.status.as_ref().and_then(|s| s.cost.as_ref());
                cost.and_then(|c| c.month_to_date.as_deref()) == Some(want)
                    && cost.is_some_and(|c| c.hourly_basis.is_some())
            })
            .await
        }
    };
    let b = billed("trainer-b", "1.2500").await;
    let cost = b.status.and_then(|s| s.cost).expect("cost");
    assert_eq!(cost.currency.as_deref(), Some("CNY"));
    assert_eq!(cost.hourly.as_deref(), Some("1.00"));
    assert_eq!(cost.hourly_basis.as_deref(), Some("perInstance"));
    assert_eq!(
        cost.billed_through,
        Some(
            jiff::Timestamp::from_second(hour)
                .expect("time")
                .to_string()
        )
    );
    let card = billed("per-card", "0.0000").await;
    let card_cost = card.status.and_then(|s| s.cost).expect("cost");
    assert_eq!(card_cost.hourly.as_deref(), Some("2.00"));
    assert_eq!(card_cost.hourly_basis.as_deref(), Some("perCard"));
    // A prepaid term counts in the month it was charged.
    let a = billed("trainer-a", "9072.0000").await;
    assert_eq!(
        a.status
            .and_then(|s| s.cost)
            .and_then(|c| c.hourly)
            .as_deref(),
        Some("1.00")
    );
    // The spot price is 30: an instance price of 100 matches nothing, so no hourly figure.
    let c = billed("notebook-c", "0.0000").await;
    let c_cost = c.status.clone().and_then(|s| s.cost).expect("cost");
    assert_eq!(c_cost.hourly, None);
    assert_eq!(c_cost.hourly_basis.as_deref(), Some("Unknown"));
    assert!(has(&c, "Expiring", "False", "NotExpiring"));
    assert!(has(&c, "Synced", "True", "Observed"));

    let wide = kubectl_ok(
        &["get", "ppioinstances", "-n", &ns, "-o", "wide", "trainer-b"],
        None,
    );
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(header.ends_with(&["COST/H", "CURRENCY"]), "{wide}");
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(row.ends_with(&["1.00", "CNY"]), "{wide}");

    // A spot reclaim is announced: Expiring within about an interval (10 s here), with a
    // Warning Event and the reclaim time as a metric.
    let reclaim = now + 3600;
    assert!(sim.patch_instance(
        "c0ffee1234",
        &json!({"pricing": {"spot": {"spot_status": "notified", "spot_reclaim_time": reclaim}}}),
    ));
    wait_for(&api, "notebook-c", "the reclaim", |o| {
        has(o, "Expiring", "True", "SpotReclaimScheduled")
    })
    .await;
    let events = warning_event_objects(&ns, "SpotReclaimScheduled").await;
    assert_eq!(events.trim(), "notebook-c");
    // Every instance but the spot one is calibrated after its first full GET; the three
    // extras are not waited for above, so their figures may still be on their way.
    let hourly_lines = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("ppio_instance_hourly_cost{")
                    && l.contains(&format!("namespace=\"{ns}\""))
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let metrics = wait_until("money metrics for six instances", WAIT, async || {
        let text = http_get(op.http, "/metrics").await?.1;
        (text.contains("ppio_account_balance{") && hourly_lines(&text).len() >= 6).then_some(text)
    })
    .await;
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in:\n{metrics}"))
            .to_string()
    };
    assert!(line("ppio_instance_spot_reclaim_timestamp_seconds").ends_with(&format!(" {reclaim}")));
    let balance = line("ppio_account_balance{");
    assert!(balance.contains("currency=\"CNY\""), "{balance}");
    assert!(balance.ends_with(" 100000.0"), "{balance}");
    // The spot instance (no price matched) has none.
    let hourly = hourly_lines(&metrics);
    assert_eq!(hourly.len(), 6, "{hourly:?}");
    assert!(
        !hourly.iter().any(|l| l.contains("name=\"notebook-c\"")),
        "{hourly:?}"
    );
    let spend = line(&format!(
        "ppio_instance_spend_month_to_date{{namespace=\"{ns}\",name=\"trainer-b\""
    ));
    assert!(spend.contains("currency=\"CNY\""), "{spend}");
    assert!(spend.ends_with(" 1.25"), "{spend}");
    // Nothing here is an instance failure, and the whole-account answer was read.
    assert!(sim.counts().calls.get("bills").copied().unwrap_or(0) >= 1);
    assert!(
        !op.log().contains("reading money figures failed"),
        "{}",
        op.log()
    );
}

#[ppio_test_macros::test]
async fn failing_money_calls_touch_no_instance_and_are_said_once() {
    let Scene {
        ns, sim, op, api, ..
    } = scene(
        "money-fail",
        "key-money-fail",
        &[
            "--currency",
            "CNY",
            "--money-first-read",
            "1s",
            "--catalogue-refresh-interval",
            "1h",
            "--billing-refresh-interval",
            "1h",
        ],
    )
    .await;
    use ppio_operator::simulator::{
        BALANCE_FAULT, BILLS_FAULT, Fault, MONTHLY_BILLS_FAULT, PRODUCTS_FAULT,
    };
    sim.set_fault(PRODUCTS_FAULT, Fault::status(401));
    sim.set_fault(BILLS_FAULT, Fault::status(429).with_retry_after("60"));
    sim.set_fault(MONTHLY_BILLS_FAULT, Fault::status(500));
    sim.set_fault(BALANCE_FAULT, Fault::status(404));
    apply_instance(&ns, "trainer-a", "instanceId: ca338f12f3");
    wait_fetched(&api, "trainer-a").await;
    // The catalogue (after 1 s), then the bills and the balance (after 3 s) were asked for,
    // and failed.
    wait_until("the money calls", WAIT, async || {
        let calls = sim.counts().calls;
        (calls.get("products").copied().unwrap_or(0) >= 1
            && calls.get("balance").copied().unwrap_or(0) >= 1)
            .then_some(())
    })
    .await;
    // Observation goes on (every 10 s): a 429 on bills pauses no instance call.
    let seen = observations(&sim, "ca338f12f3");
    wait_until("another observation", WAIT, async || {
        (observations(&sim, "ca338f12f3") > seen).then_some(())
    })
    .await;
    let o = api.get("trainer-a").await.expect("get");
    assert!(has(&o, "Synced", "True", "Observed"), "{:?}", o.status);
    assert!(has(&o, "Stalled", "False", "Observed"), "{:?}", o.status);
    assert_eq!(o.status.and_then(|s| s.cost), None);
    // Said once per call (the catalogue, the bills), naming the key by its fingerprint; the
    // balance is not served here: said, and in a metric.
    let log = op.log();
    assert_eq!(
        log.matches("reading money figures failed").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("does not serve the account balance here"),
        "{log}"
    );
    assert!(
        !log.contains("key-money-fail"),
        "the key itself is never logged"
    );
    let metrics = http_get(op.http, "/metrics").await.expect("metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ppio_api_call_unavailable{")
                && l.contains("call=\"balance\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(!metrics.contains("ppio_account_balance{"), "{metrics}");
}
