//! The PPIO simulator over real HTTP on 127.0.0.1: GET and paged LIST, key checking, the
//! control API, faults and request counts.

use std::net::{Ipv4Addr, SocketAddr};

use ppio_operator::simulator::{Simulator, parse_fixtures};
use serde_json::{Value, json};

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

#[ppio_test_macros::test]
async fn get_checks_the_key_and_serves_the_instance() {
    let (sim, base) = start().await;
    let (code, _, body) = get(&format!("{base}/gpus/v2/instances/ca338f12f3"), Some("k2")).await;
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["id"], "ca338f12f3");
    assert_eq!(v["status"]["status"], "running");
    for key in [None, Some("wrong")] {
        let (code, _, body) = get(&format!("{base}/gpus/v2/instances/ca338f12f3"), key).await;
        assert_eq!(code, 401);
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("json")["reason"],
            "UNAUTHORIZED"
        );
    }
    let (code, _, body) = get(&format!("{base}/gpus/v2/instances/nope"), Some("k1")).await;
    assert_eq!(code, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["reason"],
        "RESOURCE_NOT_FOUND"
    );
    sim.set_not_found_status(400);
    assert_eq!(
        get(&format!("{base}/gpus/v2/instances/nope"), Some("k1"))
            .await
            .0,
        400
    );
    let counts = sim.counts();
    assert_eq!(counts.instances["ca338f12f3"], 3);
    assert_eq!(counts.keys["key1"], 1);
    assert_eq!(counts.keys["invalid"], 2);
}

#[ppio_test_macros::test]
async fn list_pages_and_filters_without_tools_or_pricing() {
    let (sim, base) = start().await;
    for i in 0..7 {
        let mut v = Simulator::samples()[1].clone();
        v["name"] = json!(format!("batch-{i}"));
        v["region"] = json!(if i % 2 == 0 { "eu-1" } else { "us-1" });
        sim.put_instance(&format!("batch{i}"), v);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (code, _, body) = get(
            &format!("{base}/gpus/v2/instances?limit=4&cursor={cursor}"),
            Some("k1"),
        )
        .await;
        assert_eq!(code, 200);
        let page: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(page["total"], 10);
        for item in page["data"].as_array().expect("data") {
            assert!(
                item.get("tools").is_none() && item.get("pricing").is_none(),
                "LIST items lack tools and pricing"
            );
            seen.push(item["id"].as_str().expect("id").to_string());
        }
        pages += 1;
        if page["has_more"] == false {
            assert_eq!(page["next_cursor"], "");
            break;
        }
        cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 10);
    let filtered = |q: &str| {
        let base = base.clone();
        let q = q.to_string();
        async move {
            let (_, _, body) = get(&format!("{base}/gpus/v2/instances?{q}"), Some("k1")).await;
            let v: Value = serde_json::from_str(&body).expect("json");
            v["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|i| i["id"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(filtered("regions=eu-1").await.len(), 4);
    assert_eq!(filtered("regions=eu-1,us-1").await.len(), 7);
    assert_eq!(filtered("status=exited").await, ["c0ffee1234"]);
    assert_eq!(filtered("billing_mode=prepaid").await, ["ca338f12f3"]);
    assert_eq!(filtered("name=batch-3").await, ["batch3"]);
    assert_eq!(filtered("name=c0ffee").await, ["c0ffee1234"]);
    assert_eq!(
        get(
            &format!("{base}/gpus/v2/instances?cursor=garbage"),
            Some("k1")
        )
        .await
        .0,
        400
    );
    assert_eq!(sim.counts().list, 10);
}

#[ppio_test_macros::test]
async fn the_control_api_changes_instances_keys_and_faults() {
    let (sim, base) = start().await;
    let url = format!("{base}/gpus/v2/instances/ca338f12f3");
    assert_eq!(
        send(
            reqwest::Method::PATCH,
            &format!("{base}/_sim/instances/ca338f12f3"),
            json!({"status": {"status": "exited"}, "pricing": null})
        )
        .await,
        204
    );
    let v: Value = serde_json::from_str(&get(&url, Some("k1")).await.2).expect("json");
    assert_eq!(v["status"]["status"], "exited");
    assert!(v.get("pricing").is_none());
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/instances/new1"),
            json!({"status": {"status": "creating"}})
        )
        .await,
        204
    );
    assert_eq!(
        get(&format!("{base}/gpus/v2/instances/new1"), Some("k1"))
            .await
            .0,
        200
    );
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/instances/new1"),
            json!(null)
        )
        .await,
        204
    );
    assert_eq!(
        get(&format!("{base}/gpus/v2/instances/new1"), Some("k1"))
            .await
            .0,
        404
    );

    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!({"status": 429, "retryAfter": "30"})
        )
        .await,
        204
    );
    let (code, headers, body) = get(&url, Some("k1")).await;
    assert_eq!(code, 429);
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["reason"],
        "RATE_LIMIT_EXCEEDED"
    );
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!({"body": "truncated"})
        )
        .await,
        204
    );
    let (code, _, body) = get(&url, Some("k1")).await;
    assert_eq!(code, 200);
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "truncated JSON"
    );
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!({"body": "oversized"})
        )
        .await,
        204
    );
    assert!(get(&url, Some("k1")).await.2.len() > 2 * 1024 * 1024);
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!({"body": "numbers-as-strings"})
        )
        .await,
        204
    );
    let v: Value = serde_json::from_str(&get(&url, Some("k1")).await.2).expect("json");
    assert_eq!(v["resource_specs"]["gpu_num"], "1");
    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!({"nonsense": 1})
        )
        .await,
        422,
        "unknown fault fields are refused"
    );
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/faults/ca338f12f3"),
            json!(null)
        )
        .await,
        204
    );
    assert_eq!(get(&url, Some("k1")).await.0, 200);

    assert_eq!(
        send(
            reqwest::Method::PUT,
            &format!("{base}/_sim/keys"),
            json!(["rotated"])
        )
        .await,
        204
    );
    assert_eq!(get(&url, Some("k1")).await.0, 401);
    assert_eq!(get(&url, Some("rotated")).await.0, 200);
    let counts: Value =
        serde_json::from_str(&get(&format!("{base}/_sim/requests"), None).await.2).expect("json");
    assert!(counts["instances"]["ca338f12f3"].as_u64().expect("count") >= 8);
    assert_eq!(
        send(
            reqwest::Method::DELETE,
            &format!("{base}/_sim/requests"),
            json!(null)
        )
        .await,
        204
    );
    assert_eq!(sim.counts().instances.len(), 0);
}

