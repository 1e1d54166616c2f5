//! The PPIO simulator's money calls over real HTTP on 127.0.0.1: the products catalogue,
//! pay-as-you-go bills (explicit and generated), prepaid bills, the balance, their faults and
//! request counts, as a client observes them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use ppio_operator::simulator::{BILLS_FAULT, Fault, Simulator};
use serde_json::{Value, json};

const BILLS: &str = "/openapi/v1/billing/bill/list";
const MONTHLY: &str = "/openapi/v1/billing/bill/monthly/list";
const BALANCE: &str = "/openapi/v1/billing/balance/detail";
const PRODUCTS: &str = "/gpus/v2/products";

async fn start() -> (Simulator, String) {
    let sim = Simulator::new(Simulator::samples(), vec!["k1".into(), "k2".into()]);
    let addr = sim
        .spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("binds");
    (sim, format!("http://{addr}"))
}

async fn get(url: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// A 200 answer's JSON (panics on another status).
async fn get_json(url: &str) -> Value {
    let (code, _, body) = get(url, Some("k1")).await;
    assert_eq!(code, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// The `reason` of an error answer, with its status.
async fn get_error(url: &str, key: Option<&str>) -> (u16, String) {
    let (code, _, body) = get(url, key).await;
    let v: Value = serde_json::from_str(&body).expect("a vendor error body");
    (code, v["reason"].as_str().unwrap_or_default().to_string())
}

async fn send(method: reqwest::Method, url: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("answers")
        .status()
        .as_u16()
}

/// The `ownerID`s of a bills answer, in order.
fn owners(answer: &Value) -> Vec<String> {
    answer["bills"]
        .as_array()
        .expect("bills")
        .iter()
        .map(|r| r["ownerID"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    i64::try_from(secs).expect("fits")
}

/// The start of the UTC month of `t`, computed independently of the simulator (civil date
/// from days, H. Hinnant's algorithm, then back).
fn month_start(t: i64) -> i64 {
    let days = t.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day_of_month = doy - (153 * mp + 2) / 5 + 1;
    (days - (day_of_month - 1)) * 86_400
}

#[ppio_test_macros::test]
async fn products_need_both_parameters_and_answer_the_catalogue() {
    let (_sim, base) = start().await;
    let v = get_json(&format!("{base}{PRODUCTS}?type=gpu&category=instance")).await;
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    let p = &data[0];
    assert_eq!(p["id"], "product-id");
    assert_eq!(p["pricing"]["precision"], 2);
    assert_eq!(p["pricing"]["postpaid"]["final_price"], 100);
    assert_eq!(p["pricing"]["postpaid"]["unit"], "per_hour");
    assert_eq!(p["pricing"]["spot"]["final_price"], 30);
    assert_eq!(p["pricing"]["prepaid"][0]["duration_months"], 1);
    assert_eq!(p["billing_methods"], json!(["postpaid", "spot", "prepaid"]));
    for q in [
        "",
        "?type=gpu",
        "?category=instance",
        "?type=&category=instance",
    ] {
        assert_eq!(
            get_error(&format!("{base}{PRODUCTS}{q}"), Some("k1")).await,
            (400, "INVALID_PARAMS".to_string()),
            "{q}"
        );
    }
    // The control API replaces the catalogue.
    let item = json!({"id": "p2", "name": "Other", "pricing": {"precision": 3}});
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/products"),
            json!([item])
        )
        .await,
        204
    );
    let v = get_json(&format!("{base}{PRODUCTS}?type=gpu&category=instance")).await;
    assert_eq!(v["data"], json!([item]));
    let (_, _, body) = get(&format!("{base}/_sim/products"), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!([item])
    );
}

#[ppio_test_macros::test]
async fn every_money_call_wants_an_accepted_key() {
    let (sim, base) = start().await;
    let urls = [
        format!("{base}{PRODUCTS}?type=gpu&category=instance"),
        format!("{base}{BILLS}?cycleType=Month&productCategory=gpu"),
        format!("{base}{MONTHLY}?category=gpu"),
        format!("{base}{BALANCE}"),
    ];
    for url in &urls {
        for key in [None, Some("wrong")] {
            assert_eq!(
                get_error(url, key).await,
                (401, "UNAUTHORIZED".to_string()),
                "{url}"
            );
        }
        assert_eq!(get(url, Some("k2")).await.0, 200, "{url}");
    }
    let counts = sim.counts();
    assert_eq!(counts.keys["invalid"], 8);
    assert_eq!(counts.keys["key1"], 4);
}

#[ppio_test_macros::test]
async fn bills_need_their_parameters() {
    let (_sim, base) = start().await;
    for q in [
        "",
        "?cycleType=Month",
        "?productCategory=gpu",
        "?cycleType=Year&productCategory=gpu",
        "?cycleType=month&productCategory=gpu",
        "?cycleType=Month&productCategory=gpu&startTime=yesterday",
    ] {
        assert_eq!(
            get_error(&format!("{base}{BILLS}{q}"), Some("k1")).await,
            (400, "INVALID_PARAMS".to_string()),
            "{q}"
        );
    }
    assert_eq!(
        get_error(&format!("{base}{MONTHLY}"), Some("k1")).await,
        (400, "INVALID_PARAMS".to_string())
    );
}

fn bill(owner: &str, start: i64, end: i64, amount: &str) -> Value {
    json!({
        "userId": "user-1",
        "startTime": start.to_string(),
        "endTime": end.to_string(),
        "billingMethod": 1,
        "productName": "Simulated GPU 24GB",
        "category": "gpu",
        "ownerID": owner,
        "billNum0": "1",
        "basePrice0": "12000",
        "discountPrice0": amount,
        "amount": amount,
        "voucherAmount": "0",
        "payAmount": amount,
        "payAmountDisplay": 1,
        "pricePrecision": 1,
        "productId": "product-id",
    })
}

#[ppio_test_macros::test]
async fn explicit_bills_are_filtered_by_owner_and_window() {
    let (_sim, base) = start().await;
    let day = 86_400;
    let d0 = 1_764_547_200; // 2025-12-01T00:00:00Z
    let rows = vec![
        bill("a", d0, d0 + day - 1, "10000"),
        bill("b", d0, d0 + day - 1, "20000"),
        bill("a", d0 + day, d0 + 2 * day - 1, "30000"),
        bill("a", d0 + 2 * day, d0 + 3 * day - 1, "40000"),
    ];
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/bills"),
            json!({ "bills": rows })
        )
        .await,
        204
    );
    let q = |extra: String| format!("{base}{BILLS}?cycleType=Day&productCategory=gpu{extra}");
    let all = get_json(&q(String::new())).await;
    assert_eq!(
        all,
        json!({ "bills": rows }),
        "as put, with no paging fields"
    );
    assert_eq!(
        owners(&get_json(&q("&ownerId=a".into())).await),
        ["a", "a", "a"]
    );
    assert_eq!(
        owners(&get_json(&q("&ownerId=nobody".into())).await).len(),
        0
    );
    // The second day alone, then a window overlapping the end of day 1 and day 2.
    let v = get_json(&q(format!(
        "&ownerId=a&startTime={}&endTime={}",
        d0 + day,
        d0 + 2 * day - 1
    )))
    .await;
    assert_eq!(v["bills"], json!([rows[2]]));
    let v = get_json(&q(format!(
        "&startTime={}&endTime={}",
        d0 + day - 10,
        d0 + day + 10
    )))
    .await;
    assert_eq!(owners(&v), ["a", "b", "a"]);
    let v = get_json(&q(format!("&startTime={}", d0 + 2 * day))).await;
    assert_eq!(v["bills"], json!([rows[3]]));
    // Back to generated rows: the explicit ones are gone.
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/bills"),
            json!(null)
        )
        .await,
        204
    );
    assert!(!owners(&get_json(&q(String::new())).await).contains(&"b".to_string()));
}

