//! Injected faults: [`Fault`] (as the control API accepts it, with builders for tests),
//! [`BodyFault`], and how a fault turns into the simulator's answer.

use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{numbers_as_strings, vendor_error};

/// A fault injected for one instance (or for all with the id `*`), for the LIST
/// ([`LIST_FAULT`](super::LIST_FAULT)) or for one money call
/// ([`PRODUCTS_FAULT`](super::PRODUCTS_FAULT), [`BILLS_FAULT`](super::BILLS_FAULT),
/// [`MONTHLY_BILLS_FAULT`](super::MONTHLY_BILLS_FAULT),
/// [`BALANCE_FAULT`](super::BALANCE_FAULT); `*` does not apply to these). Fields combine: a
/// latency is waited before the answer, then `status` or `body` decide the answer.
///
/// Build one with [`Fault::status`], [`Fault::body`] or [`Fault::latency`] and refine it
/// with the `with_*` methods:
///
/// ```
/// use ppio_operator::simulator::{BodyFault, Fault};
///
/// let rate_limited = Fault::status(429).with_retry_after("30");
/// assert_eq!(rate_limited.status, Some(429));
/// assert_eq!(rate_limited.retry_after.as_deref(), Some("30"));
/// let slow_and_broken = Fault::body(BodyFault::Truncated)
///     .with_latency(std::time::Duration::from_millis(500));
/// assert_eq!(slow_and_broken.latency_ms, Some(500));
/// ```
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
    /// LIST only (`_list`): the error status applies from this page on (1 = the first),
    /// e.g. 400 `RESOURCE_NOT_FOUND` for an expired cursor on page 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_page: Option<usize>,
    /// LIST only (`_list`): fields the items lack besides `tools` and `pricing`, as JSON
    /// pointers (`/billing/prepaid`, `/network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lean_fields: Vec<String>,
    /// LIST only (`_list`): the LIST does not end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endless: Option<Endless>,
    /// The error status answers only this share (0 to 1) of the requests it applies to,
    /// chosen by the request's number: the same requests fail run after run (1% of LIST
    /// pages failing is `{"status": 503, "share": 0.01}`). Absent: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// A LIST that does not end: past its last item, `has_more` stays true behind ever new
/// cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endless {
    /// The last page's items again.
    Repeat,
    /// Empty pages (`"data": null`).
    Empty,
    /// Pages of items never seen before.
    Fresh,
}

/// Kinds of unusual bodies (200 unless said otherwise).
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
    /// The instance with 30,000 ports whose numbers are in exponent form: under the 1 MiB
    /// response cap, far over what a status holds.
    Amplifying,
    /// The instance in a state string made to break a Prometheus scrape (quotes, newlines,
    /// a fake series) and a name with terminal escapes.
    HostileState,
    /// HTTP 404 with an HTML page, as a proxy or a wrong base URL answers.
    HtmlNotFound,
}