#[test]
fn fixtures_are_validated() {
    assert_eq!(parse_fixtures(r#"[{"id":"a"}]"#).expect("array").len(), 1);
    assert_eq!(
        parse_fixtures(r#"{"instances":[{"id":"a"},{"id":"b"}]}"#)
            .expect("object")
            .len(),
        2
    );
    for bad in [
        "nope",
        "{}",
        r#"[{"name":"no id"}]"#,
        r#"{"instances":{}}"#,
        r#"[{"id":""}]"#,
    ] {
        assert!(parse_fixtures(bad).is_err(), "{bad}");
    }
    assert_eq!(Simulator::samples().len(), 3);
}

#[ppio_test_macros::test]
async fn list_pages_are_capped_whatever_the_limit_asks() {
    let (sim, base) = start().await;
    for i in 0..520 {
        sim.put_instance(&format!("many{i}"), Simulator::samples()[0].clone());
    }
    let (code, _, body) = get(
        &format!("{base}/gpus/v2/instances?limit=100000"),
        Some("k1"),
    )
    .await;
    assert_eq!(code, 200);
    let page: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["data"].as_array().expect("data").len(), 500);
    assert_eq!(page["has_more"], true);
    let counts = sim.counts();
    assert_eq!(counts.list, 1, "the LIST request is counted");
}

#[ppio_test_macros::test]
async fn the_list_misbehaves_as_its_faults_say() {
    use ppio_operator::simulator::{Endless, Fault, LIST_FAULT};
    let (sim, base) = start().await;
    let page = |cursor: String| {
        let base = base.clone();
        async move {
            let (code, _, body) = get(
                &format!("{base}/gpus/v2/instances?limit=2&cursor={cursor}"),
                Some("k1"),
            )
            .await;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (code, v)
        }
    };
    // An expired cursor on page 2: page 1 answers, page 2 says RESOURCE_NOT_FOUND.
    sim.set_fault(
        LIST_FAULT,
        Fault::status(400)
            .with_reason("RESOURCE_NOT_FOUND")
            .from_page(2),
    );
    let (code, first) = page(String::new()).await;
    assert_eq!(code, 200);
    let next = first["next_cursor"].as_str().expect("cursor").to_string();
    let (code, second) = page(next).await;
    assert_eq!(code, 400);
    assert_eq!(second["reason"], "RESOURCE_NOT_FOUND");
    // Lean items: without the fields named, besides tools and pricing.
    sim.set_fault(LIST_FAULT, Fault::lean(&["/billing/prepaid", "/network"]));
    let (_, lean) = page(String::new()).await;
    for item in lean["data"].as_array().expect("data") {
        assert!(item.get("network").is_none(), "{item}");
        assert!(item.pointer("/billing/prepaid").is_none(), "{item}");
        assert!(item.get("id").is_some() && item.get("status").is_some());
    }
    // Endless LISTs: past the 3 instances, more pages behind new cursors, forever.
    for (endless, check) in [
        (Endless::Empty, "null"),
        (Endless::Repeat, "repeat"),
        (Endless::Fresh, "fresh"),
    ] {
        sim.set_fault(LIST_FAULT, Fault::endless(endless));
        let mut cursor = String::new();
        let mut cursors = std::collections::BTreeSet::new();
        for n in 0..6 {
            let (code, v) = page(cursor.clone()).await;
            assert_eq!(code, 200);
            assert_eq!(v["has_more"], true, "{check}: page {n} says more follow");
            cursor = v["next_cursor"].as_str().expect("cursor").to_string();
            assert!(
                cursors.insert(cursor.clone()),
                "{check}: a new cursor each page"
            );
            if n >= 2 {
                match endless {
                    Endless::Empty => assert_eq!(v["data"], Value::Null),
                    Endless::Repeat => assert_eq!(v["data"].as_array().map(Vec::len), Some(2)),
                    Endless::Fresh => assert!(
                        v["data"][0]["id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with("ghost-")),
                        "{v}"
                    ),
                }
            }
        }
    }
}
