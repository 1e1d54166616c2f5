//! A mocked Kubernetes API server (tower-test) that serves Secrets and records status
//! writes, and the simulator on 127.0.0.1 behind the real PPIO HTTP client.
//!
//! Every status write must be a server-side apply under the operator's field manager with
//! `force=true`, as the real API server needs it to take over fields; the mock refuses any
//! other write with HTTP 400, which fails the reconcile under test.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use ppio_operator::controller::{Context, FIELD_MANAGER, Settings};
use ppio_operator::crd::{PpioInstance, PpioInstanceSpec, PpioInstanceStatus};
use ppio_operator::metrics::Metrics;
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_operator::simulator::Simulator;
use serde_json::{Value, json};

pub const FIXTURE: &str = include_str!("../../../tests/fixtures/get-instance.json");
pub const KEY: &str = "sk-test-key";
pub const REFRESH: Duration = Duration::from_secs(60);

/// A fake Kubernetes API: Secrets to serve, and the status patches received.
#[derive(Clone, Default)]
pub struct MockApi {
    secrets: Arc<Mutex<BTreeMap<String, Secret>>>,
    patches: Arc<Mutex<Vec<Value>>>,
    refusals: Arc<Mutex<Vec<String>>>,
    /// Status writes fail with 500 while set.
    fail_status_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Event writes never get an answer while set; otherwise they are recorded.
    hang_events: Arc<std::sync::atomic::AtomicBool>,
    events: Arc<Mutex<Vec<Value>>>,
    secret_reads: Arc<std::sync::atomic::AtomicU64>,
    secret_metadata_reads: Arc<std::sync::atomic::AtomicU64>,
    /// Secret reads fail with 500 while set.
    fail_secret_reads: Arc<std::sync::atomic::AtomicBool>,
    /// The last resourceVersion given to a Secret.
    secret_versions: Arc<std::sync::atomic::AtomicU64>,
    /// Every accepted status write: the object (`namespace/name`), when, and the status.
    writes: Arc<Mutex<Vec<(String, tokio::time::Instant, Value)>>>,
}