#[ppio_test_macros::test]
async fn generated_bills_charge_running_pay_as_you_go_instances_by_the_hour() {
    let (sim, base) = start().await;
    // The samples: a running prepaid one, a starting postpaid one, an exited spot one.
    // Make the postpaid one running and older than this month, add a running spot one
    // created in this month, and an exited postpaid one.
    let samples = Simulator::samples();
    let mut running = samples[1].clone();
    running["status"]["status"] = json!("running");
    sim.put_instance("run-post", running.clone());
    let mut stopped = running.clone();
    stopped["status"]["status"] = json!("exited");
    sim.put_instance("stopped-post", stopped);

    let before = unix_now();
    let url = format!("{base}{BILLS}?cycleType=Month&productCategory=gpu");
    let v = get_json(&url).await;
    let after = unix_now();
    // The hours from the month's start to the last whole hour, before and after the call.
    let hours = |now: i64| (now.div_euclid(3600) * 3600 - month_start(now)) / 3600;
    let (h0, h1) = (hours(before), hours(after));
    let rows = v["bills"].as_array().expect("bills");
    if h1 == 0 && h0 == 0 {
        // The first hour of a month: nothing is settled yet.
        assert!(rows.is_empty(), "{v}");
        return;
    }
    assert_eq!(
        owners(&v),
        ["run-post"],
        "only the running postpaid one: {v}"
    );
    let row = &rows[0];
    let amount: i64 = row["amount"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("a numeric string");
    assert!(
        amount == h0 * 10_000 || amount == h1 * 10_000,
        "{amount} for {h0}/{h1} hours at 100 (precision 2) an hour"
    );
    assert_eq!(row["payAmount"], row["amount"]);
    assert_eq!(row["voucherAmount"], "0");
    assert_eq!(row["discountPrice0"], "10000");
    assert_eq!(row["billingMethod"], 1);
    assert_eq!(row["category"], "gpu");
    assert_eq!(row["productId"], "product-id");
    assert_eq!(row["payAmountDisplay"], json!(amount / 10_000));
    assert_eq!(row["startTime"], month_start(after).to_string());
    let end: i64 = row["endTime"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .expect("endTime");
    assert_eq!((end + 1) % 3600, 0, "the last second of a settled hour");

    // A spot instance created during this month: charged from its creation, per day.
    let created = month_start(after) + 1800;
    let mut spot = samples[2].clone();
    spot["status"]["status"] = json!("running");
    spot["created_at"] = json!(created.to_string());
    sim.put_instance("run-spot", spot);
    let v = get_json(&format!(
        "{base}{BILLS}?cycleType=Day&productCategory=gpu&ownerId=run-spot"
    ))
    .await;
    if after - month_start(after) >= 7200 {
        let rows = v["bills"].as_array().expect("bills");
        assert!(!rows.is_empty());
        assert_eq!(rows[0]["startTime"], created.to_string());
        assert!(owners(&v).iter().all(|o| o == "run-spot"));
    }
    // The prepaid sample (running) and the exited ones are never charged.
    for id in ["ca338f12f3", "c0ffee1234", "stopped-post", "b7e2c91d04"] {
        let v = get_json(&format!("{url}&ownerId={id}")).await;
        assert_eq!(v["bills"], json!([]), "{id}");
    }
    // Another category finds nothing.
    let v = get_json(&format!(
        "{base}{BILLS}?cycleType=Month&productCategory=cpu"
    ))
    .await;
    assert_eq!(v["bills"], json!([]));
}

#[ppio_test_macros::test]
async fn monthly_bills_are_filtered_by_create_time_and_owner() {
    let (sim, base) = start().await;
    let url = format!("{base}{MONTHLY}?category=gpu");
    assert_eq!(
        get_json(&url).await,
        json!({"bills": []}),
        "none by default"
    );
    let monthly = |owner: &str, created: i64, trade: &str| {
        json!({
            "userId": "user-1",
            "ownerID": owner,
            "category": "gpu",
            "productId": "product-id",
            "productName": "Simulated GPU 24GB",
            "tradeMode": "monthly",
            "tradeType": trade,
            "billingMethod": 2,
            "basePrice": "8640000",
            "billNum": "1",
            "amount": "7200000",
            "voucherAmount": "0",
            "payAmount": "7200000",
            "payAmountDisplay": 720,
            "pricePrecision": 1,
            "createTime": created.to_string(),
            "cycle": "2025-12",
        })
    };
    let rows = vec![
        monthly("ca338f12f3", 1_764_600_000, "monthly_new_buy"),
        monthly("ca338f12f3", 1_767_300_000, "monthly_re_buy"),
        monthly("other", 1_764_700_000, "monthly_re_config"),
    ];
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/monthly-bills"),
            json!({ "bills": rows })
        )
        .await,
        204
    );
    assert_eq!(get_json(&url).await["bills"], json!(rows));
    let v = get_json(&format!(
        "{url}&startTime=1764547200&endTime=1767225599&ownerId=ca338f12f3"
    ))
    .await;
    assert_eq!(v["bills"], json!([rows[0]]));
    let v = get_json(&format!("{url}&startTime=1764650000")).await;
    assert_eq!(v["bills"], json!([rows[1], rows[2]]));
    sim.set_monthly_bills(Vec::new());
    assert_eq!(get_json(&url).await["bills"], json!([]));
    sim.set_monthly_bills(rows.clone());
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/monthly-bills"),
            json!(null)
        )
        .await,
        204
    );
    assert_eq!(get_json(&url).await["bills"], json!([]));
}

