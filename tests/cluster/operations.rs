//! Operating the operator against the real API server: metrics, Events, health endpoints,
//! leader election and graceful shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use http::Request;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::client::Body;
use kube::{Api, Client};
use ppio_operator::controller::Settings;
use ppio_operator::crd::PpioInstance;
use ppio_operator::operator::RunConfig;
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_operator::simulator::Fault;
use serde_json::json;

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

async fn wait_metric(op: &Operator, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Deadline::new(what, WAIT);
    loop {
        let m = metrics(op).await;
        if check(&m) {
            return m;
        }
        deadline.check(|| &m);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[ppio_test_macros::test]
async fn metrics_follow_the_instance_and_disappear_with_it() {
    let Scene {
        ns, sim, op, api, ..
    } = scene("metrics", "key-m", &[]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_fetched(&api, "a").await;

    let obj = format!("namespace=\"{ns}\",name=\"a\"");
    let m = wait_metric(&op, "instance series", |m| {
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
    let m = wait_metric(&op, "state exited", |m| {
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
    let m = wait_metric(&op, "series removed", |m| !m.contains(&obj)).await;
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

/// Events are published after the status write they tell of: waits until `check` holds for
/// the Events of `name`.
async fn wait_events(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Deadline::new(what, WAIT);
    loop {
        let ev = events_for(client, ns, name).await;
        if check(&ev) {
            return ev;
        }
        deadline.check(|| format!("{ev:#?}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The (type, reason) of each Event, sorted.
fn reasons(events: &[Event]) -> Vec<(String, String)> {
    let mut r: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
            )
        })
        .collect();
    r.sort();
    r
}

#[ppio_test_macros::test]
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
    wait_for(&api, "a", "exited", |o| {
        o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("exited")
    })
    .await;
    let ev = wait_events(&client, &ns, "a", "the StateChanged Event", |ev| {
        count(ev, "Normal", "StateChanged") >= 1
    })
    .await;
    assert_eq!(
        reasons(&ev),
        [("Normal".into(), "StateChanged".into())],
        "{ev:#?}"
    );
    assert!(
        ev[0]
            .note
            .as_deref()
            .is_some_and(|n| n.contains("running") && n.contains("exited"))
    );
    assert_eq!(ev[0].reporting_controller.as_deref(), Some("ppio-operator"));

    // PPIO fails for every request (the LIST walks and GETs alike).
    sim.set_fault("*", Fault::status(503));
    wait_for(&api, "a", "ApiUnavailable", |o| {
        has(o, "Synced", "False", "ApiUnavailable")
    })
    .await;
    let requests = observations(&sim, "ca338f12f3");
    // Two more identical failures (backoff 5s, 10s): no new Event object.
    wait_until("the failing instance polled twice more", WAIT, async || {
        (observations(&sim, "ca338f12f3") >= requests + 2).then_some(())
    })
    .await;
    let ev = wait_events(&client, &ns, "a", "the ApiUnavailable Event", |ev| {
        count(ev, "Warning", "ApiUnavailable") >= 1
    })
    .await;
    assert_eq!(
        reasons(&ev),
        [
            ("Normal".into(), "StateChanged".into()),
            ("Warning".into(), "ApiUnavailable".into())
        ],
        "{ev:#?}"
    );

    sim.clear_fault("*");
    wait_for(&api, "a", "recovered", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    let ev = wait_events(&client, &ns, "a", "the Synced Event", |ev| {
        count(ev, "Normal", "Synced") >= 1
    })
    .await;
    // Each transition told once: the earlier ones long settled, the last one without a
    // second Event of its reason.
    assert_eq!(
        reasons(&ev),
        [
            ("Normal".into(), "StateChanged".into()),
            ("Normal".into(), "Synced".into()),
            ("Warning".into(), "ApiUnavailable".into())
        ],
        "{ev:#?}"
    );
}

/// Leader election with a 5 s lease, logging JSON (read by [`takeovers`]).
fn leader_args(ns: &str) -> Vec<String> {
    [
        "--leader-election",
        "--leader-election-namespace",
        ns,
        "--leader-election-lease-duration",
        "5s",
        "--log-format",
        "json",
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

async fn wait_leader(ops: &[&Operator]) -> usize {
    wait_until("a leader", WAIT, async || {
        for (i, op) in ops.iter().enumerate() {
            if is_leader(op).await {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// The holder a replica found on the Lease each time it took the lease over (from its debug
/// log): empty for a lease released by its holder, the holder's identity for one it let
/// expire. A lease created by the replica is not a takeover.
fn takeovers(op: &Operator) -> Vec<String> {
    op.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "taking over the leader lease")
        .map(|l| l["previous"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The holder of the operator's Lease in `ns`.
async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get("ppio-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[ppio_test_macros::test]
async fn only_the_leader_writes_and_a_standby_takes_over_after_a_crash() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let (sim, addr) = simulator(&["key-l"]).await;
    let args = leader_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Operator::start(&ns, addr, Some("key-l"), &args).await;
    let mut second = Operator::start(&ns, addr, Some("key-l"), &args).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    let leader = wait_leader(&[&first, &second]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    let (lead, standby) = if leader == 0 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    assert!(!is_leader(standby).await, "two leaders");
    assert_eq!(writes(standby).await, 0.0, "the standby wrote");
    // (/metrics may be up to a second old: it is rendered at most once a second.)
    wait_until("the leader's write in its metrics", WAIT, async || {
        (writes(lead).await >= 1.0).then_some(())
    })
    .await;
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

    let crashed = lease_holder(&client, &ns)
        .await
        .expect("the leader holds the Lease");
    lead.process.signal("KILL").expect("kill the leader");
    sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    wait_for(&api, "a", "the standby's write", |o| {
        o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("exited")
    })
    .await;
    assert!(is_leader(standby).await);
    assert!(writes(standby).await >= 1.0);
    // The crashed leader released nothing: the standby took the lease over once it had
    // expired, from the crashed holder.
    assert_eq!(takeovers(standby), [crashed], "{}", standby.log());
}

#[ppio_test_macros::test]
async fn sigterm_exits_cleanly_and_hands_over_at_once() {
    let client = client().await;
    let ns = namespace(&client, "sigterm").await;
    let (_sim, addr) = simulator(&["key-t"]).await;
    let args = leader_args(&ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Operator::start(&ns, addr, Some("key-t"), &args).await;
    let mut second = Operator::start(&ns, addr, Some("key-t"), &args).await;
    let leader = wait_leader(&[&first, &second]).await;
    let (lead, standby) = if leader == 0 {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    lead.process.signal("TERM").expect("SIGTERM");
    // Hang protection: the operator's own grace period is 8 s.
    let status = lead
        .process
        .wait_timeout(WAIT)
        .expect("wait")
        .expect("the leader exits on SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", lead.log());
    assert!(
        lead.log().contains("released the leader lease"),
        "{}",
        lead.log()
    );
    // The standby takes over the released lease at once (its next retry), not once the lease
    // would have expired: it found the lease without a holder.
    wait_until("the standby leads", WAIT, async || {
        is_leader(standby).await.then_some(())
    })
    .await;
    assert_eq!(
        takeovers(standby),
        [String::new()],
        "the standby took a released lease: {}",
        standby.log()
    );
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
        .wait_timeout(WAIT)
        .expect("wait")
        .expect("the new leader exits on SIGTERM");
    assert!(status.success());
}

#[ppio_test_macros::test]
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
            credentials_namespaces: None,
            budget: ppio_operator::controller::Budget::default(),
            observe: ppio_operator::controller::Observe::default(),
            money: ppio_operator::controller::MoneySettings::off(),
            exports: Default::default(),
        },
        ppio: Arc::new(ppio),
        concurrency: 4,
        // Replaced by run_in_process's port.
        http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        health_addr: None,
        metrics_auth: ppio_operator::server::MetricsAuth::None,
        leader: None,
        identity: "readyz-test".into(),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (http, running) = run_in_process(gated, config, stop_rx).await;
    // While the gate holds the watch: alive, not ready.
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
    wait_until("ready after the watch synced", WAIT, async || {
        (http_get(http, "/readyz").await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    assert_eq!(http_get(http, "/livez").await.map(|r| r.0), Some(200));
    stop_tx.send(true).expect("stop");
    // Hang protection: stopping is pinned, not its speed.
    tokio::time::timeout(WAIT, running)
        .await
        .expect("stops")
        .expect("joins")
        .expect("runs cleanly");
}

#[ppio_test_macros::test]
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
    wait_until("a polled twice more", WAIT, async || {
        (observations(&sim, "ca338f12f3") >= polls + 2).then_some(())
    })
    .await;
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
