//! End-to-end: the real kube-apiserver + etcd, the real kubectl, the PPIO simulator, and the
//! operator running as its own process.

use std::time::Duration;

use crate::support::*;
use kube::Api;
use kube::api::{Patch, PatchParams};
use ppio_operator::crd::{PpioInstance, PpioInstanceStatus};
use ppio_operator::simulator::{BodyFault, Fault, Simulator};
use serde_json::json;

const GOLDEN: &str = include_str!("../golden/get-instance.status.yaml");

fn without_conditions(s: &PpioInstanceStatus) -> PpioInstanceStatus {
    PpioInstanceStatus {
        conditions: vec![],
        observed_generation: None,
        ..s.clone()
    }
}

fn rv(obj: &PpioInstance) -> String {
    obj.metadata.resource_version.clone().unwrap_or_default()
}

#[ppio_test_macros::test]
async fn new_instance_gets_the_full_status_and_kubectl_shows_the_columns() {
    let Scene {
        ns,
        sim,
        mut op,
        api,
        ..
    } = scene("full", "key-full", &[]).await;

    apply_instance(&ns, "trainer-a", "instanceId: ca338f12f3");
    apply_instance(&ns, "trainer-b", "instanceId: b7e2c91d04");
    // Fetched in full (prices, endpoints) by a GET: alone or from the key's LIST first (the
    // sweeps test pins which).
    let a = wait_fetched(&api, "trainer-a").await;
    let counts = sim.counts();
    assert!(
        sim.requests_for("ca338f12f3") >= 1,
        "fetched in full by a GET: {counts:?}"
    );
    let status = a.status.clone().expect("status");
    let mut golden: PpioInstanceStatus = serde_yaml::from_str(GOLDEN).expect("golden");
    // The golden status answers a refresh request; trainer-a carries no refresh annotation.
    golden.last_handled_refresh = None;
    assert_eq!(
        without_conditions(&status),
        without_conditions(&golden),
        "status follows the contract's mapping"
    );
    assert_eq!(status.observed_generation, a.metadata.generation);
    assert!(has(&a, "Ready", "True", "Running"));
    wait_for(&api, "trainer-b", "Synced=True", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;

    let table = kubectl_ok(&["get", "ppioinstances", "-n", &ns], None);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "INSTANCE", "STATE", "GPUS", "REGION", "READY", "SYNCED", "AGE"
        ]
    );
    let row_a: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("trainer-a"))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row_a[..7],
        [
            "trainer-a",
            "ca338f12f3",
            "running",
            "1",
            "region-id",
            "True",
            "True"
        ]
    );
    let row_b: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("trainer-b"))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row_b[..7],
        [
            "trainer-b",
            "b7e2c91d04",
            "starting",
            "4",
            "cn-south-1",
            "False",
            "True"
        ]
    );

    let wide = kubectl_ok(&["get", "ppioi", "-n", &ns, "-o", "wide"], None);
    let header: Vec<&str> = wide
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "INSTANCE", "STATE", "GPUS", "REGION", "READY", "SYNCED", "AGE", "IP",
            "BILLING", "COST/H", "CURRENCY"
        ]
    );
    let row: Vec<&str> = wide
        .lines()
        .find(|l| l.starts_with("trainer-a"))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[row.len() - 2..], ["10.2.1.1", "prepaid"]);
    // The category and the explain docs.
    assert!(kubectl_ok(&["get", "ppio", "-n", &ns], None).contains("trainer-a"));
    let explain = kubectl_ok(&["explain", "ppioinstance.spec"], None);
    for field in [
        "instanceId",
        "credentialsSecretRef",
        "refreshInterval",
        "suspend",
        "expect",
        "Immutable",
    ] {
        assert!(
            explain.contains(field),
            "kubectl explain lacks {field}:\n{explain}"
        );
    }
    op.assert_running();
}

