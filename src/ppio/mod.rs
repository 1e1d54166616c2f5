//! The PPIO v2 API as the operator sees it: one read call behind a trait, and one
//! classification of everything that can go wrong with it.

mod http;
pub mod money;
pub mod wire;

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

pub use http::{
    BILL_BODY_CAP, CATALOGUE_BODY_CAP, DEFAULT_BASE_URL, DEFAULT_REQUEST_TIMEOUT, HttpClient,
    HttpClientConfig, InvalidBaseUrl,
};
pub use money::{BillKind, BillQuery};
pub use wire::{DecodeError, Instance, InstancePage};

use crate::money::{Amount, BillTotals, Catalogue};

/// A PPIO API key. It has no `Display` and its `Debug` is redacted, so it cannot end up in a
/// log line or an error message by accident.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; surrounding whitespace (a trailing newline in a Secret) is dropped.
    /// An empty key is no key.
    pub fn new(raw: &str) -> Option<ApiKey> {
        let k = raw.trim();
        (!k.is_empty()).then(|| ApiKey(k.to_string()))
    }

    /// The key itself, for the Authorization header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Everything that can go wrong reading an instance, classified once. The `Display` text is
/// fixed per class (no response text, no request ids, no durations, never the key), so it is
/// safe for status messages, Events and logs, and identical for identical failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PpioError {
    #[error("could not connect to the PPIO API")]
    Connect,
    /// The TLS handshake failed: most often a certificate no trusted authority signed (a
    /// corporate TLS proxy: trust its CA with `--ppio-ca-file`).
    #[error(
        "could not connect to the PPIO API: the TLS handshake failed (is its certificate signed by a trusted authority? see --ppio-ca-file)"
    )]
    Tls,
    #[error("the PPIO API did not answer within the request timeout")]
    Timeout,
    /// The key is not a valid HTTP header value (a control or non-ASCII character): nothing
    /// was sent.
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey,
    /// The instance id cannot be sent as one URL path segment (empty, `.` or `..`, which any
    /// URL parser turns into a dot segment even when percent-encoded): nothing was sent.
    #[error("the instance id cannot be sent as one URL path segment")]
    InvalidInstanceId,
    #[error("the PPIO API rejected the API key (HTTP 401)")]
    Unauthorized,
    #[error("the API key is not allowed to read this instance (HTTP 403)")]
    Forbidden,
    /// PPIO's own answer: a 404 with a JSON body, or a 400 `RESOURCE_NOT_FOUND`.
    #[error("the PPIO API reports that the instance does not exist")]
    NotFound { status: u16 },
    /// A 404 whose body is not PPIO's JSON (an HTML page, an empty body): a proxy or a wrong
    /// base URL path answered, not PPIO, so it says nothing about the instance.
    #[error(
        "the PPIO API answered HTTP 404 without a PPIO error body (a proxy or a wrong base URL?)"
    )]
    NotFoundWithoutPpioBody,
    #[error("the PPIO API rate limit was reached (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the PPIO API refused the request (HTTP {status}{})", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Rejected { status: u16, code: Option<String> },
    #[error("the PPIO API failed (HTTP {status})")]
    Server { status: u16 },
    #[error("the PPIO API answered with unexpected HTTP status {status}")]
    UnexpectedStatus { status: u16 },
    #[error("the PPIO API response is larger than the {limit} byte limit")]
    TooLarge { limit: usize },
    #[error("the PPIO API response could not be decoded: {0}")]
    Decode(#[from] DecodeError),
}

