//! The Helm chart, checked with the real helm and the real API server: lint, schema,
//! least-privilege RBAC, server-side validation of every rendering, install, upgrade and
//! uninstall.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::*;
use kube::CustomResourceExt;
use ppio_operator::crd::{PpioInstance, crd_yaml};
use ppio_testenv::ControlPlane;
use serde::Deserialize;
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(REPO).join("charts/ppio-operator")
}

/// Helm, with its config and cache in a folder of the test run (never the user's).
fn helm(args: &[&str]) -> Output {
    helm_at(kubeconfig(), args)
}

/// [`helm`] against the cluster of `kc`.
fn helm_at(kc: &Path, args: &[&str]) -> Output {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    let home = HOME.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
        std::fs::create_dir_all(&d).expect("helm home");
        d
    });
    Command::new(tools_dir().join("helm"))
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", kc)
        .output()
        .expect("helm runs")
}

pub(super) fn helm_ok(args: &[&str]) -> String {
    helm_ok_at(kubeconfig(), args)
}

fn helm_ok_at(kc: &Path, args: &[&str]) -> String {
    let out = helm_at(kc, args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn render(sets: &[&str]) -> String {
    render_release("rel", sets)
}

/// [`render`] as the release `release`.
pub(super) fn render_release(release: &str, sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().expect("path"),
        "--namespace",
        "ppio-system",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm_ok(&args)
}

/// `helm template` with `args` (after the release and chart) fails, saying `why`.
fn render_refused(args: &[&str], why: &str) {
    let chart = chart();
    let mut all = vec!["template", "rel", chart.to_str().expect("path")];
    all.extend(args);
    let out = helm(&all);
    assert!(!out.status.success(), "{args:?} rendered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(why), "{args:?}: {err}");
}

pub(super) fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_string))
        .collect();
    k.sort();
    k
}

const ALL_FEATURES: &[&str] = &[
    "apiKey.value=sk-chart-test",
    "replicaCount=2",
    "leaderElection.enabled=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.apiServerCidrs={10.0.0.1/32}",
    "podDisruptionBudget.enabled=true",
    "watchNamespace=chart-watched",
    "exports.connectionSecrets.enabled=true",
    "exports.services.enabled=true",
    "exports.services.denyCidrs={10.96.0.0/12}",
];

#[test]
fn the_chart_crd_is_the_generated_crd() {
    let file = std::fs::read_to_string(chart().join("files/ppioinstances.gpus.ppio.com.yaml"))
        .expect("chart CRD file");
    assert!(
        file == crd_yaml().expect("renders"),
        "charts/ppio-operator/files/ppioinstances.gpus.ppio.com.yaml is out of date: run tools/crd.sh (it regenerates both CRD copies)"
    );
    let rendered = docs(&render(&[]));
    let crd = rendered
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("the chart renders the CRD");
    let want = serde_json::to_value(PpioInstance::crd()).expect("json");
    assert_eq!(crd["spec"], want["spec"]);
    assert_eq!(crd["metadata"]["name"], "ppioinstances.gpus.ppio.com");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(
        !kinds(&docs(&render(&["crds.install=false"])))
            .contains(&"CustomResourceDefinition".to_string())
    );
}

#[test]
fn lint_passes_and_bad_values_are_refused() {
    let chart = chart();
    let chart = chart.to_str().expect("path");
    helm_ok(&["lint", "--strict", chart]);
    let mut all = vec!["lint", "--strict", chart];
    for s in ALL_FEATURES {
        all.extend(["--set", s]);
    }
    helm_ok(&all);
    for (set, mention) in [
        ("replicaCount=notanumber", "replicaCount"),
        ("replicaCount=2", "leaderElection"),
        ("defaultRefreshInterval=soon", "defaultRefreshInterval"),
        ("logFormat=xml", "logFormat"),
        ("ppio.baseUrl=not-a-url", "baseUrl"),
        ("watchNamespace=Bad_NS", "watchNamespace"),
        ("replicaCont=1", "replicaCont"),
        ("health.port=70000", "health"),
        ("health.port=8080", "health.port"),
        ("money.currency=usd", "currency"),
        (
            "money.billingRefreshInterval=hourly",
            "billingRefreshInterval",
        ),
        ("exports.services.enabled=yes", "enabled"),
        ("exports.services.denyCidrs={cluster}", "denyCidrs"),
    ] {
        let out = helm(&["template", "rel", chart, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} accepted");
        assert!(
            err.contains(mention),
            "{set}: error does not mention {mention}: {err}"
        );
    }
}

fn rules(docs: &[Value], kind: &str) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .flat_map(|d| {
            let ns = d["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            d["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (ns.clone(), r))
        })
        .collect()
}