impl MockApi {
    pub fn client(&self) -> Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let me = me.clone();
                tokio::spawn(async move { send.send_response(me.answer(req).await) });
            }
        });
        Client::new(svc, "default")
    }

    async fn answer(&self, req: Request<Body>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let method = req.method().clone();
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let accept = req
            .headers()
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body().collect_bytes().await.expect("body");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["api", "v1", "namespaces", ns, "secrets", name]) => {
                let metadata_only = accept.contains("as=PartialObjectMetadata");
                let counter = if metadata_only {
                    &self.secret_metadata_reads
                } else {
                    &self.secret_reads
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if self
                    .fail_secret_reads
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    return json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is down"}),
                    );
                }
                match self
                    .secrets
                    .lock()
                    .expect("lock")
                    .get(&format!("{ns}/{name}"))
                {
                    Some(s) if metadata_only => json_response(
                        StatusCode::OK,
                        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": s.metadata}),
                    ),
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
                if let Err(refusal) = check_apply(&query, &content_type) {
                    self.refusals.lock().expect("lock").push(refusal.clone());
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400, "message": refusal}),
                    );
                }
                if self
                    .fail_status_writes
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    return json_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd is unhappy"}),
                    );
                }
                let patch: Value = serde_json::from_slice(&body).expect("patch is JSON");
                self.patches.lock().expect("lock").push(patch.clone());
                self.writes.lock().expect("lock").push((
                    format!("{ns}/{name}"),
                    tokio::time::Instant::now(),
                    patch["status"].clone(),
                ));
                let mut obj = json!({"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance",
                    "metadata": {"name": name, "namespace": ns, "generation": 1, "resourceVersion": "2"},
                    "spec": {"instanceId": "ca338f12f3"}});
                obj["status"] = patch["status"].clone();
                json_response(StatusCode::OK, &obj)
            }
            (Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"]) => {
                if self.hang_events.load(std::sync::atomic::Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                let event: Value = serde_json::from_slice(&body).expect("event is JSON");
                self.events.lock().expect("lock").push(event.clone());
                json_response(StatusCode::CREATED, &event)
            }
            (m, p) => panic!("unexpected request to the Kubernetes API: {m} {p:?}"),
        }
    }

    /// Makes Secret reads fail (HTTP 500) or succeed again.
    pub fn fail_secret_reads(&self, fail: bool) {
        self.fail_secret_reads
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes status writes fail (HTTP 500) or succeed again.
    pub fn fail_status_writes(&self, fail: bool) {
        self.fail_status_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes Event writes hang without an answer, or be recorded again.
    pub fn hang_events(&self, hang: bool) {
        self.hang_events
            .store(hang, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times a Secret's data was read (a whole Secret).
    pub fn secret_reads(&self) -> u64 {
        self.secret_reads.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times a Secret was read as metadata only.
    pub fn secret_metadata_reads(&self) -> u64 {
        self.secret_metadata_reads
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The Events received.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("lock").clone()
    }

    /// Status writes refused because they were not a forced apply under the operator's
    /// field manager.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals.lock().expect("lock").clone()
    }

    pub fn patches(&self) -> Vec<Value> {
        self.patches.lock().expect("lock").clone()
    }

    /// The accepted status writes of one object (`namespace/name`): when, and the status.
    pub fn writes_of(&self, object: &str) -> Vec<(tokio::time::Instant, PpioInstanceStatus)> {
        self.writes
            .lock()
            .expect("lock")
            .iter()
            .filter(|(o, _, _)| o == object)
            .map(|(_, at, s)| {
                (
                    *at,
                    serde_json::from_value(s.clone()).expect("status decodes"),
                )
            })
            .collect()
    }

    pub fn last_status(&self) -> PpioInstanceStatus {
        let p = self.patches().last().cloned().expect("a status patch");
        serde_json::from_value(p["status"].clone()).expect("status decodes")
    }

    /// Serves a Secret with one key, marked as PPIO credentials.
    pub fn put_secret(&self, ns: &str, name: &str, key: &str, value: &str) {
        self.put_secret_marked(ns, name, key, value, true);
    }

    /// Serves a Secret with one key; `marked`: whether it carries the credentials label.
    pub fn put_secret_marked(&self, ns: &str, name: &str, key: &str, value: &str, marked: bool) {
        let mut data = BTreeMap::new();
        data.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        let labels = marked.then(|| {
            [(
                ppio_operator::crd::CREDENTIALS_LABEL.to_string(),
                "true".to_string(),
            )]
            .into()
        });
        let version = self
            .secret_versions
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(format!("{}", version + 1)),
                labels,
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

/// A status write must be a server-side apply (`application/apply-patch+yaml`) under
/// [`FIELD_MANAGER`] with `force=true`.
pub fn check_apply(query: &str, content_type: &str) -> Result<(), String> {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    if content_type != "application/apply-patch+yaml" {
        return Err(format!(
            "status write is not a server-side apply (content-type {content_type:?})"
        ));
    }
    if param("fieldManager").as_deref() != Some(FIELD_MANAGER) {
        return Err(format!(
            "status write under field manager {:?}, expected {FIELD_MANAGER:?}",
            param("fieldManager")
        ));
    }
    if param("force").as_deref() != Some("true") {
        return Err("status write without force=true".into());
    }
    Ok(())
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

pub struct Harness {
    pub sim: Simulator,
    pub api: MockApi,
    pub ctx: Arc<Context>,
}

pub async fn harness(default_key: Option<&str>) -> Harness {
    harness_with_budget(default_key, ppio_operator::controller::Budget::default()).await
}

/// [`harness`] with a given per-key request budget.
pub async fn harness_with_budget(
    default_key: Option<&str>,
    budget: ppio_operator::controller::Budget,
) -> Harness {
    harness_with(default_key, budget, |ctx| ctx).await
}

/// [`harness_with_budget`], with the context changed by `configure` before use.
pub async fn harness_with(
    default_key: Option<&str>,
    budget: ppio_operator::controller::Budget,
    configure: impl FnOnce(Context) -> Context,
) -> Harness {
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
    let ctx = Arc::new(configure(
        Context::new(
            api.client(),
            Arc::new(http),
            Settings {
                default_refresh: REFRESH,
                default_key: default_key.and_then(ApiKey::new),
                default_key_namespaces: None,
                credentials_namespaces: None,
                budget,
                // These tests pin what one poll does: one GET each.
                observe: ppio_operator::controller::Observe::Get,
                money: ppio_operator::controller::MoneySettings::off(),
                exports: Default::default(),
            },
            Arc::new(Metrics::new()),
        )
        // Tests change Secrets between polls and expect the next poll to see the change.
        .with_secret_ttl(Duration::ZERO),
    ));
    Harness { sim, api, ctx }
}

pub fn instance(name: &str, status: Option<PpioInstanceStatus>) -> PpioInstance {
    let mut i = PpioInstance::new(
        name,
        PpioInstanceSpec {
            instance_id: "ca338f12f3".into(),
            credentials_secret_ref: None,
            refresh_interval: None,
            suspend: None,
            expect: None,
            connection_secret: None,
            service: None,
        },
    );
    i.metadata.namespace = Some("ml".into());
    i.metadata.generation = Some(1);
    i.status = status;
    i
}

/// The (status, reason) of a condition that must be present.
pub fn condition(s: &PpioInstanceStatus, t: &str) -> (String, String) {
    crate::cluster::condition(Some(s), t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_forced_apply_under_the_field_manager_is_accepted() {
        let apply = "application/apply-patch+yaml";
        assert_eq!(
            check_apply("fieldManager=ppio-operator&force=true", apply),
            Ok(())
        );
        assert!(check_apply("fieldManager=ppio-operator", apply).is_err());
        assert!(check_apply("fieldManager=other&force=true", apply).is_err());
        assert!(check_apply("force=true", apply).is_err());
        assert!(
            check_apply(
                "fieldManager=ppio-operator&force=true",
                "application/merge-patch+json"
            )
            .is_err()
        );
    }
}
