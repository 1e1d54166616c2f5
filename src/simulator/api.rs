//! The vendor API as PPIO serves it: `GET /gpus/v2/instances/{id}` and the paged LIST,
//! bearer key authorization and request counting for every vendor call (the money calls of
//! [`money`](super::money) too), vendor-style error bodies and the JSON response helpers.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Endless, Simulator};
use crate::lock;

/// Which vendor call a request is, for the request counters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Call<'a> {
    /// `GET /gpus/v2/instances/{id}`: counted per instance id.
    Instance(&'a str),
    /// The paged LIST.
    List,
    /// A money call, counted under its name in [`Counts::calls`](super::Counts::calls).
    Money(&'static str),
}

impl Simulator {
    /// Checks the key and counts the request. `Err` is the 401 answer.
    pub(super) fn authorize(
        &self,
        headers: &HeaderMap,
        call: Call<'_>,
    ) -> Result<(), Box<Response>> {
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
        match call {
            Call::Instance(id) => *st.counts.instances.entry(id.to_string()).or_default() += 1,
            Call::List => st.counts.list += 1,
            Call::Money(name) => *st.counts.calls.entry(name.to_string()).or_default() += 1,
        }
        st.request_seq += 1;
        let seq = st.request_seq;
        if label == "invalid" {
            return Err(Box::new(vendor_error(401, None, seq)));
        }
        Ok(())
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
pub(super) fn vendor_error(status: u16, reason: Option<&str>, seq: u64) -> Response {
    vendor_error_detail(status, reason, None, seq)
}

/// A vendor-style error whose message also says `detail` (what was wrong).
pub(super) fn vendor_error_detail(
    status: u16,
    reason: Option<&str>,
    detail: Option<&str>,
    seq: u64,
) -> Response {
    let reason = reason.unwrap_or(default_reason(status));
    let message = match detail {
        Some(d) => format!("simulated {reason}: {d} (request {seq})"),
        None => format!("simulated {reason} (request {seq})"),
    };
    let body = json!({
        "code": status,
        "reason": reason,
        "message": message,
        "metadata": {"request_id": format!("sim-{seq:08}")},
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(body)).into_response()
}

/// `v` with every integer turned into a string, as some vendor gateways send them.
pub(super) fn numbers_as_strings(v: &Value) -> Value {
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

/// An answer with `bytes` as an `application/json` body, valid JSON or not.
pub(super) fn json_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /gpus/v2/instances/{id}`.
pub(super) async fn get_instance(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers, Call::Instance(&id)) {
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
    fault.delay().await;
    if let Some(r) = fault.error_response(seq) {
        return r;
    }
    let Some(instance) = instance else {
        return vendor_error(not_found, Some("RESOURCE_NOT_FOUND"), seq);
    };
    json_response(StatusCode::OK, fault.body_bytes(&instance))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    name: Option<String>,
    status: Option<String>,
    regions: Option<String>,
    billing_mode: Option<String>,
}

impl ListQuery {
    /// The LIST's filters, read once for all the instances they are matched against.
    fn filter(&self) -> ListFilter<'_> {
        fn asked(f: &Option<String>) -> Option<&str> {
            f.as_deref().filter(|v| !v.is_empty())
        }
        ListFilter {
            name: asked(&self.name),
            status: asked(&self.status),
            billing_mode: asked(&self.billing_mode),
            regions: self
                .regions
                .as_deref()
                .map(|r| {
                    r.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The filters of a LIST (an empty value filters nothing).
struct ListFilter<'a> {
    name: Option<&'a str>,
    status: Option<&'a str>,
    billing_mode: Option<&'a str>,
    regions: Vec<&'a str>,
}

impl ListFilter<'_> {
    /// Whether the filters (name or id, status, regions, billing mode) keep `i`.
    fn keeps(&self, i: &Value) -> bool {
        let str_at = |path: &[&str]| {
            path.iter()
                .try_fold(i, |v, k| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        self.name
            .is_none_or(|n| str_at(&["name"]).contains(n) || str_at(&["id"]).contains(n))
            && self
                .status
                .is_none_or(|s| str_at(&["status", "status"]) == s)
            && (self.regions.is_empty() || self.regions.contains(&str_at(&["region"])))
            && self
                .billing_mode
                .is_none_or(|m| str_at(&["billing", "mode"]) == m)
    }
}

/// The items of the page from `start` (at most `limit`); past the end, what an endless LIST
/// serves.
fn page_items(
    matching: Vec<&Value>,
    start: usize,
    limit: usize,
    endless: Option<Endless>,
) -> Vec<Value> {
    let total = matching.len();
    match endless {
        Some(Endless::Repeat) if start >= total => matching
            .iter()
            .rev()
            .take(limit)
            .map(|i| (*i).clone())
            .collect(),
        Some(Endless::Fresh) if start >= total => (start..start + limit)
            .map(|n| json!({"id": format!("ghost-{n}"), "status": {"status": "running"}}))
            .collect(),
        _ => matching
            .into_iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect(),
    }
}

/// The fault id that applies to the LIST call alone.
pub const LIST_FAULT: &str = "_list";

/// The page size when `limit` is 0 or absent.
pub const DEFAULT_PAGE: usize = 20;
/// The largest page served, whatever `limit` asks (PPIO documents none; clients must follow
/// `next_cursor` anyway).
pub const MAX_PAGE: usize = 500;

/// `GET /gpus/v2/instances`: filtered, paged, without `tools` and `pricing`. The fault set
/// for the LIST alone (`_list`), else the one for every instance (`*`), applies to it
/// (latency and error status).
pub(super) async fn list_instances(
    State(sim): State<Simulator>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = sim.authorize(&headers, Call::List) {
        return *denied;
    }
    let (fault, seq) = {
        let st = lock(&sim.state);
        (
            st.faults
                .get(LIST_FAULT)
                .or_else(|| st.faults.get("*"))
                .cloned()
                .unwrap_or_default(),
            st.request_seq,
        )
    };
    fault.delay().await;
    let page_size = q
        .limit
        .filter(|l| *l > 0)
        .unwrap_or(DEFAULT_PAGE)
        .min(MAX_PAGE);
    let page_number = |start: usize| start / page_size + 1;
    let start = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => match c.strip_prefix("o").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if c.len() <= 1024 => n,
            _ => return vendor_error(400, Some("INVALID_PARAMS"), seq),
        },
    };
    if fault.from_page.is_none_or(|p| page_number(start) >= p)
        && let Some(r) = fault.error_response(seq)
    {
        return r;
    }
    let st = lock(&sim.state);
    // Only the page's items are copied: a walk over many instances reads many pages.
    let filter = q.filter();
    let matching: Vec<&Value> = st.instances.values().filter(|i| filter.keeps(i)).collect();
    let limit = page_size;
    let total = matching.len();
    let sources = page_items(matching, start, limit, fault.endless);
    drop(st);
    let page: Vec<Value> = sources
        .into_iter()
        .map(|mut item| {
            lean_item(&mut item, &fault.lean_fields);
            item
        })
        .collect();
    let (end, has_more) = match fault.endless {
        Some(_) => (start + limit, true),
        None => (start + page.len(), start + page.len() < total),
    };
    let data = if page.is_empty() && fault.endless == Some(Endless::Empty) {
        Value::Null
    } else {
        Value::Array(page)
    };
    Json(json!({
        "data": data,
        "next_cursor": if has_more { format!("o{end}") } else { String::new() },
        "has_more": has_more,
        "total": total,
    }))
    .into_response()
}

/// Makes `item` (an instance) a LIST item: without `tools`, `pricing` and the `lean`
/// fields (JSON pointers such as `/billing/prepaid`).
pub fn lean_item(item: &mut Value, lean: &[impl AsRef<str>]) {
    if let Some(o) = item.as_object_mut() {
        o.remove("tools");
        o.remove("pricing");
    }
    for pointer in lean {
        if let Some((parent, field)) = pointer.as_ref().rsplit_once('/')
            && let Some(Value::Object(p)) = item.pointer_mut(parent)
        {
            p.remove(field);
        }
    }
}