#[ppio_test_macros::test]
async fn upstream_changes_show_and_kubectl_wait_returns() {
    let Scene {
        ns,
        sim,
        op: _op,
        api,
        ..
    } = scene("change", "key-change", &[]).await;

    apply_instance(&ns, "b", "instanceId: b7e2c91d04\nrefreshInterval: 10s");
    wait_for(&api, "b", "state starting", |o| {
        o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("starting")
    })
    .await;

    // What is pinned is that the change upstream shows and `kubectl wait` returns on it, not
    // how fast: the polling rate is pinned in virtual time by the scheduler tests.
    let kc = kubeconfig().to_path_buf();
    let kubectl_bin = tools_dir().join("kubectl");
    let ns2 = ns.clone();
    let waiter = std::thread::spawn(move || {
        std::process::Command::new(kubectl_bin)
            .arg("--kubeconfig")
            .arg(kc)
            .args([
                "wait",
                "--for=condition=Ready",
                "ppioinstance/b",
                "-n",
                &ns2,
                // Hang protection, not a claim about speed.
                "--timeout=180s",
            ])
            .output()
            .expect("kubectl wait runs")
    });
    // kubectl wait is watching before the change (a wait that starts after it returns too).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polls = observations(&sim, "b7e2c91d04");
    sim.patch_instance("b7e2c91d04", &json!({"status": {"status": "running"}}));
    let out = waiter.join().expect("waiter");
    assert!(
        out.status.success(),
        "kubectl wait failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("condition met"));
    assert!(
        observations(&sim, "b7e2c91d04") > polls,
        "the change was seen by a poll"
    );

    // running -> exited: shown by the next poll.
    sim.patch_instance(
        "b7e2c91d04",
        &json!({"status": {"status": "exited"}, "last_stopped_at": 1714560000}),
    );
    let obj = wait_for(&api, "b", "state exited", |o| {
        o.status.as_ref().and_then(|s| s.state.as_deref()) == Some("exited")
    })
    .await;
    assert!(has(&obj, "Ready", "False", "NotRunning"));
    assert_eq!(
        obj.status.and_then(|s| s.last_stopped_at).as_deref(),
        Some("2024-05-01T10:40:00Z")
    );
}

#[ppio_test_macros::test]
async fn an_unchanged_instance_is_never_rewritten_even_across_a_restart() {
    let Scene {
        ns,
        sim,
        sim_addr: addr,
        mut op,
        api,
        ..
    } = scene("quiet", "key-quiet", &[]).await;

    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    // Observed from the key's LIST, then fetched in full by a GET.
    let first = wait_fetched(&api, "a").await;
    let version = rv(&first);
    let observed = || observations(&sim, "ca338f12f3");
    let polls = observed();
    let success = last_success(&op, &ns, "a").await;
    // Three more observations of the unchanged instance (about three intervals): each moves
    // the time of the last observation, and none writes.
    wait_until("three more observations of a", WAIT, async || {
        (observed() >= polls + 3).then_some(())
    })
    .await;
    let moved = wait_until("the last success moves", WAIT, async || {
        let moved = last_success(&op, &ns, "a").await - success;
        (moved > 0.0).then_some(moved)
    })
    .await;
    assert!(moved > 0.0);
    let later = api.get("a").await.expect("get");
    assert_eq!(
        rv(&later),
        version,
        "status was rewritten although nothing changed"
    );

    // Restart: the new process observes the instance again, finds it unchanged and writes
    // nothing.
    op.process.stop();
    let polls = observed();
    let op = Operator::start(&ns, addr, Some("key-quiet"), &[]).await;
    wait_until("the restarted operator observed a", WAIT, async || {
        (observed() > polls).then_some(())
    })
    .await;
    // It compared what it saw with the stored status and skipped the write.
    let metrics = wait_until("the restarted operator skipped a write", WAIT, async || {
        let m = http_get(op.http, "/metrics").await?.1;
        (metric_sum(&m, "ppio_status_writes_skipped_total") >= 1.0).then_some(m)
    })
    .await;
    assert_eq!(
        metric_sum(&metrics, "ppio_status_writes_total "),
        0.0,
        "the restarted operator wrote: {metrics}"
    );
    assert_eq!(
        rv(&api.get("a").await.expect("get")),
        version,
        "a restart rewrote the status"
    );
}

/// `ppio_instance_last_success_timestamp_seconds` of a PpioInstance, from the operator.
async fn last_success(op: &Operator, ns: &str, name: &str) -> f64 {
    let text = http_get(op.http, "/metrics").await.expect("metrics").1;
    let series = format!(
        "ppio_instance_last_success_timestamp_seconds{{namespace=\"{ns}\",name=\"{name}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[ppio_test_macros::test]
async fn every_fault_has_its_reason_keeps_data_and_clears() {
    let client = client().await;
    let ns = namespace(&client, "faults").await;
    let (sim, addr) = simulator(&["key-faults"]).await;
    let mut op = Operator::start(
        &ns,
        addr,
        Some("key-faults"),
        // Each fault is set on one instance: only a GET meets it (sweeps meet the faults set
        // for the LIST, see the retry_after and fallback tests).
        &["--ppio-request-timeout", "2s", "--ppio-observe", "get"],
    )
    .await;
    let api: Api<PpioInstance> = Api::namespaced(client, &ns);
    let sample = Simulator::samples().remove(0);
    let f = |status: Option<u16>| status.map(Fault::status).unwrap_or_default();
    let body = Fault::body;
    let cases: Vec<(&str, Fault, &str)> = vec![
        ("f401", f(Some(401)), "Unauthorized"),
        ("f403", f(Some(403)), "Forbidden"),
        ("f404", f(Some(404)), "InstanceNotFound"),
        (
            "f400nf",
            Fault::status(400).with_reason("RESOURCE_NOT_FOUND"),
            "InstanceNotFound",
        ),
        (
            "f429",
            Fault::status(429).with_retry_after("5"),
            "RateLimited",
        ),
        ("f500", f(Some(500)), "ApiUnavailable"),
        ("f503", f(Some(503)), "ApiUnavailable"),
        (
            "fslow",
            Fault::latency(Duration::from_secs(3)),
            "ApiUnavailable",
        ),
        ("fmalformed", body(BodyFault::Malformed), "InvalidResponse"),
        ("ftruncated", body(BodyFault::Truncated), "InvalidResponse"),
        ("foversized", body(BodyFault::Oversized), "InvalidResponse"),
        ("fstrings", body(BodyFault::NumbersAsStrings), "Observed"),
        // A proxy's HTML 404 is an outage, not a gone instance.
        ("fhtml404", body(BodyFault::HtmlNotFound), "ApiUnavailable"),
        // Under the response cap, far over what a status holds.
        ("famplify", body(BodyFault::Amplifying), "InvalidResponse"),
        // Retry-After: 0 backs off like any error, it does not retry at once.
        (
            "fretry0",
            Fault::status(429).with_retry_after("0"),
            "RateLimited",
        ),
    ];
    // A Secret per 429 case keeps its key's pause to itself.
    sim.set_keys(vec![
        "key-faults".into(),
        "key-429".into(),
        "key-retry0".into(),
    ]);
    for (id, _, _) in &cases {
        sim.put_instance(id, sample.clone());
        let own_key = match *id {
            "f429" => Some("key-429"),
            "fretry0" => Some("key-retry0"),
            _ => None,
        };
        let spec = match own_key {
            Some(key) => {
                secret(&api_client(&api), &ns, key, "apiKey", key).await;
                format!(
                    "instanceId: {id}\nrefreshInterval: 10s\ncredentialsSecretRef:\n  name: {key}"
                )
            }
            None => format!("instanceId: {id}\nrefreshInterval: 10s"),
        };
        apply_instance(&ns, id, &spec);
    }
    let mut good = std::collections::BTreeMap::new();
    for (id, _, _) in &cases {
        let o = wait_for(&api, id, "observed", |o| {
            has(o, "Synced", "True", "Observed")
        })
        .await;
        good.insert(id.to_string(), o.status.expect("status"));
    }
    for (id, fault, _) in &cases {
        sim.set_fault(id, fault.clone());
    }
    // Counted once the faults are set: every GET counted later meets its fault.
    let at_fault: std::collections::BTreeMap<&str, u64> = cases
        .iter()
        .map(|(id, _, _)| (*id, sim.requests_for(id)))
        .collect();
    let mut failed = std::collections::BTreeMap::new();
    for (id, _, reason) in &cases {
        let o = if *reason == "Observed" {
            // Numbers as strings are read the same: after two GETs that met the fault (the
            // first one's write, had there been one, comes before the second GET) the status
            // stays exactly as it was.
            wait_until(
                &format!("{id} fetched twice with its fault"),
                WAIT,
                async || (sim.requests_for(id) >= at_fault[id] + 2).then_some(()),
            )
            .await;
            api.get(id).await.expect("get")
        } else {
            wait_for(&api, id, reason, |o| has(o, "Synced", "False", reason)).await
        };
        let s = o.status.clone().expect("status");
        let g = &good[*id];
        assert_eq!(s.region, g.region, "{id}: last good data kept");
        assert_eq!(s.endpoints, g.endpoints, "{id}: last good data kept");
        assert_eq!(s.pricing, g.pricing, "{id}: last good data kept");
        if *reason == "InstanceNotFound" {
            assert_eq!(s.state.as_deref(), Some("NotFound"), "{id}");
            assert!(has(&o, "Ready", "False", "InstanceNotFound"), "{id}");
        } else {
            assert_eq!(s.state, g.state, "{id}");
            assert!(
                has(&o, "Ready", "True", "Running"),
                "{id}: Ready keeps its last value"
            );
        }
        failed.insert(id.to_string(), (rv(&o), sim.requests_for(id)));
    }
    op.assert_running();
    // The identical failures repeat (backoff 5s, 10s, ...): requests, but no writes. Once each
    // failing instance was polled twice more (the first repeat's write, had there been one,
    // comes before the second), none was rewritten, and none was polled in a loop: the
    // slowest to fail twice more took two backoffs, in which a backed-off instance is polled
    // a few times, not ten.
    let polling: Vec<&str> = cases
        .iter()
        .filter(|(_, _, reason)| *reason != "InstanceNotFound") // polled every 5 minutes
        .map(|(id, _, _)| *id)
        .collect();
    let repeated = wait_until(
        "every failing instance polled twice more",
        WAIT,
        async || {
            let now: std::collections::BTreeMap<&str, u64> = polling
                .iter()
                .map(|id| (*id, sim.requests_for(id)))
                .collect();
            now.iter()
                .all(|(id, n)| *n >= failed[*id].1 + 2)
                .then_some(now)
        },
    )
    .await;
    for id in &polling {
        let (version, requests) = &failed[*id];
        let again = repeated[id] - requests;
        assert!(
            again < 10,
            "{id}: polled {again} times while others were polled twice: no backoff"
        );
        assert_eq!(
            &rv(&api.get(id).await.expect("get")),
            version,
            "{id}: a repeated failure rewrote status"
        );
    }
    // Clear the faults: every instance recovers (gone ones on their slow poll are re-created
    // to be noticed sooner).
    for (id, _, _) in &cases {
        sim.clear_fault(id);
    }
    for (id, _, reason) in &cases {
        if *reason == "InstanceNotFound" {
            continue;
        }
        let o = wait_for(&api, id, "recovered", |o| {
            has(o, "Synced", "True", "Observed")
        })
        .await;
        assert_eq!(
            without_conditions(o.status.as_ref().expect("status")),
            without_conditions(&good[*id]),
            "{id}"
        );
    }
    op.assert_running();
}

fn api_client(api: &Api<PpioInstance>) -> kube::Client {
    api.clone().into_client()
}

#[ppio_test_macros::test]
async fn retry_after_stops_all_requests_with_that_key() {
    let client = client().await;
    let ns = namespace(&client, "ratelimit").await;
    // Every request and its answer are recorded with their times as they pass: what is
    // pinned below are those recorded facts, not when the test looked.
    let (sim, addr, requests) = simulator_recorded(Simulator::samples(), &["key-rl"]).await;
    let _op = Operator::start(&ns, addr, Some("key-rl"), &[]).await;
    let api: Api<PpioInstance> = Api::namespaced(client, &ns);
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    apply_instance(&ns, "b", "instanceId: b7e2c91d04\nrefreshInterval: 10s");
    for n in ["a", "b"] {
        wait_observed(&api, n).await;
    }
    // PPIO rate-limits the key: the walk over its LIST (and any GET) answers 429, asking for
    // 30 s. Once the operator shows it, PPIO would answer again.
    let retry_after = Duration::from_secs(30);
    sim.set_fault("*", Fault::status(429).with_retry_after("30"));
    wait_for(&api, "a", "RateLimited", |o| {
        has(o, "Synced", "False", "RateLimited")
    })
    .await;
    sim.clear_fault("*");
    // After the pause, polling resumes and the status recovers.
    wait_for(&api, "a", "recovered", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    let limited = requests
        .all()
        .into_iter()
        .find(|r| r.status == 429)
        .expect("a request answered 429")
        .answered;
    // b, in transition, is fetched again once the pause is over.
    wait_until("b fetched after the pause", WAIT, async || {
        requests
            .all()
            .iter()
            .any(|r| r.instance() == Some("b7e2c91d04") && r.status == 200 && r.sent > limited)
            .then_some(())
    })
    .await;
    // No request with the key went out within Retry-After of the first 429: each one sent
    // after it (and not already on its way, which met the 429 too) came 30 s after it or
    // later, by the times the proxy recorded (the operator had the 429 only after that).
    let all = requests.all();
    assert!(all.iter().all(|r| r.key.as_deref() == Some("key-rl")));
    let early: Vec<_> = all
        .iter()
        .filter(|r| r.sent > limited && r.status != 429 && r.sent < limited + retry_after)
        .map(|r| {
            format!(
                "{} {}?{} -> {}, sent {:?} after the first 429",
                r.method,
                r.path,
                r.query,
                r.status,
                r.sent - limited
            )
        })
        .collect();
    assert!(
        early.is_empty(),
        "requests with the paused key within its Retry-After: {early:#?}"
    );
    let resumed = all
        .iter()
        .filter(|r| r.sent > limited && r.status == 200)
        .count();
    assert!(resumed >= 2, "polling resumed after the pause");
}

#[ppio_test_macros::test]
async fn the_api_server_rejects_invalid_specs_naming_the_field() {
    let client = client().await;
    let ns = namespace(&client, "invalid").await;
    let cases = [
        ("instanceId: ../x", "spec.instanceId"),
        ("instanceId: a/b", "spec.instanceId"),
        ("instanceId: \"%2F\"", "spec.instanceId"),
        ("instanceId: \"\"", "spec.instanceId"),
        (
            &*format!("instanceId: {}", "x".repeat(256)),
            "spec.instanceId",
        ),
        (
            "instanceId: ok1\nrefreshInterval: 1s",
            "spec.refreshInterval",
        ),
        (
            "instanceId: ok2\nrefreshInterval: abc",
            "spec.refreshInterval",
        ),
        (
            "instanceId: ok3\nrefreshInterval: 25h",
            "spec.refreshInterval",
        ),
        (
            "instanceId: ok4\ncredentialsSecretRef:\n  name: Bad_Name",
            "spec.credentialsSecretRef.name",
        ),
    ];
    for (i, (spec, field)) in cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: bad-{i}\n  namespace: {ns}\nspec:\n{}",
            spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
        );
        let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {spec}");
        assert!(
            err.contains(field),
            "{spec}: error does not name {field}: {err}"
        );
    }
    apply_instance(&ns, "fixed", "instanceId: ca338f12f3");
    let out = kubectl(
        &[
            "patch",
            "ppioinstance",
            "fixed",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"instanceId":"other"}}"#,
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "instanceId changed");
    assert!(
        err.contains("spec.instanceId") && err.contains("immutable"),
        "{err}"
    );
}

#[ppio_test_macros::test]
async fn credentials_missing_then_created_and_rotated_without_restart() {
    let client = client().await;
    let ns = namespace(&client, "creds").await;
    let (_sim, addr) = simulator(&["key-right"]).await;
    let mut op = Operator::start(&ns, addr, None, &[]).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    apply_instance(
        &ns,
        "a",
        "instanceId: ca338f12f3\ncredentialsSecretRef:\n  name: ppio\n  key: token",
    );
    let o = wait_for(&api, "a", "CredentialsMissing", |o| {
        has(o, "Synced", "False", "CredentialsMissing")
    })
    .await;
    assert!(has(&o, "Ready", "Unknown", "NotObserved"));
    // The right key in a Secret without the credentials label is never used.
    unmarked_secret(&client, &ns, "ppio", "token", "key-right").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let o = api.get("a").await.expect("get");
    assert!(has(&o, "Synced", "False", "CredentialsMissing"), "{o:?}");
    assert!(
        o.status
            .as_ref()
            .and_then(|s| s.condition("Synced"))
            .is_some_and(|c| c.message.contains("gpus.ppio.com/credentials")),
        "{o:?}"
    );
    // A Secret is read again at most every 30s (or at once after a 401).
    secret(&client, &ns, "ppio", "token", "key-wrong").await;
    wait_for(&api, "a", "Unauthorized", |o| {
        has(o, "Synced", "False", "Unauthorized")
    })
    .await;
    // Rotated: polls of a refused key from a Secret come back within a minute and read the
    // Secret again on a 401.
    secret(&client, &ns, "ppio", "token", "key-right").await;
    wait_for(&api, "a", "Observed", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    // Without a Secret reference and without PPIO_API_KEY: CredentialsMissing too.
    apply_instance(&ns, "nokey", "instanceId: ca338f12f3");
    wait_for(&api, "nokey", "CredentialsMissing", |o| {
        has(o, "Synced", "False", "CredentialsMissing")
    })
    .await;
    op.assert_running();
}

#[ppio_test_macros::test]
async fn suspend_stops_polling_and_keeps_the_observation() {
    let Scene {
        ns,
        sim,
        op: _op,
        api,
        ..
    } = scene("suspend", "key-s", &[]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": true}})),
    )
    .await
    .expect("patch");
    let o = wait_for(&api, "a", "Suspended", |o| {
        has(o, "Synced", "False", "Suspended")
    })
    .await;
    assert_eq!(
        o.status.as_ref().and_then(|s| s.state.as_deref()),
        Some("running")
    );
    assert_eq!(
        o.status.as_ref().and_then(|s| s.observed_generation),
        o.metadata.generation
    );
    let n = sim.requests_for("ca338f12f3");
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        sim.requests_for("ca338f12f3"),
        n,
        "a suspended instance was polled"
    );
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("patch");
    wait_observed(&api, "a").await;
}

#[ppio_test_macros::test]
async fn no_secret_reaches_status_events_or_logs() {
    let client = client().await;
    let ns = namespace(&client, "leak").await;
    let markers = [
        "LEAKKEY-default",
        "LEAKKEY-secret",
        "sim-ssh-password",
        "sim-web-password",
        "sim-env-value",
        "sim-command-token",
    ];
    let (sim, addr) = simulator(&["LEAKKEY-default", "LEAKKEY-secret"]).await;
    let mut op = Operator::start(&ns, addr, Some("LEAKKEY-default"), &[]).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    secret(&client, &ns, "ppio", "apiKey", "LEAKKEY-secret").await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    apply_instance(
        &ns,
        "b",
        "instanceId: b7e2c91d04\nrefreshInterval: 10s\ncredentialsSecretRef:\n  name: ppio",
    );
    for n in ["a", "b"] {
        wait_observed(&api, n).await;
    }
    // Failures too: a rejected key and a server error (for every request: the LIST walks
    // meet it as well as GETs).
    sim.set_keys(vec!["LEAKKEY-secret".into()]);
    sim.set_fault("*", Fault::status(500));
    wait_for(&api, "a", "Unauthorized", |o| {
        has(o, "Synced", "False", "Unauthorized")
    })
    .await;
    wait_for(&api, "b", "ApiUnavailable", |o| {
        has(o, "Synced", "False", "ApiUnavailable")
    })
    .await;
    op.assert_running();

    let everything = [
        kubectl_ok(&["get", "ppioinstances", "-A", "-o", "yaml"], None),
        kubectl_ok(&["get", "events", "-A", "-o", "yaml"], None),
        kubectl_ok(
            &["get", "events.v1.events.k8s.io", "-A", "-o", "yaml"],
            None,
        ),
        op.log(),
    ];
    assert!(
        everything[0].contains("root@proxy"),
        "the scan saw the status"
    );
    assert!(
        everything[3].contains("instance state changed"),
        "the scan saw the log"
    );
    for m in markers {
        for (what, text) in ["status", "events", "events.k8s.io", "operator log"]
            .iter()
            .zip(&everything)
        {
            assert!(!text.contains(m), "{m} found in {what}");
        }
    }
}

#[ppio_test_macros::test]
async fn the_refresh_annotation_polls_now_and_is_acknowledged() {
    let Scene {
        ns,
        sim,
        op: _op,
        api,
        ..
    } = scene("refresh", "key-refresh", &[]).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 1h");
    let first = wait_fetched(&api, "a").await;
    assert_eq!(
        first
            .status
            .as_ref()
            .and_then(|s| s.last_handled_refresh.as_deref()),
        None
    );
    sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    let polls = sim.requests_for("ca338f12f3");
    kubectl_ok(
        &[
            "annotate",
            "ppioinstance",
            "a",
            "-n",
            &ns,
            "gpus.ppio.com/refresh=first",
            "--overwrite",
        ],
        None,
    );
    let o = wait_for(&api, "a", "refreshed", |o| {
        o.status
            .as_ref()
            .and_then(|s| s.last_handled_refresh.as_deref())
            == Some("first")
    })
    .await;
    // Polled on request, not at its interval (an hour): it saw the change, with one GET.
    assert_eq!(
        o.status.as_ref().and_then(|s| s.state.as_deref()),
        Some("exited"),
        "the poll saw the change an hour early"
    );
    assert_eq!(
        sim.requests_for("ca338f12f3"),
        polls + 1,
        "exactly one poll per request"
    );
    // The acknowledged request causes nothing more.
    let version = o.metadata.resource_version.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.requests_for("ca338f12f3"), polls + 1);
    assert_eq!(
        api.get("a").await.expect("get").metadata.resource_version,
        version
    );
}