#[ppio_test_macros::test]
async fn the_balance_is_served_until_deleted() {
    let (sim, base) = start().await;
    let url = format!("{base}{BALANCE}");
    let v = get_json(&url).await;
    assert_eq!(v["availableBalance"], "1000000000");
    assert_eq!(v["creditLimit"], "0");
    let set = json!({
        "availableBalance": "1234500000",
        "cashBalance": "1000000000",
        "creditLimit": "0",
        "pendingCharges": "0",
        "outstandingInvoices": "0",
    });
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/balance"),
            set.clone()
        )
        .await,
        204
    );
    assert_eq!(get_json(&url).await, set, "served as given");
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/balance"),
            json!(null)
        )
        .await,
        204
    );
    let (code, reason) = get_error(&url, Some("k1")).await;
    assert_eq!(code, 404);
    assert!(!reason.is_empty());
    sim.set_balance(Some(set.clone()));
    assert_eq!(get_json(&url).await, set);
}

#[ppio_test_macros::test]
async fn money_faults_and_counts_are_per_call() {
    let (sim, base) = start().await;
    let bills = format!("{base}{BILLS}?cycleType=Month&productCategory=gpu");
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/{BILLS_FAULT}"),
            json!({"status": 429, "retryAfter": "30"})
        )
        .await,
        204
    );
    let (code, headers, body) = get(&bills, Some("k1")).await;
    assert_eq!(code, 429);
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["reason"],
        "RATE_LIMIT_EXCEEDED"
    );
    // The fault is the bills' alone; a fault for every instance does not reach these calls.
    sim.set_fault("*", Fault::status(500));
    assert_eq!(get(&format!("{base}{BALANCE}"), Some("k1")).await.0, 200);
    sim.clear_fault("*");
    sim.set_fault(
        "_balance",
        Fault::body(ppio_operator::simulator::BodyFault::Truncated),
    );
    let (code, _, body) = get(&format!("{base}{BALANCE}"), Some("k1")).await;
    assert_eq!(code, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "truncated");
    sim.set_fault("_products", Fault::status(503));
    assert_eq!(
        get(
            &format!("{base}{PRODUCTS}?type=gpu&category=instance"),
            Some("k1")
        )
        .await
        .0,
        503
    );
    sim.set_fault(
        "_balance",
        Fault::body(ppio_operator::simulator::BodyFault::HostileState),
    );
    assert_eq!(get(&format!("{base}{BALANCE}"), Some("k1")).await.0, 200);
    sim.clear_fault(BILLS_FAULT);
    assert_eq!(get(&bills, Some("k1")).await.0, 200);
    get(&format!("{base}{MONTHLY}?category=gpu"), Some("k2")).await;

    let counts = sim.counts();
    assert_eq!(counts.calls["bills"], 2);
    assert_eq!(counts.calls["balance"], 3);
    assert_eq!(counts.calls["products"], 1);
    assert_eq!(counts.calls["monthly_bills"], 1);
    assert_eq!(counts.keys["key0"], 6);
    assert_eq!(counts.keys["key1"], 1);
    assert_eq!(counts.list, 0);
    assert!(counts.instances.is_empty());
    let (_, _, body) = get(&format!("{base}/_sim/requests"), None).await;
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["calls"]["balance"], 3);
}