/// The rendered documents without the ClusterRoles that only extend the built-in user roles
/// (`aggregate-to-*`): what remains is what the operator itself is granted.
fn operator_rbac(d: Vec<Value>) -> Vec<Value> {
    d.into_iter()
        .filter(|doc| {
            doc["metadata"]["labels"].as_object().is_none_or(|l| {
                !l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
        .collect()
}

/// A rule that writes exported objects (connection Secrets, Services, EndpointSlices).
fn export_rule(r: &Value) -> bool {
    let writes = r["verbs"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v == "create"));
    writes
        && ["secrets", "services", "endpointslices"]
            .contains(&r["resources"][0].as_str().unwrap_or_default())
}

/// The operator's rules for `resource`, as (apiGroup, verbs) pairs, in a cluster-wide install.
fn grants(sets: &[&str], resource: &str) -> Vec<(String, Value)> {
    rules(&operator_rbac(docs(&render(sets))), "ClusterRole")
        .into_iter()
        .filter(|(_, r)| r["resources"][0] == resource)
        .map(|(_, r)| {
            (
                r["apiGroups"][0].as_str().unwrap_or_default().to_string(),
                r["verbs"].clone(),
            )
        })
        .collect()
}

#[test]
fn exports_are_granted_only_when_enabled_and_only_what_they_use() {
    use serde_json::json;
    let get = ("".to_string(), json!(["get"]));
    // Off (the default): Secrets read-only, no Services or EndpointSlices.
    assert_eq!(grants(&[], "secrets"), std::slice::from_ref(&get));
    assert!(grants(&[], "services").is_empty());
    assert!(grants(&[], "endpointslices").is_empty());
    // Connection Secrets alone.
    let secrets_on = ["exports.connectionSecrets.enabled=true"];
    assert_eq!(
        grants(&secrets_on, "secrets"),
        [
            get.clone(),
            ("".to_string(), json!(["create", "update", "delete"]))
        ]
    );
    assert!(grants(&secrets_on, "services").is_empty());
    // Services alone.
    let services_on = ["exports.services.enabled=true"];
    assert_eq!(grants(&services_on, "secrets"), [get]);
    assert_eq!(
        grants(&services_on, "services"),
        [("".to_string(), json!(["get", "create", "update", "delete"]))]
    );
    assert_eq!(
        grants(&services_on, "endpointslices"),
        [(
            "discovery.k8s.io".to_string(),
            json!(["get", "list", "create", "update", "delete"])
        )]
    );
    // The flags follow the values.
    let args = |sets: &[&str]| -> Vec<String> {
        let d = docs(&render(sets));
        find(&d, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .filter(|a| a.starts_with("--export"))
            .map(str::to_string)
            .collect()
    };
    assert!(args(&[]).is_empty());
    assert_eq!(
        args(&[
            "exports.connectionSecrets.enabled=true",
            "exports.services.enabled=true",
            "exports.services.denyCidrs={10.96.0.0/12,10.244.0.0/16}"
        ]),
        [
            "--export-connection-secrets=true",
            "--export-services=true",
            "--export-deny-cidrs=10.96.0.0/12,10.244.0.0/16"
        ]
    );
}

#[test]
fn metrics_are_guarded_by_default_and_the_monitors_scrape_with_a_reader_token() {
    for monitor in ["serviceMonitor", "podMonitor"] {
        let on = format!("metrics.{monitor}.enabled=true");
        let d = docs(&render(&[&on]));
        let kind = if monitor == "serviceMonitor" {
            "ServiceMonitor"
        } else {
            "PodMonitor"
        };
        let endpoint = if monitor == "serviceMonitor" {
            "endpoints"
        } else {
            "podMetricsEndpoints"
        };
        let m = find(&d, kind);
        let auth = &m["spec"][endpoint][0]["authorization"];
        assert_eq!(auth["type"], "Bearer", "{m}");
        assert_eq!(
            auth["credentials"]["name"],
            "rel-ppio-operator-metrics-scraper"
        );
        // That Secret is the token of a ServiceAccount bound to the reader role.
        let token = d
            .iter()
            .find(|o| {
                o["kind"] == "Secret"
                    && o["metadata"]["name"] == "rel-ppio-operator-metrics-scraper"
            })
            .expect("the scraper's token Secret");
        assert_eq!(token["type"], "kubernetes.io/service-account-token");
        let binding = d
            .iter()
            .find(|o| {
                o["kind"] == "ClusterRoleBinding"
                    && o["metadata"]["name"] == "rel-ppio-operator-metrics-scraper"
            })
            .expect("the scraper's binding");
        assert_eq!(
            binding["roleRef"]["name"],
            "rel-ppio-operator-metrics-reader"
        );
        assert_eq!(
            binding["subjects"][0]["name"],
            "rel-ppio-operator-metrics-scraper"
        );
    }
    // metrics.auth=none: open /metrics, no review permission, no scraper, no token.
    let d = docs(&render(&[
        "metrics.auth=none",
        "metrics.serviceMonitor.enabled=true",
    ]));
    let dep = find(&d, "Deployment");
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--metrics-auth=none"), "{args}");
    assert!(
        !d.iter().any(|o| o["kind"] == "ClusterRoleBinding"
            && o["roleRef"]["name"] == "system:auth-delegator"),
        "no review permission"
    );
    assert!(find(&d, "ServiceMonitor")["spec"]["endpoints"][0]["authorization"].is_null());
    // Readers bound on request.
    let d = docs(&render(&[
        "metrics.readers[0].kind=ServiceAccount",
        "metrics.readers[0].name=prometheus-k8s",
        "metrics.readers[0].namespace=monitoring",
    ]));
    let readers = d
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding"
                && o["metadata"]["name"] == "rel-ppio-operator-metrics-reader"
        })
        .expect("the readers' binding");
    assert_eq!(readers["subjects"][0]["name"], "prometheus-k8s");
}

#[test]
fn a_ca_bundle_for_the_ppio_api_is_mounted_from_a_config_map_or_a_secret() {
    for (source, field, name) in [
        ("configMap", "configMap", "name"),
        ("secret", "secret", "secretName"),
    ] {
        let d = docs(&render(&[
            &format!("ppio.caBundle.{source}=corp-ca"),
            "ppio.caBundle.key=bundle.pem",
        ]));
        let pod = &find(&d, "Deployment")["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert!(
            c["args"]
                .to_string()
                .contains("--ppio-ca-file=/etc/ppio-ca/ca.crt"),
            "{}",
            c["args"]
        );
        assert_eq!(
            c["volumeMounts"][0],
            serde_json::json!({"name": "ppio-ca", "mountPath": "/etc/ppio-ca", "readOnly": true})
        );
        let volume = &pod["volumes"][0];
        assert_eq!(volume["name"], "ppio-ca");
        assert_eq!(volume[field][name], "corp-ca");
        assert_eq!(
            volume[field]["items"],
            serde_json::json!([{"key": "bundle.pem", "path": "ca.crt"}])
        );
    }
    // Without it: no flag, no volume.
    let d = docs(&render(&[]));
    let pod = &find(&d, "Deployment")["spec"]["template"]["spec"];
    assert!(
        !pod["containers"][0]["args"]
            .to_string()
            .contains("--ppio-ca-file")
    );
    assert!(pod["volumes"].is_null());
    // Both: refused, naming the value.
    render_refused(
        &[
            "--set",
            "ppio.caBundle.configMap=a",
            "--set",
            "ppio.caBundle.secret=b",
        ],
        "ppio.caBundle",
    );
}

#[test]
fn credentials_namespaces_replace_the_cluster_wide_secret_read_by_roles() {
    let all = docs(&render(&["credentialsNamespaces={ml,team-b}"]));
    // The operator enforces it too (exports may need a cluster-wide get on Secrets).
    let args =
        find(&all, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--credentials-namespaces=ml,team-b"),
        "{args}"
    );
    let d = operator_rbac(all);
    let cluster = rules(&d, "ClusterRole");
    assert!(
        !cluster.iter().any(|(_, r)| r["resources"][0] == "secrets"),
        "no cluster-wide Secret read: {cluster:?}"
    );
    let mut roles: Vec<(String, Value)> = rules(&d, "Role")
        .into_iter()
        .filter(|(_, r)| r["resources"][0] == "secrets")
        .collect();
    roles.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        roles,
        [
            (
                "ml".to_string(),
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
            ),
            (
                "team-b".to_string(),
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
            ),
        ]
    );
    // Connection Secrets then read their own through the export rule.
    let d = operator_rbac(docs(&render(&[
        "credentialsNamespaces={ml}",
        "exports.connectionSecrets.enabled=true",
    ])));
    let secrets: Vec<Value> = rules(&d, "ClusterRole")
        .into_iter()
        .filter(|(_, r)| r["resources"][0] == "secrets")
        .map(|(_, r)| r["verbs"].clone())
        .collect();
    assert_eq!(
        secrets,
        [serde_json::json!(["get", "create", "update", "delete"])]
    );
    // Not with watchNamespace.
    render_refused(
        &[
            "--set",
            "watchNamespace=ml",
            "--set",
            "credentialsNamespaces={ml}",
        ],
        "credentialsNamespaces",
    );
}

#[test]
fn rbac_is_least_privilege_without_wildcards() {
    for sets in [vec![], ALL_FEATURES.to_vec()] {
        let d = operator_rbac(docs(&render(&sets)));
        for kind in ["Role", "ClusterRole"] {
            for (_, r) in rules(&d, kind) {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    for v in r[field].as_array().into_iter().flatten() {
                        assert_ne!(v.as_str(), Some("*"), "wildcard in {kind} {r}");
                    }
                }
                for verb in r["verbs"].as_array().into_iter().flatten() {
                    let verb = verb.as_str().unwrap_or_default();
                    // The exports delete their own objects when no longer asked for.
                    if verb == "delete" && export_rule(&r) {
                        continue;
                    }
                    assert!(
                        ![
                            "delete",
                            "deletecollection",
                            "escalate",
                            "bind",
                            "impersonate"
                        ]
                        .contains(&verb),
                        "{verb} in {r}"
                    );
                }
            }
        }
    }
    // Cluster-wide mode: one ClusterRole; Secrets read-only; no Leases without election.
    let d = operator_rbac(docs(&render(&[])));
    let cluster = rules(&d, "ClusterRole");
    let secrets: Vec<&Value> = cluster
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["resources"][0] == "secrets")
        .collect();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["verbs"], serde_json::json!(["get"]));
    assert!(
        !serde_json::to_string(&d).expect("json").contains("leases"),
        "no Lease access without leader election"
    );
    let status = cluster
        .iter()
        .find(|(_, r)| r["resources"][0] == "ppioinstances/status")
        .expect("status rule");
    assert_eq!(status.1["verbs"], serde_json::json!(["patch"]));

    // Namespaced mode: cluster-wide only what /metrics needs (metrics.auth=kubernetes): the
    // built-in system:auth-delegator (TokenReview, SubjectAccessReview) for the operator, and
    // a reader role of the one non-resource URL; with metrics.auth=none nothing cluster-wide.
    let namespaced_none: Vec<&str> = ALL_FEATURES
        .iter()
        .copied()
        .chain(["metrics.auth=none"])
        .collect();
    let k = kinds(&docs(&render(&namespaced_none)));
    assert!(
        !k.contains(&"ClusterRole".to_string()) && !k.contains(&"ClusterRoleBinding".to_string()),
        "{k:?}"
    );
    let d = docs(&render(ALL_FEATURES));
    let cluster_wide: Vec<&Value> = d
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding")
        .collect();
    for o in &cluster_wide {
        if o["kind"] == "ClusterRole" {
            assert_eq!(
                o["rules"],
                serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
                "{o}"
            );
        } else {
            let role = o["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(
                role == "system:auth-delegator" || role == "rel-ppio-operator-metrics-reader",
                "{o}"
            );
        }
    }
    // The operator's binding to system:auth-delegator, the reader role, and the binding of
    // the ServiceMonitor's scraper to it.
    assert_eq!(cluster_wide.len(), 3, "{cluster_wide:?}");
    for (ns, r) in rules(&d, "Role") {
        if ["secrets", "services", "endpointslices"]
            .contains(&r["resources"][0].as_str().unwrap_or_default())
        {
            assert_eq!(ns, "chart-watched");
        }
        if r["resources"][0] == "leases" && r["verbs"] != serde_json::json!(["create"]) {
            assert_eq!(ns, "ppio-system");
            assert_eq!(r["resourceNames"], serde_json::json!(["rel-ppio-operator"]));
        }
    }
}