/// Whole milliseconds of `d` (sub-millisecond parts are dropped), saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Fault {
    /// Answer with HTTP `status` and a vendor-style error body whose `reason` matches the
    /// status (see [`Fault::with_reason`]).
    #[must_use]
    pub fn status(status: u16) -> Fault {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }

    /// Answer 200 with the unusual body `kind`.
    #[must_use]
    pub fn body(kind: BodyFault) -> Fault {
        Fault {
            body: Some(kind),
            ..Fault::default()
        }
    }

    /// Wait `latency` before answering normally (whole milliseconds).
    #[must_use]
    pub fn latency(latency: Duration) -> Fault {
        Fault::default().with_latency(latency)
    }

    /// Sets the `reason` of the error body, e.g. `RESOURCE_NOT_FOUND` with status 400.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Fault {
        self.reason = Some(reason.into());
        self
    }

    /// Sets the `Retry-After` header of the error answer, e.g. `"30"` or an HTTP date.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: impl Into<String>) -> Fault {
        self.retry_after = Some(retry_after.into());
        self
    }

    /// Waits `latency` before the answer (whole milliseconds).
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Fault {
        self.latency_ms = Some(millis(latency));
        self
    }

    /// Makes the LIST items lack `fields` (JSON pointers) besides `tools` and `pricing`.
    #[must_use]
    pub fn lean(fields: &[&str]) -> Fault {
        Fault {
            lean_fields: fields.iter().map(|f| f.to_string()).collect(),
            ..Fault::default()
        }
    }

    /// Makes the LIST go on without end, the `endless` way.
    #[must_use]
    pub fn endless(endless: Endless) -> Fault {
        Fault {
            endless: Some(endless),
            ..Fault::default()
        }
    }

    /// For the LIST: the error status applies from page `page` on (1 = the first).
    #[must_use]
    pub fn from_page(mut self, page: usize) -> Fault {
        self.from_page = Some(page);
        self
    }

    /// The error status answers only `share` (0 to 1) of the requests, chosen by request
    /// number.
    #[must_use]
    pub fn with_share(mut self, share: f64) -> Fault {
        self.share = Some(share);
        self
    }

    /// Whether the error applies to the request numbered `seq` ([`Fault::share`]): a fixed
    /// mix of the number, so the same requests fail run after run.
    pub(super) fn strikes(&self, seq: u64) -> bool {
        let Some(share) = self.share else {
            return true;
        };
        // SplitMix64's finaliser: consecutive numbers spread over the whole range.
        let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < share
    }

    /// Waits the fault's latency, if any.
    pub(super) async fn delay(&self) {
        if let Some(ms) = self.latency_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// The error answer when the fault has a status (`seq`: the request number).
    pub(super) fn error_response(&self, seq: u64) -> Option<Response> {
        if self.body == Some(BodyFault::HtmlNotFound) {
            let mut r = Response::new(axum::body::Body::from(
                "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>",
            ));
            *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return Some(r);
        }
        let status = self.status.filter(|_| self.strikes(seq))?;
        let mut r = vendor_error(status, self.reason.as_deref(), seq);
        if let Some(ra) = self
            .retry_after
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            r.headers_mut().insert(header::RETRY_AFTER, ra);
        }
        Some(r)
    }

    /// The 200 body for `instance`: its JSON, or the fault's unusual body.
    pub(super) fn body_bytes(&self, instance: &Value) -> Vec<u8> {
        match self.body {
            None => serde_json::to_vec(instance).unwrap_or_default(),
            Some(kind) => kind.render(instance),
        }
    }
}