#[ppio_test_macros::test]
async fn thousands_of_bill_rows_round_trip_in_one_answer() {
    let (_sim, base) = start().await;
    let d0 = 1_764_547_200;
    let rows: Vec<Value> = (0..6_000)
        .map(|n| {
            let mut r = bill(&format!("instance-{n:05}"), d0, d0 + 3599, "10000");
            r["productName"] = json!(format!("{n} {}", "x".repeat(100)));
            r
        })
        .collect();
    let put = json!({ "bills": rows });
    assert!(put.to_string().len() > 2 * 1024 * 1024, "over 2 MiB");
    assert_eq!(
        send(reqwest::Method::PUT, &format!("{base}/_sim/bills"), put).await,
        204
    );
    let (code, _, body) = get(
        &format!("{base}{BILLS}?cycleType=Hour&productCategory=gpu"),
        Some("k1"),
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.len() > 1024 * 1024, "{} bytes", body.len());
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["bills"], json!(rows));
}

#[ppio_test_macros::test]
async fn a_month_of_bills_for_ten_thousand_instances_is_quick() {
    let (sim, base) = start().await;
    let mut running = Simulator::samples()[1].clone();
    running["status"]["status"] = json!("running");
    for n in 0..10_000 {
        sim.put_instance(&format!("many-{n:05}"), running.clone());
    }
    let url = format!("{base}{BILLS}?cycleType=Month&productCategory=gpu");
    let t0 = std::time::Instant::now();
    let (code, _, body) = get(&url, Some("k1")).await;
    let took = t0.elapsed();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    if unix_now() - month_start(unix_now()) >= 3600 {
        assert_eq!(v["bills"].as_array().map(Vec::len), Some(10_000));
    }
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}
