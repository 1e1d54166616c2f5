//! Health as GitOps tools read it, with the real evaluators: kstatus from
//! sigs.k8s.io/cli-utils (what Flux's `wait` uses), the Argo CD health script this project
//! publishes run by gopher-lua (the interpreter Argo CD embeds), and the Flux
//! `healthCheckExprs` this project publishes evaluated by CEL as Flux does. The evaluators are
//! the `ppio-health` program built by tools/build.sh (tools/health); the objects come from the
//! real API server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;
use ppio_operator::simulator::Fault;
use serde::Deserialize;
use serde_json::Value;

const KEY: &str = "key-gitops";
/// What plain kstatus says of a stopped instance (Ready=False): still in progress.
const KSTATUS_EXITED: &str = "InProgress";
/// What plain kstatus says of a suspended one.
const KSTATUS_SUSPENDED: &str = "InProgress";

/// What the three evaluators say of one object.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    name: String,
    kstatus: String,
    kstatus_message: String,
    argo: String,
    argo_message: String,
    flux: String,
}

/// Runs `ppio-health` over `kubectl get ppioinstances -o json` of a namespace.
fn evaluate(ns: &str) -> BTreeMap<String, Health> {
    let list = kubectl_ok(&["get", "ppioinstances", "-n", ns, "-o", "json"], None);
    let repo = Path::new(REPO);
    let mut child = Command::new(tools_dir().join("ppio-health"))
        .arg("--argo-script")
        .arg(repo.join("charts/ppio-operator/health/argocd-health.lua"))
        .arg("--flux-exprs")
        .arg(repo.join("charts/ppio-operator/health/flux-health-check.yaml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ppio-health runs (built by tools/build.sh)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(list.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("ppio-health finishes");
    assert!(
        out.status.success(),
        "ppio-health failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let h: Health = serde_json::from_str(l).expect("a JSON line per object");
            (h.name.clone(), h)
        })
        .collect()
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_and_argo_read_every_row_of_the_health_table() {
    // One instance fails while the others answer: a fault only a GET meets.
    let Scene {
        client,
        ns,
        sim,
        api,
        op: _op,
        ..
    } = scene("gitops", KEY, &["--ppio-observe", "get"]).await;
    // A copy of the running sample that will fail with 503 for as long as the test looks.
    let mut failing: Value =
        serde_json::from_str(include_str!("../fixtures/get-instance.json")).expect("fixture");
    failing["status"]["status"] = Value::from("running");
    sim.put_instance("fa11ing503", failing);

    apply_instance(&ns, "running", "instanceId: ca338f12f3");
    apply_instance(&ns, "starting", "instanceId: b7e2c91d04");
    apply_instance(&ns, "exited", "instanceId: c0ffee1234");
    apply_instance(&ns, "gone", "instanceId: d00000dead");
    apply_instance(&ns, "failing", "instanceId: fa11ing503");
    apply_instance(&ns, "suspended", "instanceId: ca338f12f3\nsuspend: true");
    for name in ["running", "starting", "exited", "failing"] {
        wait_observed(&api, name).await;
    }
    wait_for(&api, "gone", "Stalled", |o| {
        has(o, "Stalled", "True", "InstanceNotFound")
    })
    .await;
    wait_for(&api, "suspended", "suspended", |o| {
        has(o, "Synced", "False", "Suspended")
    })
    .await;
    sim.set_fault("fa11ing503", Fault::status(503));
    wait_for(&api, "failing", "retrying", |o| {
        has(o, "Reconciling", "True", "ApiUnavailable")
    })
    .await;

    // Never observed: an object no operator watches.
    let quiet = namespace(&client, "gitops-unwatched").await;
    apply_instance(&quiet, "never-observed", "instanceId: ca338f12f3");
    // The status the operator writes from a LIST item alone (a bulk apply), before the
    // instance's first GET: written here as the operator computes it.
    apply_instance(&quiet, "fetching-details", "instanceId: ca338f12f3");
    let mut item: Value =
        serde_json::from_str(include_str!("../fixtures/get-instance.json")).expect("fixture");
    for field in ["tools", "pricing"] {
        item.as_object_mut().expect("object").remove(field);
    }
    let item =
        ppio_operator::ppio::Instance::from_slice(item.to_string().as_bytes()).expect("an item");
    let listed = ppio_operator::status::compute_status(
        "ca338f12f3",
        Some(1),
        None,
        ppio_operator::status::Observation::ListedFirst(&item),
        None,
        jiff::Timestamp::now(),
    );
    assert!(has_condition(
        &listed,
        "Reconciling",
        "True",
        "FetchingDetails"
    ));
    kubectl_ok(
        &[
            "patch",
            "ppioinstance",
            "fetching-details",
            "-n",
            &quiet,
            "--subresource=status",
            "--type=merge",
            "-p",
            &serde_json::json!({ "status": listed }).to_string(),
        ],
        None,
    );

    let h = evaluate(&ns);
    let row = |name: &str| -> (&str, &str, &str) {
        let x = h
            .get(name)
            .unwrap_or_else(|| panic!("{name} evaluated: {h:?}"));
        (x.kstatus.as_str(), x.argo.as_str(), x.flux.as_str())
    };
    assert_eq!(row("running"), ("Current", "Healthy", "Current"));
    assert_eq!(row("starting"), ("InProgress", "Progressing", "InProgress"));
    // A stopped instance is fine for Argo CD (Suspended) and for Flux's expressions; plain
    // kstatus reads Ready=False as still in progress.
    assert_eq!(row("exited"), (KSTATUS_EXITED, "Suspended", "Current"));
    let gone = row("gone");
    assert_eq!(gone.0, "Failed");
    assert!(matches!(gone.1, "Degraded" | "Missing"), "{gone:?}");
    assert_eq!(gone.2, "Failed");
    assert!(
        h["gone"].argo_message.contains("does not exist"),
        "{:?}",
        h["gone"]
    );
    assert!(!h["gone"].kstatus_message.is_empty());
    // A failing mirror is never current.
    assert_eq!(row("failing"), ("InProgress", "Degraded", "InProgress"));
    assert!(
        h["failing"].argo_message.contains("HTTP 503"),
        "{:?}",
        h["failing"]
    );
    assert_eq!(
        row("suspended"),
        (KSTATUS_SUSPENDED, "Suspended", "Current")
    );

    let unwatched = evaluate(&quiet);
    assert_eq!(
        (
            unwatched["never-observed"].kstatus.as_str(),
            unwatched["never-observed"].argo.as_str(),
            unwatched["never-observed"].flux.as_str()
        ),
        ("InProgress", "Progressing", "InProgress")
    );
    // Observed from a LIST item, details to come: not done yet for any of them.
    let fetching = &unwatched["fetching-details"];
    assert_eq!(
        (
            fetching.kstatus.as_str(),
            fetching.argo.as_str(),
            fetching.flux.as_str()
        ),
        ("InProgress", "Progressing", "InProgress")
    );
}

fn has_condition(
    status: &ppio_operator::crd::PpioInstanceStatus,
    type_: &str,
    st: &str,
    reason: &str,
) -> bool {
    status
        .condition(type_)
        .is_some_and(|c| c.status == st && c.reason == reason)
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_expect_reads_healthy_when_it_holds_and_failed_when_the_instance_drifts() {
    let Scene {
        ns, api, op: _op, ..
    } = scene("gitops-expect", KEY, &[]).await;
    let with = |id: &str, state: &str, grace: &str| {
        format!("instanceId: {id}\nexpect:\n  state: {state}\n  gracePeriod: {grace}")
    };
    // The samples: ca338f12f3 runs, c0ffee1234 is exited.
    apply_instance(&ns, "expect-running", &with("ca338f12f3", "running", "10m"));
    apply_instance(&ns, "parked", &with("c0ffee1234", "exited", "10m"));
    apply_instance(&ns, "drifted", &with("c0ffee1234", "running", "2s"));
    apply_instance(&ns, "within-grace", &with("c0ffee1234", "running", "1h"));
    apply_instance(&ns, "gone", &with("d00000dead", "running", "10m"));
    for name in ["expect-running", "parked", "within-grace"] {
        wait_observed(&api, name).await;
    }
    wait_for(&api, "parked", "ready as expected", |o| {
        has(o, "Ready", "True", "ExpectedState")
    })
    .await;
    wait_for(
        &api,
        "within-grace",
        "waiting for the expected state",
        |o| has(o, "Reconciling", "True", "AwaitingExpectedState"),
    )
    .await;
    // Past its 2 s grace period with no new observation needed: the operator looks again
    // when the grace period ends.
    wait_for(&api, "drifted", "drift", |o| {
        has(o, "Stalled", "True", "UnexpectedState")
    })
    .await;
    wait_for(&api, "gone", "gone", |o| {
        has(o, "Stalled", "True", "InstanceNotFound")
    })
    .await;

    let h = evaluate(&ns);
    let row = |name: &str| -> (&str, &str, &str) {
        let x = h
            .get(name)
            .unwrap_or_else(|| panic!("{name} evaluated: {h:?}"));
        (x.kstatus.as_str(), x.argo.as_str(), x.flux.as_str())
    };
    assert_eq!(row("expect-running"), ("Current", "Healthy", "Current"));
    // Parked on purpose: healthy for all three (plain kstatus too, as Ready is True).
    assert_eq!(row("parked"), ("Current", "Healthy", "Current"));
    assert_eq!(row("drifted"), ("Failed", "Degraded", "Failed"));
    assert!(
        h["drifted"].argo_message.contains("UnexpectedState"),
        "{:?}",
        h["drifted"]
    );
    assert_eq!(
        row("within-grace"),
        ("InProgress", "Progressing", "InProgress")
    );
    let gone = row("gone");
    assert_eq!((gone.0, gone.2), ("Failed", "Failed"));
    assert!(matches!(gone.1, "Degraded" | "Missing"), "{gone:?}");

    // The drift is told once, as a Warning Event.
    let events = warning_event_objects(&ns, "UnexpectedState").await;
    assert_eq!(events.trim(), "drifted");
}
