//! Operating the operator against the real API server: metrics, Events, health endpoints,
//! leader election and graceful shutdown.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::client::Body;
use kube::{Api, Client};
use ppio_operator::controller::Settings;
use ppio_operator::crd::PpioInstance;
use ppio_operator::operator::{RunConfig, run_with};
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_operator::simulator::Fault;
use serde_json::json;
use support::*;

async fn metrics(op: &Operator) -> String {
    http_get(op.http, "/metrics")
        .await
        .expect("metrics answer")
        .1
}

/// The value of the sample whose name and labels start with `prefix` (labels in the order
/// they are registered), if present.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn wait_metric(
    op: &Operator,
    what: &str,
    limit: Duration,
    check: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let m = metrics(op).await;
        if check(&m) {
            return m;
        }
        assert!(
            start.elapsed() < limit,
            "{what} not seen within {limit:?}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn metrics_follow_the_instance_and_disappear_with_it() {
    let Scene {
        ns, sim, op, api, ..
    } = scene("metrics", "key-m", &[]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_fetched(&api, "a").await;

    let obj = format!("namespace=\"{ns}\",name=\"a\"");
    let m = wait_metric(&op, "instance series", Duration::from_secs(5), |m| {
        m.contains(&format!("ppio_instance_ready{{{obj}}}"))
    })
    .await;
    assert_eq!(
        sample(
            &m,
            &format!("ppio_instance_state{{{obj},state=\"running\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, &format!("ppio_instance_ready{{{obj}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, &format!("ppio_instance_synced{{{obj}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!("ppio_instance_price{{{obj},kind=\"instance\"}}")
        ),
        Some(100.0)
    );
    assert_eq!(
        sample(&m, &format!("ppio_instance_price{{{obj},kind=\"base\"}}")),
        Some(120.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!("ppio_instance_price{{{obj},kind=\"storage\"}}")
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            &m,
            &format!("ppio_instance_prepaid_end_time_seconds{{{obj}}}")
        ),
        Some(1714464000.0)
    );
    let last = sample(
        &m,
        &format!("ppio_instance_last_success_timestamp_seconds{{{obj}}}"),
    )
    .expect("last success");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs_f64();
    assert!(
        (now - last).abs() < 30.0,
        "last success {last} vs now {now}"
    );
    assert!(sample(&m, "ppio_reconciles_total{result=\"ok\"}").is_some_and(|v| v >= 1.0));
    assert!(
        sample(
            &m,
            "ppio_api_requests_total{endpoint=\"get_instance\",class=\"2xx\"}"
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(sample(&m, "ppio_status_writes_total").is_some_and(|v| v >= 1.0));
    assert!(m.contains("ppio_reconcile_duration_seconds_bucket"));
    assert!(m.contains("ppio_api_request_duration_seconds_bucket"));
    assert_eq!(sample(&m, "ppio_leader "), Some(0.0));
    assert!(m.trim_end().ends_with("# EOF"), "OpenMetrics text");

    sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    let m = wait_metric(&op, "state exited", Duration::from_secs(15), |m| {
        sample(m, &format!("ppio_instance_state{{{obj},state=\"exited\"}}")) == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(
            &m,
            &format!("ppio_instance_state{{{obj},state=\"running\"}}")
        ),
        None,
        "the old state series is replaced"
    );
    assert_eq!(
        sample(&m, &format!("ppio_instance_ready{{{obj}}}")),
        Some(0.0)
    );
    assert!(sample(&m, "ppio_status_writes_skipped_total").is_some());

    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let m = wait_metric(&op, "series removed", Duration::from_secs(15), |m| {
        !m.contains(&obj)
    })
    .await;
    assert!(!m.contains("ppio_instance_state{"), "{m}");
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

fn count(events: &[Event], type_: &str, reason: &str) -> usize {
    events
        .iter()
        .filter(|e| e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason))
        .count()
}

#[tokio::test]
async fn events_tell_each_transition_once() {
    let Scene {
        client,
        ns,
        sim,
        op: _op,
        api,
        ..
    } = scene("events", "key-e", &[]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    assert!(
        events_for(&client, &ns, "a").await.is_empty(),
        "no Event for a first observation"
    );

    sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    wait_for(&api, "a", Duration::from_secs(15), "exited", |o| {
        o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("exited")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ev = events_for(&client, &ns, "a").await;
    assert_eq!(count(&ev, "Normal", "StateChanged"), 1, "{ev:?}");
    assert!(
        ev[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("running") && n.contains("exited"))
    );
    assert_eq!(ev[0].reporting_controller.as_deref(), Some("ppio-operator"));

    // PPIO fails for every request (the LIST walks and GETs alike).
    sim.set_fault("*", Fault::status(503));
    wait_for(&api, "a", Duration::from_secs(25), "ApiUnavailable", |o| {
        has(o, "Synced", "False", "ApiUnavailable")
    })
    .await;
    let requests = observations(&sim, "ca338f12f3");
    // Two more identical failures (backoff 5s, 10s): no new Event object.
    let start = Instant::now();
    while observations(&sim, "ca338f12f3") < requests + 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the failing instance was not polled again"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ev = events_for(&client, &ns, "a").await;
    assert_eq!(count(&ev, "Warning", "ApiUnavailable"), 1, "{ev:?}");
    assert_eq!(ev.len(), 2, "{ev:?}");

    sim.clear_fault("*");
    wait_for(&api, "a", Duration::from_secs(30), "recovered", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ev = events_for(&client, &ns, "a").await;
    assert_eq!(count(&ev, "Normal", "Synced"), 1, "{ev:?}");
    assert_eq!(ev.len(), 3, "{ev:?}");
}

fn leader_args(ns: &str) -> Vec<String> {
    [
        "--leader-election",
        "--leader-election-namespace",
        ns,
        "--leader-election-lease-duration",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn is_leader(op: &Operator) -> bool {
    sample(&metrics(op).await, "ppio_leader ") == Some(1.0)
}

async fn writes(op: &Operator) -> f64 {
    sample(&metrics(op).await, "ppio_status_writes_total").unwrap_or(0.0)
}

async fn wait_leader(ops: &[&Operator], limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        for (i, op) in ops.iter().enumerate() {
            if is_leader(op).await {
                return i;
            }
        }
        assert!(start.elapsed() < limit, "no leader within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over_after_a_crash() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let (sim, addr) = simulator(&["key-l"]).await;
    let args = leader_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Operator::start(&ns, addr, Some("key-l"), &args).await;
    let mut second = Operator::start(&ns, addr, Some("key-l"), &args).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    let leader = wait_leader(&[&first, &second], Duration::from_secs(15)).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    let (lead, standby) = if leader == 0 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    assert!(!is_leader(standby).await, "two leaders");
    assert_eq!(writes(standby).await, 0.0, "the standby wrote");
    assert!(writes(lead).await >= 1.0);
    assert!(
        http_get(standby.http, "/readyz")
            .await
            .is_some_and(|(c, _)| c == 200),
        "a standby is ready"
    );
    let obj = api.get("a").await.expect("get");
    let managers: Vec<String> = obj
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert_eq!(managers, ["ppio-operator"], "one status writer");

    lead.process.signal("KILL").expect("kill the leader");
    let killed = Instant::now();
    sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    wait_for(
        &api,
        "a",
        Duration::from_secs(30),
        "the standby's write",
        |o| o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("exited"),
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert!(is_leader(standby).await);
    assert!(writes(standby).await >= 1.0);
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_hands_over_at_once() {
    let client = client().await;
    let ns = namespace(&client, "sigterm").await;
    let (_sim, addr) = simulator(&["key-t"]).await;
    let args = leader_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Operator::start(&ns, addr, Some("key-t"), &args).await;
    let mut second = Operator::start(&ns, addr, Some("key-t"), &args).await;
    let leader = wait_leader(&[&first, &second], Duration::from_secs(15)).await;
    let (lead, standby) = if leader == 0 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    lead.process.signal("TERM").expect("SIGTERM");
    let sent = Instant::now();
    let status = lead
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("exited within 10s");
    assert!(status.success(), "exit status {status}\n{}", lead.log());
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(
        lead.log().contains("released the leader lease"),
        "{}",
        lead.log()
    );
    // The standby takes over at once (its retry period), not after the lease duration.
    let start = Instant::now();
    while !is_leader(standby).await {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the standby did not take over at once"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = leases.get("ppio-operator").await.expect("lease");
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty())
    );

    // The new leader exits 0 on SIGTERM too.
    standby.process.signal("TERM").expect("SIGTERM");
    let status = standby
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("exited within 10s");
    assert!(status.success());
}

#[tokio::test]
async fn readyz_waits_for_the_first_watch_sync_while_livez_stays_up() {
    let client = client().await;
    let ns = namespace(&client, "ready").await;
    let (_sim, sim_addr) = simulator(&["key-r"]).await;
    // A client that holds the controller's initial LIST (and watches) until the gate opens.
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let inner = client.clone();
    let gated = tower::service_fn(move |req: Request<Body>| {
        let inner = inner.clone();
        let mut gate = gate_rx.clone();
        async move {
            let query = req.uri().query().unwrap_or_default().to_string();
            if query.contains("limit=500") || query.contains("watch=") {
                let _ = gate.wait_for(|open| *open).await;
            }
            inner.send(req).await
        }
    });
    let gated = Client::new(gated, ns.clone());
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
    let ppio = HttpClient::new(&HttpClientConfig {
        base_url: format!("http://{sim_addr}"),
        ..Default::default()
    })
    .expect("client");
    let config = RunConfig {
        namespace: Some(ns.clone()),
        settings: Settings {
            default_refresh: Duration::from_secs(10),
            default_key: ApiKey::new("key-r"),
            default_key_namespaces: None,
            budget: ppio_operator::controller::Budget::default(),
            observe: ppio_operator::controller::Observe::default(),
        },
        ppio: Arc::new(ppio),
        concurrency: 4,
        http_addr: http,
        health_addr: None,
        leader: None,
        identity: "readyz-test".into(),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(run_with(gated, config, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let start = Instant::now();
    while http_get(http, "/livez").await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "/livez never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(http_get(http, "/livez").await.map(|r| r.0), Some(200));
        assert_eq!(
            http_get(http, "/readyz").await.map(|r| r.0),
            Some(503),
            "ready before the watch synced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gate_tx.send(true).expect("open the gate");
    let start = Instant::now();
    while http_get(http, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not ready after the watch synced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(http, "/livez").await.map(|r| r.0), Some(200));
    stop_tx.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops")
        .expect("joins")
        .expect("runs cleanly");
}

#[tokio::test]
async fn json_logs_are_one_line_per_change_not_per_poll() {
    let client = client().await;
    let ns = namespace(&client, "logs").await;
    let (sim, addr) = simulator(&["key-j"]).await;
    let op = Operator::start_logging(
        &ns,
        addr,
        Some("key-j"),
        &["--log-format", "json"],
        "warn,ppio_operator=info",
    )
    .await;
    let api: Api<PpioInstance> = Api::namespaced(client, &ns);
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    let polls = observations(&sim, "ca338f12f3");
    let start = Instant::now();
    while observations(&sim, "ca338f12f3") < polls + 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "not polled");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = op.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let about_a: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["ppioinstance"] == "a")
        .collect();
    let messages: Vec<&str> = about_a
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert_eq!(
        messages,
        ["instance state changed", "instance observed"],
        "one line per change, none per poll:\n{log}"
    );
    let span = &about_a[0]["span"];
    assert_eq!(span["namespace"], ns.as_str());
    assert_eq!(span["instance_id"], "ca338f12f3");
    assert_eq!(span["name"], "reconcile");
    assert_eq!(about_a[0]["level"], "INFO");
    assert_eq!(about_a[0]["to"], "running");
}