#[ppio_test_macros::test]
async fn a_hostile_state_string_cannot_break_the_metrics_scrape() {
    // The hostile body is set on one instance's GET.
    let Scene {
        ns, sim, op, api, ..
    } = scene("hostile", "key-hostile", &["--ppio-observe", "get"]).await;
    sim.put_instance("h05t1le000", Simulator::samples().remove(0));
    sim.set_fault("h05t1le000", Fault::body(BodyFault::HostileState));
    apply_instance(&ns, "h", "instanceId: h05t1le000");
    let o = wait_observed(&api, "h").await;
    let s = o.status.expect("status");
    // Control characters are gone from status; the text is otherwise shown as PPIO sent it.
    assert_eq!(
        s.state.as_deref(),
        Some("run\"ning\"}ppio_injected{x=\"1\"} 1# EOF")
    );
    assert_eq!(s.name.as_deref(), Some("[2J[31mpwned"));
    let (code, text) = http_get(op.http, "/metrics").await.expect("scrape");
    assert_eq!(code, 200);
    let sample = regex::Regex::new(
        r#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? -?[0-9.e+-]+$"#,
    )
    .expect("regex");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the scrape ends once, at the end"
    );
    for line in &lines {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE ") || *line == "# EOF",
                "{line}"
            );
            continue;
        }
        assert!(sample.is_match(line), "not a sample line: {line:?}");
        assert!(
            !line.starts_with("ppio_injected"),
            "injected series: {line}"
        );
    }
    assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1);
    assert!(
        text.contains(&format!("namespace=\"{ns}\",name=\"h\"")),
        "the instance's series are there"
    );
}

