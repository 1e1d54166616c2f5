//! A local PPIO v2 API for tests, demos and offline GitOps checks.
//!
//! It serves `GET /gpus/v2/instances/{id}` and the paged `GET /gpus/v2/instances` with bearer
//! key checking, from a fixtures file (or built-in samples), and a small control API under
//! `/_sim/` to add, change and remove instances, rotate the accepted keys, inject faults per
//! instance and read request counts. The control API has no authentication: bind the
//! simulator to a loopback address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::lock;

/// The built-in sample instances (used when no fixtures file is given).
pub const SAMPLES: &str = include_str!("samples.json");

/// Options of `ppio-operator simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, env = "PPIO_SIMULATOR_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// A JSON file with the instances to serve: an array of instance objects, or
    /// {"instances": [...]} (default: three built-in samples).
    #[arg(long, env = "PPIO_SIMULATOR_FIXTURES")]
    pub fixtures: Option<PathBuf>,
    /// An API key the simulator accepts as `Authorization: Bearer <key>` (repeatable).
    #[arg(
        long = "api-key",
        env = "PPIO_SIMULATOR_API_KEYS",
        value_delimiter = ',',
        required = true
    )]
    pub api_keys: Vec<String>,
    /// The HTTP status for an unknown instance: 404, or 400 with reason RESOURCE_NOT_FOUND.
    #[arg(long, default_value_t = 404, value_parser = parse_not_found_status)]
    pub not_found_status: u16,
}

fn parse_not_found_status(s: &str) -> Result<u16, String> {
    match s {
        "404" => Ok(404),
        "400" => Ok(400),
        _ => Err(format!("'{s}' must be 404 or 400")),
    }
}

/// A fault injected for one instance (or for all with the id `*`). Fields combine: a
/// latency is waited before the answer, then `status` or `body` decide the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Answer with this HTTP status and a vendor-style error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The `reason` of the error body (default: one matching the status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A `Retry-After` header value, e.g. "30" or an HTTP date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Wait this long before answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Answer 200 with a broken or unusual body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyFault>,
}

/// Kinds of unusual 200 bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyFault {
    /// Not JSON at all.
    Malformed,
    /// The instance JSON cut in half.
    Truncated,
    /// A valid JSON object of 2 MiB.
    Oversized,
    /// The instance with every integer sent as a string.
    NumbersAsStrings,
}

/// Request counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// GET requests per instance id.
    pub instances: BTreeMap<String, u64>,
    /// LIST requests.
    pub list: u64,
    /// Requests per presented key: `key0`, `key1`... by position in the accepted keys, or
    /// `invalid`.
    pub keys: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct SimState {
    instances: BTreeMap<String, Value>,
    faults: BTreeMap<String, Fault>,
    keys: Vec<String>,
    counts: Counts,
    not_found_status: u16,
    request_seq: u64,
}

/// A simulator's state, shared by its server and by in-process tests.
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<Mutex<SimState>>,
}

/// Why fixtures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("fixtures are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "fixtures must be an array of instance objects or {{\"instances\": [...]}}, each with a string \"id\""
    )]
    Shape,
}

/// Parses fixtures: an array of instance objects or `{"instances": [...]}`.
pub fn parse_fixtures(text: &str) -> Result<Vec<Value>, FixtureError> {
    let v: Value = serde_json::from_str(text)?;
    let list = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("instances") {
            Some(Value::Array(a)) => a,
            _ => return Err(FixtureError::Shape),
        },
        _ => return Err(FixtureError::Shape),
    };
    if list.iter().any(|i| {
        i.get("id")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    }) {
        return Err(FixtureError::Shape);
    }
    Ok(list)
}

impl Simulator {
    /// A simulator serving `instances` to clients presenting one of `keys`.
    pub fn new(instances: Vec<Value>, keys: Vec<String>) -> Simulator {
        let sim = Simulator {
            state: Arc::new(Mutex::new(SimState {
                not_found_status: 404,
                ..Default::default()
            })),
        };
        for i in instances {
            if let Some(id) = i.get("id").and_then(Value::as_str).map(str::to_string) {
                sim.put_instance(&id, i);
            }
        }
        sim.set_keys(keys);
        sim
    }

    /// The built-in samples.
    pub fn samples() -> Vec<Value> {
        parse_fixtures(SAMPLES).unwrap_or_default()
    }

    /// Adds or replaces an instance (its `id` is set to `id`).
    pub fn put_instance(&self, id: &str, mut instance: Value) {
        if let Some(o) = instance.as_object_mut() {
            o.insert("id".into(), Value::String(id.to_string()));
        }
        lock(&self.state).instances.insert(id.to_string(), instance);
    }

    /// Applies a JSON merge patch (RFC 7396) to an instance; false if it does not exist.
    pub fn patch_instance(&self, id: &str, patch: &Value) -> bool {
        let mut st = lock(&self.state);
        match st.instances.get_mut(id) {
            Some(target) => {
                merge_patch(target, patch);
                true
            }
            None => false,
        }
    }