impl PpioError {
    /// Classifies a non-success HTTP answer from its status, `Retry-After` header and body,
    /// for an answer without a `Date` header (see [`PpioError::from_response_at`]).
    pub fn from_response(
        status: u16,
        retry_after: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> PpioError {
        PpioError::from_response_at(status, retry_after, None, body, now)
    }

    /// Classifies a non-success HTTP answer. The status line decides the class; the body
    /// (best effort, possibly cut short) only refines it: a 404 is PPIO's "instance gone"
    /// only when its body is a JSON object, and a 4xx's vendor code is read from it.
    /// `date` is the answer's `Date` header: a `Retry-After` HTTP date is judged against it
    /// (the server's clock), and against `now` only when it is absent or unreadable.
    pub fn from_response_at(
        status: u16,
        retry_after: Option<&str>,
        date: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> PpioError {
        match status {
            401 => PpioError::Unauthorized,
            403 => PpioError::Forbidden,
            404 if is_json_object(body) => PpioError::NotFound { status },
            404 => PpioError::NotFoundWithoutPpioBody,
            429 => PpioError::RateLimited {
                retry_after: retry_after.and_then(|v| parse_retry_after(v, date, now)),
            },
            400..=499 => {
                let code = vendor_error_code(body);
                if code.as_deref() == Some("RESOURCE_NOT_FOUND") {
                    PpioError::NotFound { status }
                } else {
                    PpioError::Rejected { status, code }
                }
            }
            500..=599 => PpioError::Server { status },
            _ => PpioError::UnexpectedStatus { status },
        }
    }
}

/// The longest `Retry-After` honoured; a larger value is capped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses `Retry-After` as delay-seconds or as an HTTP date (RFC 9110 §10.2.3). An HTTP date
/// is a point on the server's clock, so it is measured from the answer's `Date` header
/// (`date`) when that parses, so a skewed local clock does not stretch or cancel the wait;
/// from `now` otherwise. Pure: the caller passes both.
pub fn parse_retry_after(value: &str, date: Option<&str>, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        let reference = date
            .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
            .unwrap_or(now);
        at.duration_since(reference).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Whether an error body is a JSON object, as PPIO's error bodies are.
fn is_json_object(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok()
}

/// The vendor's symbolic error code from an error body (`reason`, or a string `code` or
/// `error`), when it looks like one (`UPPER_SNAKE_CASE`, at most 64 characters). Free text
/// from the body is never returned.
fn vendor_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let nested = obj.get("error").and_then(|e| e.as_object());
    let candidates = ["reason", "code", "error"]
        .into_iter()
        .filter_map(|k| obj.get(k))
        .chain(
            nested
                .into_iter()
                .flat_map(|n| ["reason", "code"].into_iter().filter_map(|k| n.get(k))),
        );
    candidates
        .filter_map(|c| c.as_str())
        .map(str::trim)
        .find(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.starts_with(|ch: char| ch.is_ascii_uppercase())
                && c.chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
        })
        .map(str::to_string)
}

/// The filters and paging of one `GET /gpus/v2/instances` request, as the API names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Page size; 0: the server's default.
    pub limit: u32,
    /// The previous page's `next_cursor`; `None` for the first page.
    pub cursor: Option<String>,
    /// Fuzzy match on the instance name or id.
    pub name: Option<String>,
    /// The instance state (`status`).
    pub status: Option<String>,
    /// Region ids (`regions`, comma separated on the wire).
    pub regions: Vec<String>,
    /// `postpaid`, `prepaid` or `spot`.
    pub billing_mode: Option<String>,
}

impl ListQuery {
    /// The query string pairs, in a fixed order, without empty values.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.limit > 0 {
            out.push(("limit", self.limit.to_string()));
        }
        let text = [
            ("cursor", &self.cursor),
            ("name", &self.name),
            ("status", &self.status),
            ("billing_mode", &self.billing_mode),
        ];
        for (k, v) in text {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                out.push((k, v.to_string()));
            }
        }
        if !self.regions.is_empty() {
            out.push(("regions", self.regions.join(",")));
        }
        out
    }
}

/// The read calls the operator makes. Implemented over HTTP by [`HttpClient`] and by fakes in
/// tests.
pub trait PpioApi: Send + Sync {
    /// `GET /gpus/v2/instances/{id}`.
    fn get_instance<'a>(
        &'a self,
        key: &'a ApiKey,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Instance, PpioError>>;

    /// `GET /gpus/v2/instances`: one page.
    fn list_instances<'a>(
        &'a self,
        key: &'a ApiKey,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<InstancePage, PpioError>>;

    /// `GET /gpus/v2/products?type=gpu&category=instance`: the catalogue's hourly prices.
    /// Without an implementation: not served.
    fn products<'a>(&'a self, _key: &'a ApiKey) -> BoxFuture<'a, Result<Catalogue, PpioError>> {
        Box::pin(async { Err(PpioError::UnexpectedStatus { status: 501 }) })
    }

    /// One bill list (pay-as-you-go or prepaid), folded into totals per instance.
    /// Without an implementation: not served.
    fn bills<'a>(
        &'a self,
        _key: &'a ApiKey,
        _query: &'a BillQuery,
    ) -> BoxFuture<'a, Result<BillTotals, PpioError>> {
        Box::pin(async { Err(PpioError::UnexpectedStatus { status: 501 }) })
    }

    /// The account's available balance (1/10000 of the currency). Without an
    /// implementation: not served.
    fn balance<'a>(&'a self, _key: &'a ApiKey) -> BoxFuture<'a, Result<Amount, PpioError>> {
        Box::pin(async { Err(PpioError::UnexpectedStatus { status: 501 }) })
    }
}

