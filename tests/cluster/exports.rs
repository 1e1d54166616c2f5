//! Exports end to end: the real API server, kubectl, the simulator and the operator as its own
//! process. A PpioInstance asks for a connection Secret and a Service; what a workload in the
//! namespace finds (the Secret's keys, the Service and its EndpointSlice), how they follow the
//! instance, that nothing is written at rest, that another's object is never touched, and that
//! the passwords go nowhere else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::support::*;
use ppio_operator::crd::PpioInstance;

const EXPORTS_ON: &[&str] = &[
    "--export-connection-secrets=true",
    "--export-services=true",
    "--export-deny-cidrs=10.96.0.0/12",
];

/// The operator's `ppio_export_writes_total`, summed over kinds and operations.
async fn export_writes(op: &Operator) -> u64 {
    let (_, text) = http_get(op.http, "/metrics").await.expect("/metrics");
    text.lines()
        .filter(|l| l.starts_with("ppio_export_writes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Whether `meta` has an ownerReference with `controller: true` to `owner`.
fn owned_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner: &PpioInstance,
) -> bool {
    meta.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == owner.meta().uid.as_ref()
            && o.controller == Some(true)
            && o.kind == "PpioInstance"
            && o.name == owner.name_any()
    })
}

fn secret_text(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The (ready, addresses, ports) of an EndpointSlice.
fn slice_view(s: &EndpointSlice) -> (Option<bool>, Vec<String>, Vec<(String, i32)>) {
    let e = s.endpoints.iter().flatten().next();
    (
        e.and_then(|e| e.conditions.as_ref()?.ready),
        e.map(|e| e.addresses.clone()).unwrap_or_default(),
        s.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// Waits until the PpioInstance's `Exported` condition has this status and reason; its
/// message.
async fn exported(api: &Api<PpioInstance>, name: &str, status: &str, reason: &str) -> String {
    let obj = wait_for(api, name, &format!("Exported={status} {reason}"), |o| {
        has(o, "Exported", status, reason)
    })
    .await;
    obj.status
        .as_ref()
        .and_then(|s| s.condition("Exported"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

async fn wait_slice(
    slices: &Api<EndpointSlice>,
    name: &str,
    what: &str,
    check: impl Fn(&EndpointSlice) -> bool,
) -> EndpointSlice {
    wait_until(&format!("EndpointSlice {name}: {what}"), WAIT, async || {
        slices
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .filter(|s| check(s))
    })
    .await
}

#[ppio_test_macros::test]
async fn the_connection_secret_and_the_service_follow_the_instance_and_are_written_on_change_only()
{
    let Scene {
        client,
        ns,
        sim,
        op,
        api,
        ..
    } = scene("exports", "key-exports", EXPORTS_ON).await;
    apply_instance(
        &ns,
        "trainer-a",
        "instanceId: ca338f12f3\nrefreshInterval: 10s\nconnectionSecret:\n  name: trainer-a-connection\nservice: {}",
    );
    let obj = wait_for(&api, "trainer-a", "Exported=True", |o| {
        has(o, "Exported", "True", "Exported")
    })
    .await;

    // The connection Secret: the contract's keys, owned and labelled.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = secrets.get("trainer-a-connection").await.expect("Secret");
    assert!(owned_by(&secret.metadata, &obj), "{:?}", secret.metadata);
    assert_eq!(
        secret
            .labels()
            .get("gpus.ppio.com/instance")
            .map(String::as_str),
        Some("trainer-a")
    );
    let data = secret_text(&secret);
    let expected: BTreeMap<String, String> = [
        (
            "ssh-command",
            "ssh -p 51039 root@proxy.cn-south-nas-1.gpu-instance.ppinfra.com",
        ),
        ("ssh-host", "proxy.cn-south-nas-1.gpu-instance.ppinfra.com"),
        ("ssh-port", "51039"),
        ("ssh-username", "xxx"),
        ("ssh-password", "sim-ssh-password-a"),
        (
            "web-terminal-endpoint",
            "wss://terminal.example.com/instance/ca338f12f3",
        ),
        ("web-terminal-username", "root"),
        ("web-terminal-password", "sim-web-password-a"),
        (
            "jupyter-endpoint",
            "https://jupyter.example.com/instance/ca338f12f3",
        ),
        ("port-8080-endpoint", "http://1.2.3.4:8080"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(data, expected);

    // The Service: no selector, the instance's port; its EndpointSlice: the endpoint's
    // address and port, ready while the instance runs.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service = services.get("trainer-a").await.expect("Service");
    assert!(owned_by(&service.metadata, &obj));
    let spec = service.spec.clone().expect("spec");
    assert_eq!(spec.selector, None);
    let ports: Vec<(Option<String>, i32)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.port))
        .collect();
    assert_eq!(ports, [(Some("port-8080".to_string()), 8080)]);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let slice = slices.get("trainer-a").await.expect("EndpointSlice");
    assert!(owned_by(&slice.metadata, &obj));
    assert_eq!(
        slice
            .labels()
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("ppio-operator.gpus.ppio.com")
    );
    assert_eq!(
        slice
            .labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str),
        Some("trainer-a")
    );
    assert_eq!(
        slice_view(&slice),
        (
            Some(true),
            vec!["1.2.3.4".to_string()],
            vec![("port-8080".to_string(), 8080)]
        )
    );

    // At rest: polls and GETs go on, nothing is written (metric and resourceVersions).
    let writes = export_writes(&op).await;
    assert_eq!(
        writes, 3,
        "a Secret, a Service and an EndpointSlice, each once"
    );
    let versions = (
        secret.resource_version(),
        service.resource_version(),
        slice.resource_version(),
    );
    let polled = observations(&sim, "ca338f12f3");
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    assert!(
        observations(&sim, "ca338f12f3") > polled,
        "the instance was observed meanwhile"
    );
    assert_eq!(
        export_writes(&op).await,
        writes,
        "an export was written at rest"
    );
    assert_eq!(
        (
            secrets
                .get("trainer-a-connection")
                .await
                .expect("Secret")
                .resource_version(),
            services
                .get("trainer-a")
                .await
                .expect("Service")
                .resource_version(),
            slices
                .get("trainer-a")
                .await
                .expect("slice")
                .resource_version(),
        ),
        versions
    );

    // running -> exited: endpoints not ready; -> running: ready again.
    assert!(sim.patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}})));
    wait_slice(&slices, "trainer-a", "not ready", |s| {
        slice_view(s).0 == Some(false)
    })
    .await;
    assert!(sim.patch_instance("ca338f12f3", &json!({"status": {"status": "running"}})));
    wait_slice(&slices, "trainer-a", "ready", |s| {
        slice_view(s).0 == Some(true)
    })
    .await;

    // A new password and a new port reach the Secret (at the next GET).
    assert!(sim.patch_instance(
        "ca338f12f3",
        &json!({
            "tools": {"ssh": {"password": "sim-ssh-password-rotated"}},
            "ports": [
                {"port": 8080, "protocol": "tcp", "endpoint": "http://1.2.3.4:8080"},
                {"port": 9000, "protocol": "tcp", "endpoint": "http://1.2.3.5:39000"}
            ]
        })
    ));
    kubectl_ok(
        &[
            "annotate",
            "-n",
            &ns,
            "ppioinstance/trainer-a",
            "gpus.ppio.com/refresh=1",
            "--overwrite",
        ],
        None,
    );
    wait_until("the rotated password in the Secret", WAIT, async || {
        let s = secrets.get("trainer-a-connection").await.ok()?;
        let d = secret_text(&s);
        (d.get("ssh-password").map(String::as_str) == Some("sim-ssh-password-rotated")
            && d.get("port-9000-endpoint").map(String::as_str) == Some("http://1.2.3.5:39000"))
        .then_some(())
    })
    .await;
    // One slice per address.
    let second = wait_slice(&slices, "trainer-a-2", "the second address", |_| true).await;
    assert_eq!(
        slice_view(&second),
        (
            Some(true),
            vec!["1.2.3.5".to_string()],
            vec![("port-9000".to_string(), 39000)]
        )
    );

    // Addresses the operator does not publish: a loopback one, a denied range, a hostname.
    assert!(sim.patch_instance(
        "ca338f12f3",
        &json!({"ports": [
            {"port": 8080, "protocol": "tcp", "endpoint": "http://1.2.3.4:8080"},
            {"port": 22, "protocol": "tcp", "endpoint": "127.0.0.1:22"},
            {"port": 443, "protocol": "tcp", "endpoint": "https://10.100.0.1:443"},
            {"port": 80, "protocol": "tcp", "endpoint": "http://node.example.com:80"}
        ]})
    ));
    let message = exported(&api, "trainer-a", "False", "AddressRefused").await;
    for part in [
        "127.0.0.1 is a loopback address",
        "10.96.0.0/12",
        "is a hostname",
    ] {
        assert!(message.contains(part), "{part} in {message}");
    }
    assert!(
        warning_event_objects(&ns, "AddressRefused")
            .await
            .contains("trainer-a")
    );
    // The second address is gone: its slice with it; the first stays published.
    wait_until("the second slice deleted", WAIT, async || {
        slices
            .get_opt("trainer-a-2")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let service = services.get("trainer-a").await.expect("Service");
    let names: Vec<String> = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(names, ["port-8080"]);

    // The passwords are in the Secret and nowhere else: status, Events, the operator's log,
    // its metrics.
    let status =
        serde_json::to_string(&api.get("trainer-a").await.expect("get").status).expect("json");
    let events = kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"], None);
    let log = op.log();
    let (_, metrics) = http_get(op.http, "/metrics").await.expect("/metrics");
    for password in ["sim-ssh-password", "sim-web-password"] {
        assert!(!metrics.contains(password), "{password} in a metric");
        assert!(!status.contains(password), "{password} in status");
        assert!(!events.contains(password), "{password} in an Event");
        assert!(!log.contains(password), "{password} in the log");
    }

    // No longer asked for: the Service and its slices go; the Secret stays.
    api.patch(
        "trainer-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"service": null}})),
    )
    .await
    .expect("patch");
    wait_until("the Service deleted", WAIT, async || {
        (services.get_opt("trainer-a").await.ok()?.is_none()
            && slices.get_opt("trainer-a").await.ok()?.is_none())
        .then_some(())
    })
    .await;
    exported(&api, "trainer-a", "True", "Exported").await;
    assert!(
        secrets
            .get_opt("trainer-a-connection")
            .await
            .expect("get")
            .is_some()
    );
}

#[ppio_test_macros::test]
async fn an_object_of_that_name_that_is_not_ours_is_never_touched() {
    let Scene {
        client,
        ns,
        api,
        op: _op,
        sim: _sim,
        ..
    } = scene("export-conflict", "key-conflict", EXPORTS_ON).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let theirs: Secret = serde_json::from_value(json!({
        "metadata": {"name": "taken"},
        "stringData": {"password": "theirs"}
    }))
    .expect("secret");
    let theirs = secrets
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create");
    let their_service: Service = serde_json::from_value(json!({
        "metadata": {"name": "taken-svc"},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}
    }))
    .expect("service");
    let their_service = services
        .create(&PostParams::default(), &their_service)
        .await
        .expect("create");

    apply_instance(
        &ns,
        "a",
        "instanceId: ca338f12f3\nrefreshInterval: 10s\nconnectionSecret:\n  name: taken",
    );
    apply_instance(
        &ns,
        "b",
        "instanceId: ca338f12f3\nrefreshInterval: 10s\nservice:\n  name: taken-svc",
    );
    exported(&api, "a", "False", "SecretConflict").await;
    exported(&api, "b", "False", "ServiceConflict").await;
    assert!(
        warning_event_objects(&ns, "SecretConflict")
            .await
            .contains('a')
    );
    assert!(
        warning_event_objects(&ns, "ServiceConflict")
            .await
            .contains('b')
    );
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert_eq!(
        secrets.get("taken").await.expect("get").resource_version(),
        theirs.resource_version(),
        "their Secret was written"
    );
    assert_eq!(
        services
            .get("taken-svc")
            .await
            .expect("get")
            .resource_version(),
        their_service.resource_version(),
        "their Service was written"
    );
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    assert!(slices.get_opt("taken-svc").await.expect("get").is_none());

    // Their Service deleted: the name is free, the export is written at the next poll.
    services
        .delete("taken-svc", &DeleteParams::default())
        .await
        .expect("delete");
    exported(&api, "b", "True", "Exported").await;
    assert!(slices.get_opt("taken-svc").await.expect("get").is_some());
}

#[ppio_test_macros::test]
async fn without_the_export_flags_a_request_reads_exports_disabled_and_nothing_is_written() {
    let Scene {
        client,
        ns,
        api,
        op: _op,
        sim: _sim,
        ..
    } = scene("export-off", "key-off", &[]).await;
    apply_instance(
        &ns,
        "a",
        "instanceId: ca338f12f3\nrefreshInterval: 10s\nconnectionSecret:\n  name: a-conn\nservice: {}",
    );
    let message = exported(&api, "a", "False", "ExportsDisabled").await;
    let obj = api.get("a").await.expect("get");
    assert!(
        message.contains("exports.connectionSecrets.enabled"),
        "{message}"
    );
    assert!(
        has(&obj, "Ready", "True", "Running"),
        "the observation goes on"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("a-conn").await.expect("get").is_none());
    assert!(services.get_opt("a").await.expect("get").is_none());
    // A PpioInstance that asks for nothing has no Exported condition.
    apply_instance(&ns, "plain", "instanceId: b7e2c91d04\nrefreshInterval: 10s");
    let plain = wait_observed(&api, "plain").await;
    assert_eq!(condition(plain.status.as_ref(), "Exported"), None);
}

#[ppio_test_macros::test]
async fn the_charts_export_rbac_is_what_the_operator_needs_and_without_it_exports_are_disabled() {
    let client = client().await;
    let ns = namespace(&client, "export-rbac").await;
    let (_sim, sim_addr) = simulator(&["key-rbac"]).await;
    // The operator as the chart's ServiceAccount, with the chart's Role (exports on).
    super::chart::apply_rbac(
        &ns,
        &[
            "exports.connectionSecrets.enabled=true",
            "exports.services.enabled=true",
        ],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let kc = super::chart::kubeconfig_as(
        "system:serviceaccount:ppio-system:rel-ppio-operator",
        dir.path(),
    );
    let _op = Operator::start_as(
        &ns,
        sim_addr,
        Some("key-rbac"),
        EXPORTS_ON,
        "ppio_operator=debug,warn",
        &kc,
    )
    .await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    apply_instance(
        &ns,
        "a",
        "instanceId: ca338f12f3\nrefreshInterval: 10s\nconnectionSecret:\n  name: a-conn\nservice: {}",
    );
    exported(&api, "a", "True", "Exported").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("a-conn").await.expect("get").is_some());

    // The chart's Role without the export values: the API server refuses the writes, and
    // the operator says so.
    super::chart::apply_rbac(&ns, &[]);
    apply_instance(
        &ns,
        "b",
        "instanceId: b7e2c91d04\nrefreshInterval: 10s\nconnectionSecret:\n  name: b-conn\nservice: {}",
    );
    exported(&api, "b", "False", "ExportsDisabled").await;
    let b = api.get("b").await.expect("get");
    assert!(
        has(&b, "Synced", "True", "Observed"),
        "the observation goes on"
    );
    assert!(secrets.get_opt("b-conn").await.expect("get").is_none());
}