#[test]
fn the_deployment_is_hardened_and_configured_from_values() {
    let d = docs(&render(&[
        "apiKey.existingSecret=ppio-credentials",
        "watchNamespace=ml",
        "defaultRefreshInterval=30s",
        "defaultKeyNamespaces={ml,team-b}",
        "money.currency=USD",
        "money.billingRefreshInterval=30m",
    ]));
    let dep = d
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "run",
        "--namespace=ml",
        "--default-refresh-interval=30s",
        "--ppio-base-url=https://api.ppio.com",
        "--default-key-namespaces=ml,team-b",
        "--log-level=info",
        "--currency=USD",
        "--billing-refresh-interval=30m",
        "--catalogue-refresh-interval=6h",
        "--prepaid-expiry-horizon=72h",
        "--metrics-auth=kubernetes",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    let env = c["env"].as_array().expect("env");
    // The level is a flag: a RUST_LOG would replace the binary's filter, which keeps the
    // Kubernetes client (it can log response bodies) at error.
    assert!(
        !env.iter().any(|e| e["name"] == "RUST_LOG"),
        "the chart sets RUST_LOG: {env:?}"
    );
    let key = env
        .iter()
        .find(|e| e["name"] == "PPIO_API_KEY")
        .expect("PPIO_API_KEY");
    assert_eq!(key["valueFrom"]["secretKeyRef"]["name"], "ppio-credentials");
    let sa = d
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .expect("sa");
    assert_eq!(sa["automountServiceAccountToken"], false);
    // The operator's flags must all exist: the binary parses the rendered args.
    let mut argv = vec![OPERATOR.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("--help".into());
    let out = clean_env(&mut Command::new(OPERATOR))
        .args(&argv[1..])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "the operator refuses the chart's args: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

#[test]
fn the_update_strategy_follows_leader_election() {
    // Without leader election every pod writes: the old pod must stop before the new starts.
    let d = docs(&render(&[]));
    let strategy = &find(&d, "Deployment")["spec"]["strategy"];
    assert_eq!(strategy, &serde_json::json!({"type": "Recreate"}));
    // With it, a surged pod waits as a ready standby until the old one releases the Lease.
    for sets in [vec!["leaderElection.enabled=true"], ALL_FEATURES.to_vec()] {
        let d = docs(&render(&sets));
        let strategy = &find(&d, "Deployment")["spec"]["strategy"];
        assert_eq!(
            strategy,
            &serde_json::json!({
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}
            }),
            "{sets:?}"
        );
    }
}

fn container_port(c: &Value, name: &str) -> Value {
    c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}: {}", c["ports"]))["containerPort"]
        .clone()
}