/// Sums a metric's samples whose line starts with `prefix` (a name and, optionally, labels).
fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[ppio_test_macros::test]
async fn sweeps_observe_by_pages_and_fetch_each_instance_in_full_once() {
    let Scene {
        ns, sim, op, api, ..
    } = scene("sweeps", "key-sweeps", &["--ppio-list-page-size", "10"]).await;
    let sample = Simulator::samples().remove(0);
    let names: Vec<String> = (0..30).map(|i| format!("sw{i:02}")).collect();
    for name in &names {
        sim.put_instance(name, sample.clone());
    }
    sim.reset_counts();
    let manifest: String = names
        .iter()
        .map(|n| {
            format!(
                "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: {n}\n  namespace: {ns}\nspec:\n  instanceId: {n}\n---\n"
            )
        })
        .collect();
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    for name in &names {
        wait_observed(&api, name).await;
    }
    for name in &names {
        wait_fetched(&api, name).await;
    }
    // Every state came from the key's LIST (pages of 10), and each instance was fetched in
    // full by a GET; over three more walks (4 pages each: 33 instances) LIST pages follow,
    // and GETs only for the full refresh, which spreads each instance's next one over 30
    // intervals: about three of them in three walks. (How fast 30 new PpioInstances are
    // observed is a benchmark's figure, not pinned here.)
    let counts = sim.counts();
    assert!(counts.list >= 3, "{counts:?}");
    let gets = || names.iter().map(|n| sim.requests_for(n)).sum::<u64>();
    for name in &names {
        assert!(sim.requests_for(name) >= 1, "{name}: {counts:?}");
    }
    let fetched = gets();
    assert!(fetched <= 30 + 5, "{fetched} GETs to fetch 30 instances");
    let before = sim.counts();
    // Pages and GETs read together, the moment three walks' pages are in.
    let (pages, again) = wait_until("three more walks", WAIT, async || {
        let pages = sim.counts().list - before.list;
        let again = gets() - fetched;
        (pages >= 3 * 4).then_some((pages, again))
    })
    .await;
    assert!(
        again <= 10,
        "{again} GETs of 30 unchanged instances in {pages} LIST pages"
    );
    let metrics = http_get(op.http, "/metrics").await.expect("metrics").1;
    assert!(
        metric_sum(
            &metrics,
            "ppio_api_requests_total{endpoint=\"list_instances\",class=\"2xx\"}"
        ) >= 3.0,
        "{metrics}"
    );
}

