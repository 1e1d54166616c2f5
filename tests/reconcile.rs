//! Reconcile tests: the real PPIO HTTP client against the simulator on 127.0.0.1, and a
//! mocked Kubernetes API server (tower-test) that records every status write.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use kube::core::DeserializeGuard;
use ppio_operator::controller::{Context, Settings, poll, reconcile};
use ppio_operator::crd::{PpioInstance, PpioInstanceSpec, PpioInstanceStatus, SecretKeyRef};
use ppio_operator::metrics::Metrics;
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig, PpioError};
use ppio_operator::simulator::{BodyFault, Fault, Simulator};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/get-instance.json");
const KEY: &str = "sk-test-key";
const REFRESH: Duration = Duration::from_secs(60);

/// A fake Kubernetes API: Secrets to serve, and the status patches received.
#[derive(Clone, Default)]
struct MockApi {
    secrets: Arc<Mutex<BTreeMap<String, Secret>>>,
    patches: Arc<Mutex<Vec<Value>>>,
}

impl MockApi {
    fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let resp = me.answer(req).await;
                send.send_response(resp);
            }
        });
        Client::new(svc, "default")
    }

    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let body = req.into_body().collect_bytes().await.expect("body");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                match self
                    .secrets
                    .lock()
                    .expect("lock")
                    .get(&format!("{ns}/{name}"))
                {
                    Some(s) => {
                        json_response(StatusCode::OK, &serde_json::to_value(s).expect("json"))
                    }
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("secrets \"{name}\" not found")}),
                    ),
                }
            }
            (
                Method::PATCH,
                [
                    "apis",
                    "gpus.ppio.com",
                    "v1alpha1",
                    "namespaces",
                    ns,
                    "ppioinstances",
                    name,
                    "status",
                ],
            ) => {
                let patch: Value = serde_json::from_slice(&body).expect("patch is JSON");
                self.patches.lock().expect("lock").push(patch.clone());
                let mut obj = json!({"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance",
                    "metadata": {"name": name, "namespace": ns, "generation": 1, "resourceVersion": "2"},
                    "spec": {"instanceId": "ca338f12f3"}});
                obj["status"] = patch["status"].clone();
                json_response(StatusCode::OK, &obj)
            }
            (m, p) => panic!("unexpected request to the Kubernetes API: {m} {p:?}"),
        }
    }

    fn patches(&self) -> Vec<Value> {
        self.patches.lock().expect("lock").clone()
    }

    fn last_status(&self) -> PpioInstanceStatus {
        let p = self.patches().last().cloned().expect("a status patch");
        serde_json::from_value(p["status"].clone()).expect("status decodes")
    }

    fn put_secret(&self, ns: &str, name: &str, key: &str, value: &str) {
        let mut data = BTreeMap::new();
        data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        self.secrets
            .lock()
            .expect("lock")
            .insert(format!("{ns}/{name}"), s);
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

struct Harness {
    sim: Simulator,
    api: MockApi,
    ctx: Arc<Context>,
}

async fn harness(default_key: Option<&str>) -> Harness {
    let fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let sim = Simulator::new(vec![fixture], vec![KEY.to_string()]);
    let addr = sim
        .spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("simulator binds");
    let http = HttpClient::new(&HttpClientConfig {
        base_url: format!("http://{addr}"),
        timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .expect("client");
    let api = MockApi::default();
    let ctx = Arc::new(Context::new(
        api.client(),
        Arc::new(http),
        Settings {
            default_refresh: REFRESH,
            default_key: default_key.and_then(ApiKey::new),
        },
        Arc::new(Metrics::new()),
    ));
    Harness { sim, api, ctx }
}

fn instance(name: &str, status: Option<PpioInstanceStatus>) -> PpioInstance {
    let mut i = PpioInstance::new(
        name,
        PpioInstanceSpec {
            instance_id: "ca338f12f3".into(),
            credentials_secret_ref: None,
            refresh_interval: None,
            suspend: None,
        },
    );
    i.metadata.namespace = Some("ml".into());
    i.metadata.generation = Some(1);
    i.status = status;
    i
}

fn condition(s: &PpioInstanceStatus, t: &str) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition");
    (c.status.clone(), c.reason.clone())
}

#[tokio::test]
async fn new_observation_writes_once_and_unchanged_writes_nothing() {
    let h = harness(Some(KEY)).await;
    let first = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(first.requested && first.wrote);
    assert_eq!(h.api.patches().len(), 1);
    let status = h.api.last_status();
    assert_eq!(status.state.as_deref(), Some("running"));
    assert_eq!(
        condition(&status, "Ready"),
        ("True".into(), "Running".into())
    );
    assert_eq!(
        condition(&status, "Synced"),
        ("True".into(), "Observed".into())
    );
    let patch = &h.api.patches()[0];
    assert_eq!(patch["apiVersion"], "gpus.ppio.com/v1alpha1");
    assert_eq!(patch["kind"], "PpioInstance");

    // The next poll sees the same instance: a request, but no write.
    let second = poll(&instance("a", Some(status)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(second.requested);
    assert!(!second.wrote);
    assert_eq!(
        h.api.patches().len(),
        1,
        "an unchanged observation must not write"
    );
    assert_eq!(h.sim.requests_for("ca338f12f3"), 2);
}

#[tokio::test]
async fn a_state_change_flips_ready() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let running = h.api.last_status();
    h.sim
        .patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    let p = poll(&instance("a", Some(running)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.wrote);
    let exited = h.api.last_status();
    assert_eq!(exited.state.as_deref(), Some("exited"));
    assert_eq!(
        condition(&exited, "Ready"),
        ("False".into(), "NotRunning".into())
    );
    // A transitional state polls at least every 10s.
    h.sim
        .patch_instance("ca338f12f3", &json!({"status": {"status": "starting"}}));
    let p = poll(&instance("a", Some(exited)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.next.expect("requeue") <= Duration::from_secs(11));
}

#[tokio::test]
async fn api_errors_keep_the_last_good_data_and_repeat_without_writes() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    let faults: [(Fault, &str); 6] = [
        (
            Fault {
                status: Some(503),
                ..Default::default()
            },
            "ApiUnavailable",
        ),
        (
            Fault {
                status: Some(500),
                ..Default::default()
            },
            "ApiUnavailable",
        ),
        (
            Fault {
                status: Some(401),
                ..Default::default()
            },
            "Unauthorized",
        ),
        (
            Fault {
                status: Some(403),
                ..Default::default()
            },
            "Forbidden",
        ),
        (
            Fault {
                body: Some(BodyFault::Malformed),
                ..Default::default()
            },
            "InvalidResponse",
        ),
        (
            Fault {
                body: Some(BodyFault::Oversized),
                ..Default::default()
            },
            "InvalidResponse",
        ),
    ];
    for (fault, reason) in faults {
        h.sim.set_fault("ca338f12f3", fault.clone());
        let before = h.api.patches().len();
        let p = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, 0)
            .await
            .expect("poll");
        assert!(p.wrote, "{fault:?}");
        assert_eq!(p.failures, 1);
        let failed = h.api.last_status();
        assert_eq!(
            condition(&failed, "Synced"),
            ("False".into(), reason.into()),
            "{fault:?}"
        );
        assert_eq!(
            condition(&failed, "Ready"),
            ("True".into(), "Running".into()),
            "Ready keeps its last value"
        );
        assert_eq!(failed.region, good.region);
        assert_eq!(failed.pricing, good.pricing);
        assert_eq!(failed.endpoints, good.endpoints);
        // The same fault again (the simulator's request id differs): no write.
        let again = poll(&instance("a", Some(failed)), &h.ctx, REFRESH, 1)
            .await
            .expect("poll");
        assert!(!again.wrote, "{fault:?}");
        assert_eq!(again.failures, 2);
        assert!(again.next.expect("backoff") > p.next.expect("backoff") / 2);
        assert_eq!(h.api.patches().len(), before + 1);
    }
    h.sim.clear_fault("ca338f12f3");
    let recovered = poll(
        &instance("a", Some(h.api.last_status())),
        &h.ctx,
        REFRESH,
        2,
    )
    .await
    .expect("poll");
    assert_eq!(recovered.failures, 0);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
}

#[tokio::test]
async fn a_gone_instance_reports_not_found_and_polls_slowly() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    h.sim.remove_instance("ca338f12f3");
    let p = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let gone = h.api.last_status();
    assert_eq!(gone.state.as_deref(), Some("NotFound"));
    assert_eq!(
        condition(&gone, "Ready"),
        ("False".into(), "InstanceNotFound".into())
    );
    assert_eq!(
        condition(&gone, "Synced"),
        ("False".into(), "InstanceNotFound".into())
    );
    assert_eq!(
        gone.region, good.region,
        "the rest of the last observation stays"
    );
    assert!(p.next.expect("requeue") >= Duration::from_secs(270));

    // 400 with RESOURCE_NOT_FOUND means gone too.
    h.sim.set_not_found_status(400);
    let p = poll(&instance("a", Some(gone.clone())), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!p.wrote, "the same condition from a 400 is the same status");
}

#[tokio::test]
async fn retry_after_pauses_every_object_using_the_key() {
    let h = harness(Some(KEY)).await;
    h.sim.set_fault(
        "*",
        Fault {
            status: Some(429),
            retry_after: Some("30".into()),
            ..Default::default()
        },
    );
    let p = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.requested);
    assert!(p.next.expect("requeue") >= Duration::from_secs(30), "{p:?}");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "RateLimited".into())
    );
    h.sim.clear_fault("*");
    let before = h.sim.counts().keys.get("key0").copied().unwrap_or(0);
    // Another object with the same key, reconciled through the controller entry point: no
    // request is sent while the key is paused.
    let other = Arc::new(DeserializeGuard(Ok(instance("b", None))));
    let action = reconcile(other.clone(), h.ctx.clone())
        .await
        .expect("reconcile");
    let again = reconcile(other, h.ctx.clone()).await.expect("reconcile");
    assert_eq!(
        h.sim.counts().keys.get("key0").copied().unwrap_or(0),
        before,
        "no request during Retry-After"
    );
    let secs = |a: &kube::runtime::controller::Action| {
        let d = format!("{a:?}");
        d.contains("requeue_after: Some")
    };
    assert!(secs(&action) && secs(&again));
}