impl BodyFault {
    /// This kind of unusual body for `instance`.
    fn render(self, instance: &Value) -> Vec<u8> {
        match self {
            BodyFault::Malformed => b"<html><body>502 Bad Gateway</body></html>".to_vec(),
            BodyFault::Truncated => {
                let full = serde_json::to_vec(instance).unwrap_or_default();
                full[..full.len() / 2].to_vec()
            }
            BodyFault::Oversized => {
                let mut big = instance.clone();
                if let Some(o) = big.as_object_mut() {
                    o.insert("padding".into(), Value::String("x".repeat(2 * 1024 * 1024)));
                }
                serde_json::to_vec(&big).unwrap_or_default()
            }
            BodyFault::NumbersAsStrings => {
                serde_json::to_vec(&numbers_as_strings(instance)).unwrap_or_default()
            }
            BodyFault::Amplifying => {
                let ports: String = (0..30_000)
                    .map(|_| r#"{"port":8e3}"#)
                    .collect::<Vec<_>>()
                    .join(",");
                let mut body = serde_json::to_string(instance).unwrap_or_default();
                if body.ends_with('}') {
                    body.pop();
                    body.push_str(&format!(r#","ports":[{ports}]}}"#));
                }
                body.into_bytes()
            }
            BodyFault::HostileState => {
                let mut v = instance.clone();
                // Only objects are changed: indexing another shape would panic (a money
                // call's answer may be any object, with a `status` of any type).
                if let Some(o) = v.as_object_mut() {
                    let status = o
                        .entry("status")
                        .or_insert_with(|| Value::Object(Default::default()));
                    if !status.is_object() {
                        *status = Value::Object(Default::default());
                    }
                    status["status"] = Value::from("run\"ning\"}\nppio_injected{x=\"1\"} 1\n# EOF");
                    o.insert("name".into(), Value::from("\u{1b}[2J\u{1b}[31mpwned\u{7}"));
                }
                serde_json::to_vec(&v).unwrap_or_default()
            }
            BodyFault::HtmlNotFound => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_json(f: &Fault) -> Value {
        serde_json::to_value(f).expect("serialize")
    }

    #[test]
    fn builders_serialize_like_the_literals() {
        let cases = [
            (
                Fault::status(503),
                Fault {
                    status: Some(503),
                    ..Default::default()
                },
                serde_json::json!({"status": 503}),
            ),
            (
                Fault::status(400).with_reason("RESOURCE_NOT_FOUND"),
                Fault {
                    status: Some(400),
                    reason: Some("RESOURCE_NOT_FOUND".into()),
                    ..Default::default()
                },
                serde_json::json!({"status": 400, "reason": "RESOURCE_NOT_FOUND"}),
            ),
            (
                Fault::status(429).with_retry_after("30"),
                Fault {
                    status: Some(429),
                    retry_after: Some("30".into()),
                    ..Default::default()
                },
                serde_json::json!({"status": 429, "retryAfter": "30"}),
            ),
            (
                Fault::latency(Duration::from_secs(3)),
                Fault {
                    latency_ms: Some(3000),
                    ..Default::default()
                },
                serde_json::json!({"latencyMs": 3000}),
            ),
            (
                Fault::body(BodyFault::NumbersAsStrings).with_latency(Duration::from_micros(1500)),
                Fault {
                    body: Some(BodyFault::NumbersAsStrings),
                    latency_ms: Some(1),
                    ..Default::default()
                },
                serde_json::json!({"body": "numbers-as-strings", "latencyMs": 1}),
            ),
            (
                Fault::status(500)
                    .with_reason("INTERNAL_SERVER_ERROR")
                    .with_retry_after("5")
                    .with_latency(Duration::from_millis(250)),
                Fault {
                    status: Some(500),
                    reason: Some("INTERNAL_SERVER_ERROR".into()),
                    retry_after: Some("5".into()),
                    latency_ms: Some(250),
                    ..Default::default()
                },
                serde_json::json!({
                    "status": 500,
                    "reason": "INTERNAL_SERVER_ERROR",
                    "retryAfter": "5",
                    "latencyMs": 250,
                }),
            ),
        ];
        for (built, literal, wire) in cases {
            assert_eq!(built, literal);
            assert_eq!(to_json(&built), to_json(&literal));
            assert_eq!(to_json(&built), wire);
            let back: Fault = serde_json::from_value(wire).expect("deserialize");
            assert_eq!(back, built);
        }
    }

    #[test]
    fn a_share_fails_about_that_many_requests_and_the_same_ones_every_time() {
        let fault = Fault::status(503).with_share(0.01);
        let struck: Vec<u64> = (0..100_000).filter(|seq| fault.strikes(*seq)).collect();
        assert!((900..=1100).contains(&struck.len()), "{}", struck.len());
        let again: Vec<u64> = (0..100_000).filter(|seq| fault.strikes(*seq)).collect();
        assert_eq!(struck, again);
        assert!((0..1000).all(|seq| Fault::status(503).strikes(seq)));
        assert!((0..1000).all(|seq| !Fault::status(503).with_share(0.0).strikes(seq)));
        assert_eq!(
            to_json(&Fault::status(503).with_share(0.25)),
            serde_json::json!({"status": 503, "share": 0.25})
        );
    }

    #[test]
    fn latency_saturates() {
        assert_eq!(Fault::latency(Duration::MAX).latency_ms, Some(u64::MAX));
    }
}
