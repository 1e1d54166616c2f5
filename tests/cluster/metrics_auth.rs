//! Who may read /metrics, on the real API server: the operator run as the chart's
//! ServiceAccount with the chart's RBAC and `--metrics-auth=kubernetes` (the chart's default)
//! checks each scraper's token with TokenReview and SubjectAccessReview.

use std::net::SocketAddr;
use std::time::Duration;

use kube::api::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use ppio_operator::crd::PpioInstance;

/// A GET with an optional bearer token: the status and the body.
async fn get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: op\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("request");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

/// A series' value in a metrics text.
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A ServiceAccount in `ns` and a token for it.
fn service_account_token(ns: &str, name: &str) -> String {
    kubectl_ok(&["create", "serviceaccount", name, "-n", ns], None);
    kubectl_ok(&["create", "token", name, "-n", ns, "--duration=10m"], None)
        .trim()
        .to_string()
}

#[ppio_test_macros::test]
async fn metrics_are_read_only_with_a_token_of_a_user_allowed_to_get_them() {
    let client = client().await;
    let ns = namespace(&client, "metrics-auth").await;
    let (_sim, sim_addr) = simulator(&["key-metrics"]).await;
    // The operator as the chart's ServiceAccount, with the chart's RBAC (its defaults:
    // metrics.auth=kubernetes).
    super::chart::apply_rbac(&ns, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let kc = super::chart::kubeconfig_as(super::chart::CHART_OPERATOR, dir.path());
    let op = Operator::start_as(
        &ns,
        sim_addr,
        Some("key-metrics"),
        &["--metrics-auth=kubernetes"],
        "ppio_operator=debug,warn",
        &kc,
    )
    .await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;

    // A scraper bound to the chart's metrics-reader ClusterRole, and one bound to nothing.
    let reader = service_account_token(&ns, "scraper");
    let nobody = service_account_token(&ns, "nobody");
    kubectl_ok(
        &[
            "create",
            "clusterrolebinding",
            &format!("{ns}-scraper"),
            "--clusterrole=rel-ppio-operator-metrics-reader",
            &format!("--serviceaccount={ns}:scraper"),
        ],
        None,
    );

    // The probes are never guarded.
    assert_eq!(get_as(op.http, "/readyz", None).await, (200, "ok\n".into()));
    assert_eq!(get_as(op.http, "/livez", None).await, (200, "ok\n".into()));
    // No token, or one the API server does not accept: 401, and nothing of the metrics.
    for token in [None, Some("not-a-token"), Some(&*format!("{reader}x"))] {
        let (code, body) = get_as(op.http, "/metrics", token).await;
        assert_eq!(code, 401, "{token:?}: {body}");
        assert!(!body.contains("ppio_"), "{body}");
    }
    // A user the API server knows, without `get` on /metrics: 403.
    let (code, body) = get_as(op.http, "/metrics", Some(&nobody)).await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("ppio_"), "{body}");
    // The reader: the metrics, this namespace's instance among them.
    let text = wait_until("the reader's scrape", WAIT, async || {
        let (code, body) = get_as(op.http, "/metrics", Some(&reader)).await;
        (code == 200).then_some(body)
    })
    .await;
    assert!(
        text.contains(&format!(
            "ppio_instance_ready{{namespace=\"{ns}\",name=\"a\"}}"
        )),
        "{text}"
    );
    let tokens = "ppio_metrics_reviews_total{kind=\"TokenReview\"}";
    let reviews = value(&text, tokens);
    assert!(reviews >= 4, "{reviews} TokenReviews");
    assert_eq!(
        value(
            &text,
            "ppio_metrics_scrapes_total{result=\"unauthenticated\"}"
        ),
        3
    );
    assert_eq!(
        value(&text, "ppio_metrics_scrapes_total{result=\"forbidden\"}"),
        1
    );

    // Verdicts are kept: more scrapes with the same tokens ask the API server nothing new.
    for _ in 0..3 {
        assert_eq!(get_as(op.http, "/metrics", Some(&nobody)).await.0, 403);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, text) = get_as(op.http, "/metrics", Some(&reader)).await;
    assert_eq!(code, 200);
    assert_eq!(value(&text, tokens), reviews, "no new TokenReview");
    assert_eq!(
        value(&text, "ppio_metrics_scrapes_total{result=\"forbidden\"}"),
        4
    );

    // The tokens are in no log line.
    let log = op.log();
    for secret in [&reader, &nobody] {
        assert!(!log.contains(secret.as_str()), "a token in the log");
    }
}