#[test]
fn probes_use_the_health_port_and_the_service_the_metrics_port() {
    for (sets, metrics, health) in [
        (vec![], 8080, 8081),
        // `helm upgrade --reuse-values` from a release of a chart without health.port.
        (vec!["health=null"], 8080, 8081),
        (
            vec![
                "metrics.port=9090",
                "health.port=9091",
                "networkPolicy.enabled=true",
            ],
            9090,
            9091,
        ),
    ] {
        let d = docs(&render(&sets));
        let c = &find(&d, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["ports"].as_array().map(Vec::len), Some(2), "{sets:?}");
        assert_eq!(container_port(c, "metrics"), metrics, "{sets:?}");
        assert_eq!(container_port(c, "health"), health, "{sets:?}");
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], "health", "{probe} {sets:?}");
        }
        let args = c["args"].as_array().expect("args");
        for want in [
            format!("--http-addr=0.0.0.0:{metrics}"),
            format!("--health-addr=0.0.0.0:{health}"),
        ] {
            assert!(args.contains(&Value::from(want.clone())), "{want} missing");
        }
        let svc = find(&d, "Service");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "metrics", "{sets:?}");
        assert_eq!(svc["spec"]["ports"][0]["name"], "http-metrics");
        // The NetworkPolicy admits the metrics port only: the kubelet's probes of the health
        // port come from the node, which a NetworkPolicy does not block.
        if let Some(np) = d.iter().find(|d| d["kind"] == "NetworkPolicy") {
            let ports: Vec<&Value> = np["spec"]["ingress"]
                .as_array()
                .expect("ingress")
                .iter()
                .flat_map(|rule| rule["ports"].as_array().into_iter().flatten())
                .map(|p| &p["port"])
                .collect();
            assert_eq!(ports, [&Value::from(metrics)], "{sets:?}");
        }
    }
}