    /// Removes an instance; false if it did not exist.
    pub fn remove_instance(&self, id: &str) -> bool {
        lock(&self.state).instances.remove(id).is_some()
    }

    /// Sets the fault for an instance (`*`: every instance).
    pub fn set_fault(&self, id: &str, fault: Fault) {
        lock(&self.state).faults.insert(id.to_string(), fault);
    }

    /// Clears the fault of an instance.
    pub fn clear_fault(&self, id: &str) {
        lock(&self.state).faults.remove(id);
    }

    /// Replaces the accepted keys.
    pub fn set_keys(&self, keys: Vec<String>) {
        lock(&self.state).keys = keys;
    }

    /// How unknown instances are answered: 404, or 400 with RESOURCE_NOT_FOUND.
    pub fn set_not_found_status(&self, status: u16) {
        lock(&self.state).not_found_status = status;
    }

    /// The request counters.
    pub fn counts(&self) -> Counts {
        lock(&self.state).counts.clone()
    }

    /// GET requests for one instance so far.
    pub fn requests_for(&self, id: &str) -> u64 {
        lock(&self.state)
            .counts
            .instances
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Resets the counters.
    pub fn reset_counts(&self) {
        lock(&self.state).counts = Counts::default();
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/gpus/v2/instances", get(list_instances))
            .route("/gpus/v2/instances/{id}", get(get_instance))
            .route(
                "/_sim/instances",
                get(|State(s): State<Simulator>| async move {
                    Json(lock(&s.state).instances.keys().cloned().collect::<Vec<_>>())
                }),
            )
            .route(
                "/_sim/instances/{id}",
                get(control_get)
                    .put(control_put)
                    .patch(control_patch)
                    .delete(control_delete),
            )
            .route(
                "/_sim/faults/{id}",
                axum::routing::put(fault_put).delete(fault_delete),
            )
            .route(
                "/_sim/requests",
                get(|State(s): State<Simulator>| async move { Json(s.counts()) }).delete(
                    |State(s): State<Simulator>| async move {
                        s.reset_counts();
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .route(
                "/_sim/keys",
                axum::routing::put(
                    |State(s): State<Simulator>, Json(keys): Json<Vec<String>>| async move {
                        s.set_keys(keys);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(self.clone())
    }

    /// Serves on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Binds `addr` and serves in a background task; returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener));
        Ok(bound)
    }

    /// Checks the key and counts the request. `Err` is the 401 answer.
    fn authorize(&self, headers: &HeaderMap, instance: Option<&str>) -> Result<(), Box<Response>> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let mut st = lock(&self.state);
        let label = presented
            .and_then(|p| st.keys.iter().position(|k| k == p))
            .map(|i| format!("key{i}"))
            .unwrap_or_else(|| "invalid".into());
        *st.counts.keys.entry(label.clone()).or_default() += 1;
        match instance {
            Some(id) => *st.counts.instances.entry(id.to_string()).or_default() += 1,
            None => st.counts.list += 1,
        }
        st.request_seq += 1;
        let seq = st.request_seq;
        if label == "invalid" {
            return Err(Box::new(vendor_error(401, None, seq)));
        }
        Ok(())
    }
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn default_reason(status: u16) -> &'static str {
    match status {
        400 => "INVALID_PARAMS",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "RESOURCE_NOT_FOUND",
        429 => "RATE_LIMIT_EXCEEDED",
        500 => "INTERNAL_SERVER_ERROR",
        502..=504 => "SERVICE_UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// A vendor-style error: `{"code", "reason", "message", "metadata": {"request_id"}}`. The
/// request id differs on every answer, as a real API's would.
fn vendor_error(status: u16, reason: Option<&str>, seq: u64) -> Response {
    let reason = reason.unwrap_or(default_reason(status));
    let body = json!({
        "code": status,
        "reason": reason,
        "message": format!("simulated {reason} (request {seq})"),
        "metadata": {"request_id": format!("sim-{seq:08}")},
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(body)).into_response()
}

fn numbers_as_strings(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_i64() || n.is_u64() => Value::String(n.to_string()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_strings).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn json_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn get_instance(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers, Some(&id)) {
        return *denied;
    }
    let (fault, instance, not_found, seq) = {
        let st = lock(&sim.state);
        let fault = st.faults.get(&id).or_else(|| st.faults.get("*")).cloned();
        (
            fault,
            st.instances.get(&id).cloned(),
            st.not_found_status,
            st.request_seq,
        )
    };
    let fault = fault.unwrap_or_default();
    if let Some(ms) = fault.latency_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = fault.status {
        let mut r = vendor_error(status, fault.reason.as_deref(), seq);
        if let Some(ra) = fault
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, ra);
        }
        return r;
    }
    let Some(instance) = instance else {
        return vendor_error(not_found, Some("RESOURCE_NOT_FOUND"), seq);
    };
    let bytes = match fault.body {
        None => serde_json::to_vec(&instance).unwrap_or_default(),
        Some(BodyFault::Malformed) => b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        Some(BodyFault::Truncated) => {
            let full = serde_json::to_vec(&instance).unwrap_or_default();
            full[..full.len() / 2].to_vec()
        }
        Some(BodyFault::Oversized) => {
            let mut big = instance.clone();
            if let Some(o) = big.as_object_mut() {
                o.insert("padding".into(), Value::String("x".repeat(2 * 1024 * 1024)));
            }
            serde_json::to_vec(&big).unwrap_or_default()
        }
        Some(BodyFault::NumbersAsStrings) => {
            serde_json::to_vec(&numbers_as_strings(&instance)).unwrap_or_default()
        }
    };
    json_response(StatusCode::OK, bytes)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    name: Option<String>,
    status: Option<String>,
    regions: Option<String>,
    billing_mode: Option<String>,
}

const DEFAULT_PAGE: usize = 20;

async fn list_instances(
    State(sim): State<Simulator>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers, None) {
        return *denied;
    }
    let st = lock(&sim.state);
    let str_at = |v: &Value, path: &[&str]| {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let regions: Vec<&str> = q
        .regions
        .as_deref()
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let matching: Vec<Value> =
        st.instances
            .values()
            .filter(|i| {
                q.name.as_deref().filter(|n| !n.is_empty()).is_none_or(|n| {
                    str_at(i, &["name"]).contains(n) || str_at(i, &["id"]).contains(n)
                })
            })
            .filter(|i| {
                q.status
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .is_none_or(|s| str_at(i, &["status", "status"]) == s)
            })
            .filter(|i| regions.is_empty() || regions.contains(&str_at(i, &["region"]).as_str()))
            .filter(|i| {
                q.billing_mode
                    .as_deref()
                    .filter(|m| !m.is_empty())
                    .is_none_or(|m| str_at(i, &["billing", "mode"]) == m)
            })
            .map(|i| {
                let mut item = i.clone();
                if let Some(o) = item.as_object_mut() {
                    o.remove("tools");
                    o.remove("pricing");
                }
                item
            })
            .collect();
    let start = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => match c.strip_prefix("o").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if c.len() <= 1024 => n,
            _ => return vendor_error(400, Some("INVALID_PARAMS"), st.request_seq),
        },
    };
    let limit = q.limit.filter(|l| *l > 0).unwrap_or(DEFAULT_PAGE);
    let total = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(start).take(limit).collect();
    let end = start + page.len();
    let has_more = end < total;
    Json(json!({
        "data": page,
        "next_cursor": if has_more { format!("o{end}") } else { String::new() },
        "has_more": has_more,
        "total": total,
    }))
    .into_response()
}

async fn control_get(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    match lock(&sim.state).instances.get(&id) {
        Some(i) => Json(i.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn control_put(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    if !body.is_object() {
        return StatusCode::BAD_REQUEST;
    }
    sim.put_instance(&id, body);
    StatusCode::NO_CONTENT
}

async fn control_patch(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    if sim.patch_instance(&id, &body) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn control_delete(State(sim): State<Simulator>, Path(id): Path<String>) -> StatusCode {
    if sim.remove_instance(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn fault_put(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(fault): Json<Fault>,
) -> StatusCode {
    sim.set_fault(&id, fault);
    StatusCode::NO_CONTENT
}

async fn fault_delete(State(sim): State<Simulator>, Path(id): Path<String>) -> StatusCode {
    sim.clear_fault(&id);
    StatusCode::NO_CONTENT
}

/// `ppio-operator simulate`.
pub async fn main(args: SimulateArgs) -> ExitCode {
    crate::telemetry::init(crate::telemetry::LogFormat::Text);
    let instances = match &args.fixtures {
        None => Simulator::samples(),
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|source| FixtureError::Read {
                path: path.display().to_string(),
                source,
            })
            .and_then(|t| parse_fixtures(&t))
        {
            Ok(list) => list,
            Err(e) => {
                eprintln!("error: --fixtures: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        eprintln!("error: --api-key: give at least one non-empty key");
        return ExitCode::from(2);
    }
    let sim = Simulator::new(instances, keys);
    sim.set_not_found_status(args.not_found_status);
    let listener = match TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --addr: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let n = lock(&sim.state).instances.len();
    let bound = listener.local_addr().unwrap_or(args.addr);
    tracing::info!(addr = %bound, instances = n, "PPIO simulator listening");
    tokio::select! {
        r = sim.serve(listener) => match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => { eprintln!("error: {e}"); ExitCode::FAILURE }
        },
        _ = crate::operator::shutdown_signal() => ExitCode::SUCCESS,
    }
}