impl PpioError {
    /// The answer says the call itself is not served here (404, 405, 501), not that an
    /// instance is gone or that PPIO failed.
    pub fn call_not_served(&self) -> bool {
        matches!(
            self,
            PpioError::NotFound { .. }
                | PpioError::NotFoundWithoutPpioBody
                | PpioError::Rejected {
                    status: 404 | 405,
                    ..
                }
                | PpioError::Server { status: 501 }
                | PpioError::UnexpectedStatus { status: 405 | 501 }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> PpioError {
        PpioError::from_response(status, None, body.as_bytes(), SystemTime::now())
    }

    #[test]
    fn every_status_class_maps_to_a_reason() {
        assert_eq!(classify(401, "").reason(), "Unauthorized");
        assert_eq!(classify(403, "").reason(), "Forbidden");
        assert_eq!(
            classify(404, r#"{"code":404,"reason":"RESOURCE_NOT_FOUND"}"#).reason(),
            "InstanceNotFound"
        );
        assert_eq!(classify(404, "{}").reason(), "InstanceNotFound");
        assert_eq!(
            classify(
                400,
                r#"{"code":400,"reason":"RESOURCE_NOT_FOUND","message":"x"}"#
            )
            .reason(),
            "InstanceNotFound"
        );
        assert_eq!(
            classify(400, r#"{"error":{"code":"RESOURCE_NOT_FOUND"}}"#).reason(),
            "InstanceNotFound"
        );
        assert_eq!(
            classify(400, r#"{"reason":"INVALID_PARAMS"}"#).reason(),
            "RequestRejected"
        );
        assert_eq!(
            classify(400, "RESOURCE_NOT_FOUND").reason(),
            "RequestRejected"
        );
        assert_eq!(classify(429, "").reason(), "RateLimited");
        assert_eq!(classify(500, "").reason(), "ApiUnavailable");
        assert_eq!(classify(503, "").reason(), "ApiUnavailable");
        assert_eq!(classify(302, "").reason(), "InvalidResponse");
        assert_eq!(PpioError::Timeout.reason(), "ApiUnavailable");
        assert_eq!(PpioError::Connect.reason(), "ApiUnavailable");
        assert_eq!(PpioError::TooLarge { limit: 1 }.reason(), "InvalidResponse");
        assert_eq!(
            PpioError::Decode(DecodeError::NoState).reason(),
            "InvalidResponse"
        );
    }

    #[test]
    fn vendor_free_text_never_reaches_the_error() {
        let e = classify(
            422,
            r#"{"reason":"lowercase secret-ish text","message":"token=abc"}"#,
        );
        assert_eq!(
            e,
            PpioError::Rejected {
                status: 422,
                code: None
            }
        );
        assert_eq!(e.to_string(), "the PPIO API refused the request (HTTP 422)");
        let e = classify(400, r#"{"reason":"INVALID_PARAMS"}"#);
        assert_eq!(
            e.to_string(),
            "the PPIO API refused the request (HTTP 400 INVALID_PARAMS)"
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("30", None, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(" 7 ", None, now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            parse_retry_after(&later, None, now),
            Some(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(parse_retry_after(&past, None, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", None, now), None);
        assert_eq!(
            parse_retry_after("999999", None, now),
            Some(MAX_RETRY_AFTER)
        );
        let e = PpioError::from_response(429, Some("30"), b"", now);
        assert_eq!(
            e,
            PpioError::RateLimited {
                retry_after: Some(Duration::from_secs(30))
            }
        );
    }

    #[test]
    fn a_404_is_the_instance_gone_only_with_a_ppio_json_body() {
        for body in [
            "",
            "<html><body><h1>404 Not Found</h1></body></html>",
            "404 page not found",
            "null",
            "[1]",
        ] {
            let e = classify(404, body);
            assert_eq!(e, PpioError::NotFoundWithoutPpioBody, "{body:?}");
            assert_eq!(e.reason(), "ApiUnavailable", "{body:?}");
            assert_eq!(
                e.to_string(),
                "the PPIO API answered HTTP 404 without a PPIO error body (a proxy or a wrong base URL?)"
            );
        }
        assert_eq!(
            classify(
                404,
                r#"{"code":404,"reason":"RESOURCE_NOT_FOUND","message":"m"}"#
            ),
            PpioError::NotFound { status: 404 }
        );
    }

    #[test]
    fn a_retry_after_date_is_judged_by_the_server_clock() {
        // The local clock runs an hour ahead of the server's.
        let server_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let local_now = server_now + Duration::from_secs(3600);
        let date = httpdate::fmt_http_date(server_now);
        let at = httpdate::fmt_http_date(server_now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&at, Some(&date), local_now),
            Some(Duration::from_secs(90))
        );
        // And an hour behind: the wait is not stretched by the skew.
        let local_now = server_now - Duration::from_secs(3000);
        assert_eq!(
            parse_retry_after(&at, Some(&date), local_now),
            Some(Duration::from_secs(90))
        );
        // No (or an unreadable) Date header: the local clock.
        assert_eq!(
            parse_retry_after(&at, Some("yesterday"), server_now),
            Some(Duration::from_secs(90))
        );
        // Delay-seconds need no clock.
        assert_eq!(
            parse_retry_after("5", Some(&date), local_now),
            Some(Duration::from_secs(5))
        );
        let e = PpioError::from_response_at(429, Some(&at), Some(&date), b"", local_now);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(90)));
    }

    #[test]
    fn api_key_debug_is_redacted() {
        let k = ApiKey::new(" sk-marker \n").expect("key");
        assert_eq!(k.expose(), "sk-marker");
        assert!(!format!("{k:?}").contains("marker"));
        assert!(ApiKey::new("  \n").is_none());
    }
}