#[ppio_test_macros::test]
async fn a_list_that_is_not_served_falls_back_to_one_get_per_instance() {
    let Scene {
        ns, sim, op, api, ..
    } = scene("fallback", "key-fallback", &[]).await;
    // A proxy in front of PPIO serves only the GET: its LIST answers an HTML 404.
    sim.set_fault(
        ppio_operator::simulator::LIST_FAULT,
        Fault::body(BodyFault::HtmlNotFound),
    );
    sim.reset_counts();
    apply_instance(&ns, "a", "instanceId: ca338f12f3");
    apply_instance(&ns, "b", "instanceId: b7e2c91d04");
    for name in ["a", "b"] {
        wait_fetched(&api, name).await;
    }
    // Each is fetched by GETs, at every interval; the LIST was asked once.
    wait_until("each instance fetched three times", WAIT, async || {
        ["ca338f12f3", "b7e2c91d04"]
            .iter()
            .all(|id| sim.requests_for(id) >= 3)
            .then_some(())
    })
    .await;
    let counts = sim.counts();
    assert_eq!(counts.list, 1, "LIST asked once: {counts:?}");
    let said = op
        .log()
        .lines()
        .filter(|l| l.contains("the PPIO LIST call is not available"))
        .count();
    assert_eq!(said, 1, "{}", op.log());
    let metrics = http_get(op.http, "/metrics").await.expect("metrics").1;
    assert_eq!(
        metric_sum(&metrics, "ppio_api_list_unavailable{"),
        1.0,
        "{metrics}"
    );
    for name in ["a", "b"] {
        assert!(has(
            &api.get(name).await.expect("get"),
            "Synced",
            "True",
            "Observed"
        ));
    }
}