#[tokio::test]
async fn credentials_come_from_the_secret_and_changes_apply_at_the_next_poll() {
    let h = harness(None).await;
    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: None,
    });
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested, "no key, no request");
    let s = h.api.last_status();
    assert_eq!(
        condition(&s, "Synced"),
        ("False".into(), "CredentialsMissing".into())
    );
    assert_eq!(
        condition(&s, "Ready"),
        ("Unknown".into(), "NotObserved".into())
    );

    // A wrong key: Unauthorized.
    h.api.put_secret("ml", "ppio", "apiKey", "wrong-key");
    i.status = Some(s);
    poll(&i, &h.ctx, REFRESH, 1).await.expect("poll");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "Unauthorized".into())
    );

    // Rotated to the right key: observed, without a restart.
    h.api
        .put_secret("ml", "ppio", "apiKey", &format!("{KEY}\n"));
    i.status = Some(h.api.last_status());
    poll(&i, &h.ctx, REFRESH, 2).await.expect("poll");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );

    // A key name that the Secret lacks.
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: Some("token".into()),
    });
    i.status = Some(h.api.last_status());
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let s = h.api.last_status();
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Synced")
        .expect("synced");
    assert_eq!(c.reason, "CredentialsMissing");
    assert!(c.message.contains("token"), "{}", c.message);
}