/// The Prometheus Operator's kinds the chart can render, reduced to their names.
fn monitoring_crds() -> String {
    ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
        .iter()
        .map(|kind| {
            let plural = format!("{}s", kind.to_lowercase());
            format!(
                r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {{kind: {kind}, plural: {plural}, singular: {singular}}}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
                singular = kind.to_lowercase()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}
#[ppio_test_macros::test]
async fn every_rendering_validates_server_side_and_install_upgrade_uninstall_work() {
    // A control plane of its own: the test installs, and Helm owns, the CRD, which the
    // shared control plane's other tests use.
    let cp = ControlPlane::start(&tools_dir(), None, None)
        .await
        .expect("a control plane of the test's own");
    let kc = cp.kubeconfig.clone();
    let k = |args: &[&str], stdin: Option<&str>| kubectl_at(&kc, args, stdin);
    let k_ok = |args: &[&str], stdin: Option<&str>| kubectl_at_ok(&kc, args, stdin);
    // An object of the release namespace, as JSON.
    let released = |kind: &str, name: &str| -> Value {
        serde_json::from_str(&k_ok(
            &["get", kind, name, "-n", "ppio-system", "-o", "json"],
            None,
        ))
        .expect("json")
    };
    // What the optional features need in the cluster: the Prometheus Operator's kinds
    // (reduced to their names) and the namespaces.
    k_ok(&["apply", "-f", "-"], Some(&monitoring_crds()));
    for crd in ["servicemonitors", "podmonitors", "prometheusrules"] {
        k_ok(
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}.monitoring.coreos.com"),
                "--timeout=60s",
            ],
            None,
        );
    }
    for ns in ["ppio-system", "chart-watched"] {
        let _ = k(&["create", "namespace", ns], None);
    }
    let variants: Vec<Vec<&str>> = vec![
        vec![],
        vec!["apiKey.existingSecret=ppio-credentials"],
        ALL_FEATURES.to_vec(),
        vec![
            "metrics.podMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "ppio.caBundle.configMap=corp-ca",
        ],
        vec![
            "leaderElection.enabled=true",
            "crds.install=false",
            "rbac.create=false",
            "serviceAccount.create=false",
            "metrics.service.enabled=false",
        ],
    ];
    for sets in &variants {
        let rendered = render(sets);
        let out = k(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(
            out.status.success(),
            "{sets:?} does not validate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Install: Helm installs the CRD.
    let chart = chart();
    let chart = chart.to_str().expect("path");
    let notes = helm_ok_at(
        &kc,
        &[
            "install",
            "rel",
            chart,
            "-n",
            "ppio-system",
            "--set",
            "apiKey.existingSecret=ppio-credentials",
        ],
    );
    // NOTES.txt: the next steps, and a warning while the image names no registry.
    for want in [
        "WARNING: image.repository is the chart's default",
        "kubectl -n ppio-system rollout status deployment/rel-ppio-operator",
        "helm test rel -n ppio-system",
        "The default API key comes from the Secret ppio-credentials",
        "kubectl get ppioi -o wide",
    ] {
        assert!(notes.contains(want), "{want:?} missing from:\n{notes}");
    }
    for (kind, name, ns) in [
        ("deployment", "rel-ppio-operator", Some("ppio-system")),
        ("serviceaccount", "rel-ppio-operator", Some("ppio-system")),
        ("service", "rel-ppio-operator-metrics", Some("ppio-system")),
        ("clusterrole", "rel-ppio-operator", None),
        ("clusterrolebinding", "rel-ppio-operator", None),
        ("crd", "ppioinstances.gpus.ppio.com", None),
    ] {
        let mut args = vec!["get", kind, name, "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        k_ok(&args, None);
    }
    k_ok(
        &[
            "wait",
            "--for=condition=Established",
            "crd/ppioinstances.gpus.ppio.com",
            "--timeout=30s",
        ],
        None,
    );
    k_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: survivor\n  namespace: chart-watched\nspec:\n  instanceId: ca338f12f3\n",
        ),
    );

    // Upgrade: values change the Deployment; leader election brings its Role.
    helm_ok_at(
        &kc,
        &[
            "upgrade",
            "rel",
            chart,
            "-n",
            "ppio-system",
            "--reuse-values",
            "--set",
            "replicaCount=2",
            "--set",
            "leaderElection.enabled=true",
            "--set",
            "defaultRefreshInterval=30s",
        ],
    );
    let dep = released("deployment", "rel-ppio-operator");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--leader-election") && args.contains("--default-refresh-interval=30s"),
        "{args}"
    );
    k_ok(
        &[
            "get",
            "role",
            "rel-ppio-operator-leader-election",
            "-n",
            "ppio-system",
        ],
        None,
    );
    // A bad value is refused and the release stays as it was.
    let out = helm_at(
        &kc,
        &[
            "upgrade",
            "rel",
            chart,
            "-n",
            "ppio-system",
            "--reuse-values",
            "--set",
            "replicaCount=notanumber",
        ],
    );
    assert!(!out.status.success());
    let status: Value = serde_json::from_str(&helm_ok_at(
        &kc,
        &["status", "rel", "-n", "ppio-system", "-o", "json"],
    ))
    .expect("json");
    assert_eq!(status["version"], 2);
    assert_eq!(status["info"]["status"], "deployed");

    // Back to one replica without leader election: the live RollingUpdate strategy (and its
    // rollingUpdate block, which the API server refuses next to Recreate) becomes Recreate.
    helm_ok_at(
        &kc,
        &[
            "upgrade",
            "rel",
            chart,
            "-n",
            "ppio-system",
            "--reuse-values",
            "--set",
            "replicaCount=1",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    let dep = released("deployment", "rel-ppio-operator");
    assert_eq!(
        dep["spec"]["strategy"],
        serde_json::json!({"type": "Recreate"})
    );

    // A chart-managed key: its pods' annotation is salted per install (the salt kept in the
    // Secret), stays while the key does, and changes with the key.
    let annotated = |sets: &[&str]| {
        let mut args = vec![
            "upgrade",
            "rel",
            chart,
            "-n",
            "ppio-system",
            "--reuse-values",
        ];
        for s in sets {
            args.extend(["--set", s]);
        }
        helm_ok_at(&kc, &args);
        let dep = released("deployment", "rel-ppio-operator");
        let secret = released("secret", "rel-ppio-operator-api-key");
        (
            dep["spec"]["template"]["metadata"]["annotations"]["checksum/api-key"]
                .as_str()
                .expect("the annotation")
                .to_string(),
            secret["data"]["salt"].as_str().expect("a salt").to_string(),
        )
    };
    let (first, salt) = annotated(&["apiKey.existingSecret=", "apiKey.value=sk-chart-a"]);
    assert_eq!(
        annotated(&["defaultRefreshInterval=45s"]),
        (first.clone(), salt.clone())
    );
    let (changed, kept) = annotated(&["apiKey.value=sk-chart-b"]);
    assert_ne!(changed, first, "a new key rolls the pods");
    assert_eq!(kept, salt, "the salt stays with the install");
    assert_ne!(first, sha256_hex("sk-chart-a"));

    // Uninstall: the operator goes, the CRD and the PpioInstances stay.
    helm_ok_at(&kc, &["uninstall", "rel", "-n", "ppio-system"]);
    let out = k(
        &[
            "get",
            "deployment",
            "rel-ppio-operator",
            "-n",
            "ppio-system",
        ],
        None,
    );
    assert!(!out.status.success(), "the Deployment survived uninstall");
    k_ok(&["get", "crd", "ppioinstances.gpus.ppio.com"], None);
    k_ok(
        &["get", "ppioinstance", "survivor", "-n", "chart-watched"],
        None,
    );
    drop(cp);
}

/// The hex SHA-256 of `data`, by coreutils' `sha256sum`.
fn sha256_hex(data: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_string()
}

#[test]
fn the_pod_annotation_is_not_a_hash_of_the_api_key() {
    let rendered = |key: &str| render(&[&format!("apiKey.value={key}")]);
    let annotation = |text: &str| {
        find(&docs(text), "Deployment")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/api-key"]
            .as_str()
            .expect("checksum/api-key annotation")
            .to_string()
    };
    let key = "sk-chart-test";
    let text = rendered(key);
    let value = annotation(&text);
    let plain = sha256_hex(key);
    assert_ne!(value, plain);
    assert!(!text.contains(&plain[..16]), "the key's hash is published");
    assert_eq!(value.len(), 64, "{value}");
    // It is the hash of the rendered Secret, which holds a random salt: the same key gives
    // another annotation in another install, so it cannot be tested against a guess.
    let secret = text
        .split("\n---")
        .find(|doc| doc.contains("# Source: ppio-operator/templates/secret.yaml"))
        .expect("the Secret");
    let body = secret
        .split_once("# Source: ppio-operator/templates/secret.yaml\n")
        .expect("source line")
        .1;
    // (The template's text, which begins and ends with a newline.)
    assert_eq!(
        sha256_hex(&format!("\n{body}\n")),
        value,
        "the hash of the Secret as rendered"
    );
    assert!(body.contains("salt: "), "{body}");
    assert_ne!(annotation(&rendered(key)), value, "salted per install");
    // A fixed salt (rendered without a cluster: Argo CD, helm template) gives the same
    // annotation every render, and another with another key.
    let fixed = |key: &str| {
        annotation(&render(&[
            &format!("apiKey.value={key}"),
            "apiKey.checksumSalt=s3cret-salt",
        ]))
    };
    assert_eq!(fixed(key), fixed(key));
    assert_ne!(fixed(key), fixed("sk-another-key"));
    // No chart-managed Secret: no annotation.
    let d = docs(&render(&["apiKey.existingSecret=ppio-credentials"]));
    assert!(
        find(&d, "Deployment")["spec"]["template"]["metadata"]["annotations"]
            .get("checksum/api-key")
            .is_none()
    );
}

// ---------------------------------------------------------------------------------------
// How the chart fits into a cluster and its monitoring.

/// The rendered object of `kind` named `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn namespace_users_get_ppio_instances_through_the_built_in_roles_but_never_their_status() {
    let d = docs(&render(&[]));
    let view = named(&d, "ClusterRole", "rel-ppio-operator-view");
    for role in ["view", "edit", "admin"] {
        assert_eq!(
            view["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{role}")],
            "true"
        );
    }
    assert_eq!(
        view["rules"],
        serde_json::json!([{"apiGroups": ["gpus.ppio.com"], "resources": ["ppioinstances"],
            "verbs": ["get", "list", "watch"]}])
    );
    let edit = named(&d, "ClusterRole", "rel-ppio-operator-edit");
    assert!(edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"].is_null());
    assert_eq!(
        edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        edit["rules"],
        serde_json::json!([{"apiGroups": ["gpus.ppio.com"], "resources": ["ppioinstances"],
            "verbs": ["create", "update", "patch", "delete", "deletecollection"]}])
    );
    let text = serde_json::to_string(&[view, edit]).expect("json");
    assert!(!text.contains("ppioinstances/status"), "{text}");
    // Off by value, and never for a namespaced install (no cluster-wide object there).
    for sets in [
        vec!["rbac.aggregateToDefaultRoles=false"],
        vec!["watchNamespace=ml"],
    ] {
        let d = docs(&render(&sets));
        assert!(
            !d.iter()
                .any(|o| o["metadata"]["name"] == "rel-ppio-operator-view"),
            "{sets:?}"
        );
    }
}

#[test]
fn the_service_monitor_keeps_the_instance_namespace_and_takes_relabelings() {
    let d = docs(&render(&["metrics.serviceMonitor.enabled=true"]));
    let endpoint = &find(&d, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["honorLabels"], true, "{endpoint}");
    assert!(endpoint["relabelings"].is_null());
    let d = docs(&render(&[
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.honorLabels=false",
        "metrics.serviceMonitor.relabelings[0].targetLabel=cluster",
        "metrics.serviceMonitor.relabelings[0].replacement=prod",
        "metrics.serviceMonitor.metricRelabelings[0].action=drop",
        "metrics.serviceMonitor.metricRelabelings[0].regex=ppio_instance_price",
        "metrics.serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
    ]));
    let endpoint = &find(&d, "ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["honorLabels"], false);
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "cluster");
    assert_eq!(endpoint["metricRelabelings"][0]["action"], "drop");
    // A PodMonitor instead: the same, on the pods' metrics port; both at once is refused.
    let d = docs(&render(&["metrics.podMonitor.enabled=true"]));
    let pm = find(&d, "PodMonitor");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["honorLabels"], true);
    assert!(!d.iter().any(|o| o["kind"] == "ServiceMonitor"));
    render_refused(
        &[
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
        "scrape the operator twice",
    );
}

#[test]
fn the_prometheus_rule_and_the_dashboard_ship_when_asked() {
    let d = docs(&render(&[]));
    for kind in ["PrometheusRule", "ConfigMap"] {
        assert!(!d.iter().any(|o| o["kind"] == kind), "{kind} by default");
    }
    let d = docs(&render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.labels.release=kps",
        "metrics.prometheusRule.runbookUrl=https://runbooks.example/ppio.md",
        "metrics.grafanaDashboard.enabled=true",
        "metrics.grafanaDashboard.namespace=monitoring",
    ]));
    let rule = find(&d, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let text = serde_json::to_string(rule).expect("json");
    assert!(!text.contains("__"), "a placeholder left: {text}");
    let alerts: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for a in &alerts {
        let name = a["alert"].as_str().expect("alert name");
        assert!(
            ["critical", "warning", "info"]
                .contains(&a["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        assert_eq!(
            a["annotations"]["runbook_url"],
            format!("https://runbooks.example/ppio.md#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(a["annotations"]["summary"].is_string(), "{name}: summary");
        // Every alert selects this release's scrape job.
        assert!(
            a["expr"]
                .as_str()
                .expect("expr")
                .contains("job=\"rel-ppio-operator-metrics\""),
            "{name}: {}",
            a["expr"]
        );
    }
    // Per-instance alerts name the PpioInstance in their summary.
    for name in [
        "PpioInstanceSyncFailing",
        "PpioInstanceObservationStale",
        "PpioInstanceNotReady",
    ] {
        let a = alerts
            .iter()
            .find(|a| a["alert"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let summary = a["annotations"]["summary"].as_str().expect("summary");
        assert!(
            summary.contains("$labels.namespace") && summary.contains("$labels.name"),
            "{name}: {summary}"
        );
    }
    let cm = find(&d, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["ppio-operator.json"].as_str().expect("json"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "ppio-operator");
    // With a PodMonitor, the rules select its job (namespace/name).
    let d = docs(&render(&[
        "metrics.prometheusRule.enabled=true",
        "metrics.podMonitor.enabled=true",
    ]));
    let text = serde_json::to_string(find(&d, "PrometheusRule")).expect("json");
    assert!(
        text.contains("job=\\\"ppio-system/rel-ppio-operator\\\""),
        "{text}"
    );
}

#[test]
fn the_chart_fits_as_a_subchart_and_takes_the_usual_values() {
    // `global` is accepted, as a parent chart passes it down.
    let d = docs(&render(&["global.imageRegistry=registry.example"]));
    assert!(d.iter().any(|o| o["kind"] == "Deployment"));
    // An image by digest.
    let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let d = docs(&render(&[
        "image.repository=registry.example/ppio-operator",
        &format!("image.digest={digest}"),
        "topologySpreadConstraints[0].maxSkew=1",
        "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "extraVolumes[0].name=ca",
        "extraVolumes[0].configMap.name=corporate-ca",
        "extraVolumeMounts[0].name=ca",
        "extraVolumeMounts[0].mountPath=/etc/ppio-ca",
        "leaderElection.enabled=true",
        "leaderElection.leaseDuration=1m",
        "ppio.requestTimeout=1m",
    ]));
    let pod = &find(&d, "Deployment")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("registry.example/ppio-operator@{digest}")
    );
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "corporate-ca");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/ppio-ca");
    // Durations in the binary's own grammar (1m is 60s), and the binary takes them.
    let args: Vec<String> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    assert!(args.contains(&"--leader-election-lease-duration=1m".to_string()));
    let out = clean_env(&mut Command::new(OPERATOR))
        .args(&args)
        .arg("--help")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Kubernetes older than the CRD's CEL validation needs is refused.
    render_refused(&["--kube-version", "1.29.0"], "kubeVersion");
}

#[test]
fn the_helm_test_pod_checks_the_operator_with_its_own_image() {
    // The test Pod runs `ppio-operator check` against the metrics Service's /readyz, at the
    // address Kubernetes gives every pod of the namespace (no cluster DNS needed).
    let d = docs(&render(&[
        "image.repository=registry.example/ppio-operator",
    ]));
    let test = d
        .iter()
        .find(|o| o["kind"] == "Pod" && o["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .expect("a helm test Pod");
    let c = &test["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/ppio-operator:0.1.0");
    assert_eq!(
        c["args"],
        serde_json::json!([
            "check",
            "--readyz-url=http://$(REL_PPIO_OPERATOR_METRICS_SERVICE_HOST):$(REL_PPIO_OPERATOR_METRICS_SERVICE_PORT_HTTP_METRICS)/readyz"
        ])
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let d = docs(&render(&["tests.enabled=false"]));
    assert!(!d.iter().any(|o| o["kind"] == "Pod"));
}

/// A kubeconfig of the test cluster that acts as `user` (impersonation: the admin may).
pub(super) fn kubeconfig_as(user: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(kubeconfig()).expect("kubeconfig");
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    for u in kc["users"].as_sequence_mut().expect("users") {
        u["user"]["as"] = serde_yaml::Value::from(user);
    }
    let path = dir.join("kubeconfig-as");
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write");
    path
}

/// The user the chart's operator runs as (release `rel` in ppio-system).
pub(super) const CHART_OPERATOR: &str = "system:serviceaccount:ppio-system:rel-ppio-operator";

/// Applies the RBAC a namespaced install of the chart (watchNamespace=`ns`, release `rel` in
/// ppio-system) renders with `sets`: its Role and RoleBinding in `ns`, and its cluster-wide
/// roles and bindings (those of /metrics).
pub(super) fn apply_rbac(ns: &str, sets: &[&str]) {
    let watch = format!("watchNamespace={ns}");
    let mut all = vec![watch.as_str()];
    all.extend(sets);
    for d in docs(&render(&all)) {
        let kind = d["kind"].as_str().unwrap_or_default();
        let ours = match kind {
            "Role" | "RoleBinding" => d["metadata"]["namespace"] == ns,
            "ClusterRole" | "ClusterRoleBinding" => true,
            _ => false,
        };
        if ours {
            kubectl_ok(&["apply", "-f", "-"], Some(&d.to_string()));
        }
    }
}