#[ppio_test_macros::test]
async fn without_the_review_permissions_metrics_are_unavailable_and_the_operator_says_why() {
    let client = client().await;
    let ns = namespace(&client, "metrics-noauth").await;
    let (_sim, sim_addr) = simulator(&["key-metrics-2"]).await;
    // The chart's namespaced Role only (no auth-delegator binding): a user of its own.
    let watch = format!("watchNamespace={ns}");
    for d in super::chart::docs(&super::chart::render(&[&watch, "serviceAccount.name=bare"])) {
        if ["Role", "RoleBinding"].contains(&d["kind"].as_str().unwrap_or_default())
            && d["metadata"]["namespace"] == ns
        {
            kubectl_ok(&["apply", "-f", "-"], Some(&d.to_string()));
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kc = super::chart::kubeconfig_as("system:serviceaccount:ppio-system:bare", dir.path());
    let op = Operator::start_as(
        &ns,
        sim_addr,
        Some("key-metrics-2"),
        &["--metrics-auth=kubernetes"],
        "ppio_operator=debug,warn",
        &kc,
    )
    .await;
    let token = service_account_token(&ns, "scraper");
    let (code, body) = get_as(op.http, "/metrics", Some(&token)).await;
    assert_eq!(code, 503, "{body}");
    assert!(!body.contains("ppio_"), "{body}");
    assert_eq!(get_as(op.http, "/readyz", None).await.0, 200);
    let log = wait_until("the reason in the log", WAIT, async || {
        let log = op.log();
        log.contains("cannot check a /metrics token").then_some(log)
    })
    .await;
    assert!(log.contains("TokenReview"), "names the review");
    assert!(!log.contains(token.as_str()), "no token in the log");
}

#[ppio_test_macros::test]
async fn with_credentials_namespaces_the_operator_reads_secrets_of_those_namespaces_only() {
    let client = client().await;
    let listed = namespace(&client, "creds-listed").await;
    let other = namespace(&client, "creds-other").await;
    let (_sim, sim_addr) = simulator(&["key-listed", "key-other"]).await;
    // A cluster-wide install of its own release, Secrets readable in `listed` only.
    let release = format!("r{}", &listed[listed.len() - 5..]);
    let sets = format!("credentialsNamespaces={{{listed}}}");
    for d in super::chart::docs(&super::chart::render_release(&release, &[&sets])) {
        let kind = d["kind"].as_str().unwrap_or_default();
        let ours = matches!(kind, "ClusterRole" | "ClusterRoleBinding")
            && d["metadata"]["name"] == format!("{release}-ppio-operator")
            || matches!(kind, "Role" | "RoleBinding")
                && d["metadata"]["namespace"] == listed.as_str();
        if ours {
            kubectl_ok(&["apply", "-f", "-"], Some(&d.to_string()));
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kc = super::chart::kubeconfig_as(
        &format!("system:serviceaccount:ppio-system:{release}-ppio-operator"),
        dir.path(),
    );
    let mut ops = Vec::new();
    for (ns, key) in [(&listed, "key-listed"), (&other, "key-other")] {
        secret(&client, ns, "ppio-credentials", "apiKey", key).await;
        ops.push(
            Operator::start_as(ns, sim_addr, None, &[], "ppio_operator=debug,warn", &kc).await,
        );
        apply_instance(
            ns,
            "a",
            "instanceId: ca338f12f3\nrefreshInterval: 10s\ncredentialsSecretRef:\n  name: ppio-credentials",
        );
    }
    let listed_api: Api<PpioInstance> = Api::namespaced(client.clone(), &listed);
    let other_api: Api<PpioInstance> = Api::namespaced(client.clone(), &other);
    wait_observed(&listed_api, "a").await;
    let refused = wait_until("the other namespace's Secret refused", WAIT, async || {
        let o = other_api.get("a").await.ok()?;
        has(&o, "Synced", "False", "CredentialsMissing").then_some(o)
    })
    .await;
    assert!(has(&refused, "Stalled", "True", "CredentialsMissing"));
}