#[tokio::test]
async fn no_default_key_reports_credentials_missing() {
    let h = harness(None).await;
    let p = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!p.requested);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "CredentialsMissing".into())
    );
}

#[tokio::test]
async fn suspend_makes_no_request() {
    let h = harness(Some(KEY)).await;
    let mut i = instance("a", None);
    i.spec.suspend = Some(true);
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested && p.next.is_none());
    assert_eq!(h.sim.requests_for("ca338f12f3"), 0);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "Suspended".into())
    );
}

#[tokio::test]
async fn a_malformed_object_does_not_stop_the_others() {
    let h = harness(Some(KEY)).await;
    let list: Vec<DeserializeGuard<PpioInstance>> = serde_json::from_value(json!([
        {"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance", "metadata": {"name": "bad", "namespace": "ml"}, "spec": {"instanceId": 42, "suspend": "maybe"}},
        {"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance", "metadata": {"name": "good", "namespace": "ml", "generation": 1}, "spec": {"instanceId": "ca338f12f3"}},
    ]))
    .expect("a list with a malformed item still decodes");
    assert!(list[0].0.is_err() && list[1].0.is_ok());
    for obj in list {
        reconcile(Arc::new(obj), h.ctx.clone())
            .await
            .expect("reconcile never fails on bad input");
    }
    assert_eq!(h.api.patches().len(), 1, "only the good object is written");
    assert_eq!(h.sim.requests_for("ca338f12f3"), 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_status_errors_or_logs() {
    let markers = [
        "LEAK-ssh-pw",
        "LEAK-web-pw",
        "LEAK-env-value",
        "LEAK-command",
        "LEAK-entrypoint",
        "LEAK-api-key",
    ];
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = harness(None).await;
    let mut fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    fixture["tools"]["ssh"]["password"] = json!("LEAK-ssh-pw");
    fixture["tools"]["web_terminal"]["password"] = json!("LEAK-web-pw");
    fixture["envs"] = json!([{"key": "TOKEN", "value": "LEAK-env-value"}]);
    fixture["command"] = json!("run --token LEAK-command");
    fixture["entrypoint"] = json!("LEAK-entrypoint");
    h.sim.put_instance("ca338f12f3", fixture);
    h.sim.set_keys(vec!["LEAK-api-key".into()]);
    h.api.put_secret("ml", "ppio", "apiKey", "LEAK-api-key");

    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: None,
    });
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let mut statuses = vec![h.api.last_status()];
    for fault in [
        Fault {
            status: Some(401),
            ..Default::default()
        },
        Fault {
            status: Some(500),
            ..Default::default()
        },
        Fault {
            body: Some(BodyFault::Truncated),
            ..Default::default()
        },
    ] {
        h.sim.set_fault("ca338f12f3", fault);
        i.status = statuses.last().cloned();
        poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
        statuses.push(h.api.last_status());
    }
    // A key rejected by PPIO, and a vendor error body that echoes the secrets.
    h.sim.set_keys(vec!["another".into()]);
    i.status = statuses.last().cloned();
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    statuses.push(h.api.last_status());
    let echo = br#"{"reason":"LEAK-api-key","message":"LEAK-ssh-pw LEAK-env-value"}"#;
    let errors: Vec<String> = [400u16, 401, 403, 404, 409, 422, 429, 500, 503, 302]
        .iter()
        .map(|s| {
            PpioError::from_response(*s, Some("30"), echo, std::time::SystemTime::now()).to_string()
        })
        .collect();
    let key_debug = format!("{:?}", ApiKey::new("LEAK-api-key"));

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("instance state changed") && logs.contains("sync failing"),
        "logs were captured: {logs}"
    );
    let patches = serde_json::to_string(&h.api.patches()).expect("json");
    for m in markers {
        assert!(!patches.contains(m), "{m} in a status patch");
        assert!(!logs.contains(m), "{m} in the log");
        for e in &errors {
            assert!(!e.contains(m), "{m} in error {e}");
        }
        assert!(!key_debug.contains(m));
        for s in &statuses {
            assert!(
                !serde_json::to_string(s).expect("json").contains(m),
                "{m} in status"
            );
        }
    }
    use base64::Engine as _;
    let encoded_key = base64::engine::general_purpose::STANDARD.encode("LEAK-api-key");
    assert!(
        !logs.contains(&encoded_key),
        "the Secret's encoded key in the log"
    );
    assert!(
        patches.contains("root@proxy"),
        "the ssh command (not its password) is shown"
    );
}