#[ppio_test_macros::test]
async fn a_later_list_page_that_fails_and_lean_items_change_nothing() {
    let Scene {
        ns, sim, op, api, ..
    } = scene(
        "listfaults",
        "key-listfaults",
        &[
            "--ppio-list-page-size",
            "10",
            "--ppio-full-refresh-intervals",
            "1",
        ],
    )
    .await;
    let sample = Simulator::samples().remove(0);
    let names: Vec<String> = (0..25).map(|i| format!("lf{i:02}")).collect();
    for name in &names {
        sim.put_instance(name, sample.clone());
    }
    // Page 2 on answers an expired cursor (400 RESOURCE_NOT_FOUND), and the items that do
    // come lack two fields the GET has.
    let mut fault = Fault::status(400)
        .with_reason("RESOURCE_NOT_FOUND")
        .from_page(2);
    fault.lean_fields = vec!["/billing/prepaid".into(), "/network".into()];
    sim.set_fault(ppio_operator::simulator::LIST_FAULT, fault);
    let manifest: String = names
        .iter()
        .map(|n| {
            format!(
                "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: {n}\n  namespace: {ns}\nspec:\n  instanceId: {n}\n  refreshInterval: 10s\n---\n"
            )
        })
        .collect();
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    for name in &names {
        wait_fetched(&api, name).await;
    }
    // Some walks and full refreshes later (every 10 s), nothing was written: no instance is
    // gone, and no field came and went.
    let before: Vec<String> = {
        let mut v = Vec::new();
        for name in &names {
            v.push(rv(&api.get(name).await.expect("get")));
        }
        v
    };
    let lists = sim.counts().list;
    wait_until("three more walks", WAIT, async || {
        (sim.counts().list >= lists + 6).then_some(())
    })
    .await;
    for (name, was) in names.iter().zip(&before) {
        let now = api.get(name).await.expect("get");
        assert_eq!(&rv(&now), was, "{name} written at rest");
        let status = now.status.expect("status");
        assert_eq!(status.state.as_deref(), Some("running"), "{name}");
        assert!(status.network.is_some(), "{name} lost its network");
        assert!(
            status.billing.and_then(|b| b.prepaid).is_some(),
            "{name} lost its prepaid term"
        );
    }
    let said = op
        .log()
        .lines()
        .filter(|l| l.contains("walks over the PPIO LIST fail"))
        .count();
    assert_eq!(said, 1, "{}", op.log());
    let events = kubectl_ok(
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "type=Warning",
            "-o",
            "name",
        ],
        None,
    );
    assert!(events.trim().is_empty(), "no Warning Event: {events}");
}
