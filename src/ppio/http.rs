//! The production PPIO client: reqwest over rustls.

use std::error::Error as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, DATE, HeaderName, HeaderValue, RETRY_AFTER};

use super::money::{self, BillQuery};
use super::{ApiKey, DecodeError, Instance, InstancePage, ListQuery, PpioApi, PpioError};
use crate::money::{Amount, BillTotals, Catalogue};

/// Characters escaped in the instance id path segment: everything but `-._~` and alphanumerics.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The PPIO API's address.
pub const DEFAULT_BASE_URL: &str = "https://api.ppio.com";
/// The default timeout of one request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a non-2xx body is read to refine its class (a vendor code, PPIO's JSON 404).
/// The rest is not read: an error answer is classified by its status line, and a long error
/// page never turns an outage into a "too large" response.
pub const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// Settings of [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    /// `https://api.ppio.com` or another host serving the same `/gpus/v2` API.
    pub base_url: String,
    /// The whole-request timeout.
    pub timeout: Duration,
    /// Bodies larger than this are rejected without being buffered.
    pub max_body_bytes: usize,
    /// A bill list larger than this is refused (its window is then asked for in slices).
    pub max_bill_bytes: usize,
    /// Accept an `http://` base URL whose host is not loopback. The API key would cross the
    /// network unencrypted, so this is off by default (`--ppio-allow-insecure-http`); `http://`
    /// to 127.0.0.0/8, `::1` or `localhost` (a local simulator or proxy) is always accepted.
    pub allow_insecure_http: bool,
    /// Certificate authorities trusted besides the built-in (Mozilla) roots, e.g. a corporate
    /// TLS proxy's (`--ppio-ca-file`).
    pub extra_roots: Vec<reqwest::Certificate>,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            base_url: DEFAULT_BASE_URL.into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: 1024 * 1024,
            max_bill_bytes: BILL_BODY_CAP,
            allow_insecure_http: false,
            extra_roots: Vec::new(),
        }
    }
}

/// The base URL was refused. The message shows the URL with any user information (a user
/// name or password before `@`) replaced by `***`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid PPIO base URL '{url}': {problem}")]
pub struct InvalidBaseUrl {
    /// The URL as given, user information redacted.
    url: String,
    problem: BaseUrlProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum BaseUrlProblem {
    #[error(
        "expected an absolute http:// or https:// URL without query or fragment, such as https://api.ppio.com"
    )]
    NotHttp,
    #[error("a user name or password in the URL is not allowed (the API key is sent in a header)")]
    UserInfo,
    #[error(
        "http:// would send the API key unencrypted and is only accepted for a loopback host (127.0.0.0/8, ::1, localhost); use https://, or allow insecure HTTP explicitly (--ppio-allow-insecure-http)"
    )]
    InsecureHttp,
    #[error("the HTTP client could not be built")]
    Client,
}

impl InvalidBaseUrl {
    fn new(raw: &str, problem: BaseUrlProblem) -> InvalidBaseUrl {
        InvalidBaseUrl {
            url: redact_userinfo(raw),
            problem,
        }
    }
}

/// `raw` with everything between the scheme's `://` (or the start) and the last `@` replaced
/// by `***`. Deliberately blunt: URL parsers disagree on where user information ends (a
/// password may hold `/`, `?` or `#`), so anything that could be one is hidden.
fn redact_userinfo(raw: &str) -> String {
    let Some(at) = raw.rfind('@') else {
        return raw.to_string();
    };
    let start = raw[..at].find("://").map_or(0, |i| i + 3);
    format!("{}***{}", &raw[..start], &raw[at..])
}

/// Whether a URL's host is a loopback address or `localhost`.
fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// The reqwest implementation of [`PpioApi`].
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base: String,
    max_body_bytes: usize,
    max_bill_bytes: usize,
}

impl HttpClient {
    pub fn new(config: &HttpClientConfig) -> Result<HttpClient, InvalidBaseUrl> {
        let bad = |problem| InvalidBaseUrl::new(&config.base_url, problem);
        let url =
            reqwest::Url::parse(&config.base_url).map_err(|_| bad(BaseUrlProblem::NotHttp))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(BaseUrlProblem::UserInfo));
        }
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(bad(BaseUrlProblem::NotHttp));
        }
        if url.scheme() == "http" && !config.allow_insecure_http && !is_loopback_host(&url) {
            return Err(bad(BaseUrlProblem::InsecureHttp));
        }
        let mut builder = reqwest::Client::builder();
        for root in &config.extra_roots {
            builder = builder.add_root_certificate(root.clone());
        }
        let http = builder
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // The key travels in a header; never follow a redirect with it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ppio-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| bad(BaseUrlProblem::Client))?;
        Ok(HttpClient {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            max_body_bytes: config.max_body_bytes,
            max_bill_bytes: config.max_bill_bytes,
        })
    }

    /// The URL of one instance: the id is percent-encoded as a single path segment, and an
    /// id made only of dots is written as `%2E`s. (`.` and `..` stay dot segments for any
    /// URL parser even so: [`PpioApi::get_instance`] refuses them, see
    /// [`PpioError::InvalidInstanceId`].)
    pub fn instance_url(&self, instance_id: &str) -> String {
        let segment = if !instance_id.is_empty() && instance_id.bytes().all(|b| b == b'.') {
            "%2E".repeat(instance_id.len())
        } else {
            utf8_percent_encode(instance_id, SEGMENT).to_string()
        };
        format!("{}/gpus/v2/instances/{segment}", self.base)
    }

    /// The parsed URL of one instance, when it still names that one instance after parsing:
    /// an empty id, `.` and `..` (also as `%2E`, `%2E%2E`) would name the collection or a
    /// parent path instead, and are refused before anything is sent.
    fn instance_request_url(&self, instance_id: &str) -> Result<reqwest::Url, PpioError> {
        let text = self.instance_url(instance_id);
        let url = reqwest::Url::parse(&text).map_err(|_| PpioError::InvalidInstanceId)?;
        if instance_id.is_empty() || url.as_str() != text {
            return Err(PpioError::InvalidInstanceId);
        }
        Ok(url)
    }

    /// The URL of the instance list.
    pub fn list_url(&self) -> String {
        format!("{}/gpus/v2/instances", self.base)
    }

    async fn fetch(&self, key: &ApiKey, instance_id: &str) -> Result<Instance, PpioError> {
        let url = self.instance_request_url(instance_id)?;
        let body = self.get_body(key, self.http.get(url)).await?;
        Ok(Instance::from_slice(&body)?)
    }

    /// `GET {base}{path}` with the key and `query`, a 2xx body of at most `limit` bytes.
    async fn read_call(
        &self,
        key: &ApiKey,
        path: &str,
        query: &[(&str, String)],
        limit: usize,
    ) -> Result<Vec<u8>, PpioError> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.get_body_capped(key, request, limit).await
    }

    async fn catalogue(&self, key: &ApiKey) -> Result<Catalogue, PpioError> {
        let query: Vec<(&str, String)> = money::PRODUCTS_QUERY
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        let body = self
            .read_call(key, money::PRODUCTS_PATH, &query, CATALOGUE_BODY_CAP)
            .await?;
        Ok(money::decode_catalogue(&body)?)
    }

    /// A bill list, decoded as it streams in (on a blocking thread, fed chunk by chunk): a
    /// whole account's month is never held in memory, as a body or as rows.
    async fn bill_totals(&self, key: &ApiKey, query: &BillQuery) -> Result<BillTotals, PpioError> {
        let request = self
            .http
            .get(format!("{}{}", self.base, query.path()))
            .query(&query.pairs());
        let mut response = self.send_ok(key, request).await?;
        let limit = self.max_bill_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(PpioError::TooLarge { limit });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (kind, window) = (query.kind, query.window);
        let decode = tokio::task::spawn_blocking(move || {
            money::decode_bills_from(ChunkReader::new(rx), kind, window)
        });
        let mut read = 0usize;
        let streamed = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > limit {
                        break Err(PpioError::TooLarge { limit });
                    }
                    // The decoder stopped early (a body that is not bills): its error says why.
                    if tx.send(chunk.to_vec()).await.is_err() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(transport_error(e)),
            }
        };
        drop(tx);
        let decoded = decode
            .await
            .map_err(|_| PpioError::Decode(DecodeError::NotBills));
        // A body cut short fails the decode too: the reason it was cut short comes first.
        streamed?;
        Ok(decoded??)
    }

    async fn available_balance(&self, key: &ApiKey) -> Result<Amount, PpioError> {
        let body = self
            .read_call(key, money::BALANCE_PATH, &[], self.max_body_bytes)
            .await?;
        Ok(money::decode_balance(&body)?)
    }

    async fn list(&self, key: &ApiKey, query: &ListQuery) -> Result<InstancePage, PpioError> {
        let request = self.http.get(self.list_url()).query(&query.pairs());
        let body = self
            .get_body_capped(
                key,
                request,
                list_body_cap(self.max_body_bytes, query.limit),
            )
            .await?;
        Ok(InstancePage::from_slice(&body)?)
    }

    /// Sends a GET with the key and returns a 2xx body; any other answer is classified by its
    /// status line, its body read only best effort and at most [`MAX_ERROR_BODY_BYTES`].
    async fn get_body(
        &self,
        key: &ApiKey,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, PpioError> {
        self.get_body_capped(key, request, self.max_body_bytes)
            .await
    }

    /// [`HttpClient::get_body`] with a 2xx body of at most `limit` bytes.
    async fn get_body_capped(
        &self,
        key: &ApiKey,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<Vec<u8>, PpioError> {
        let mut response = self.send_ok(key, request).await?;
        read_capped(&mut response, limit).await
    }

    /// Sends a GET with the key; a 2xx answer is returned unread, any other is classified by
    /// its status line, its body read only best effort and at most [`MAX_ERROR_BODY_BYTES`].
    async fn send_ok(
        &self,
        key: &ApiKey,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PpioError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| PpioError::InvalidApiKey)?;
        auth.set_sensitive(true);
        let mut response = request
            .header(AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let header = |name: HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header(RETRY_AFTER);
        let date = header(DATE);
        let body = read_error_body(&mut response).await;
        Err(PpioError::from_response_at(
            status,
            retry_after.as_deref(),
            date.as_deref(),
            &body,
            SystemTime::now(),
        ))
    }
}

/// The body cap of a LIST page of `limit` items: [`LIST_ITEM_BYTES`] per item asked for, and
/// never less than the cap of one instance's body (`instance_cap`).
pub fn list_body_cap(instance_cap: usize, limit: u32) -> usize {
    instance_cap.max(LIST_ITEM_BYTES.saturating_mul(limit as usize))
}

/// The body cap of the products catalogue.
pub const CATALOGUE_BODY_CAP: usize = 8 * 1024 * 1024;

/// The body cap of one bill answer. Bills are not paginated: a whole account's month can be
/// megabytes; a larger answer is asked for again in slices of the month (see the ledger).
pub const BILL_BODY_CAP: usize = 32 * 1024 * 1024;

/// The room a LIST page gives each item it may hold (the vendor's example item is about
/// 1 KiB).
pub const LIST_ITEM_BYTES: usize = 8 * 1024;

/// A blocking reader over the chunks of a body sent by the task that reads it.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl ChunkReader {
    fn new(chunks: tokio::sync::mpsc::Receiver<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.current = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads a 2xx body of at most `limit` bytes.
async fn read_capped(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, PpioError> {
    let announced = response.content_length();
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(PpioError::TooLarge { limit });
    }
    // Sized once when the length is announced (within the limit, checked above).
    let capacity = announced.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
    let mut body = Vec::with_capacity(capacity.min(limit));
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > limit {
            return Err(PpioError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first [`MAX_ERROR_BODY_BYTES`] of an error answer's body, or what arrived before the
/// body failed: it only refines a class the status line already decided.
async fn read_error_body(response: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

fn transport_error(e: reqwest::Error) -> PpioError {
    // A connection refused, reset or closed mid-body is an outage, like a 5xx. The message is
    // one per class; what exactly failed goes to the debug log, without the URL.
    let cause = transport_cause(&e);
    tracing::debug!(cause, "a PPIO API request failed before an answer");
    if e.is_timeout() {
        PpioError::Timeout
    } else if cause == "tls" && e.is_connect() {
        PpioError::Tls
    } else {
        PpioError::Connect
    }
}

/// What a transport failure was, as a fixed word (never the error's text, which carries the
/// URL): `timeout`, `dns`, `connection refused`, `connection reset`, `connection closed`,
/// `tls`, `connect` (another connect failure), `body` (mid-body) or `other`.
fn transport_cause(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        return "timeout";
    }
    let mut source = e.source();
    while let Some(s) = source {
        // hyper-util's connector names resolver failures "dns error".
        if s.to_string().starts_with("dns error") {
            return "dns";
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match innermost_kind(io) {
                ErrorKind::ConnectionRefused => return "connection refused",
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe => return "connection reset",
                ErrorKind::UnexpectedEof => return "connection closed",
                // rustls reports handshake and certificate failures as invalid data.
                ErrorKind::InvalidData => return "tls",
                ErrorKind::TimedOut => return "timeout",
                _ => {}
            }
        }
        source = s.source();
    }
    if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// The kind of an I/O error, looking through `Other` errors that wrap another I/O error (as
/// the TLS connector wraps rustls' `InvalidData`); `source()` skips those wrappers.
fn innermost_kind(io: &std::io::Error) -> std::io::ErrorKind {
    let mut io = io;
    while io.kind() == std::io::ErrorKind::Other {
        match io
            .get_ref()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
        {
            Some(inner) => io = inner,
            None => break,
        }
    }
    io.kind()
}

impl PpioApi for HttpClient {
    fn get_instance<'a>(
        &'a self,
        key: &'a ApiKey,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Instance, PpioError>> {
        Box::pin(self.fetch(key, instance_id))
    }

    fn list_instances<'a>(
        &'a self,
        key: &'a ApiKey,
        query: &'a ListQuery,
    ) -> BoxFuture<'a, Result<InstancePage, PpioError>> {
        Box::pin(self.list(key, query))
    }

    fn products<'a>(&'a self, key: &'a ApiKey) -> BoxFuture<'a, Result<Catalogue, PpioError>> {
        Box::pin(self.catalogue(key))
    }

    fn bills<'a>(
        &'a self,
        key: &'a ApiKey,
        query: &'a BillQuery,
    ) -> BoxFuture<'a, Result<BillTotals, PpioError>> {
        Box::pin(self.bill_totals(key, query))
    }

    fn balance<'a>(&'a self, key: &'a ApiKey) -> BoxFuture<'a, Result<Amount, PpioError>> {
        Box::pin(self.available_balance(key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    use super::*;

    fn client(base: &str) -> HttpClient {
        HttpClient::new(&HttpClientConfig {
            base_url: base.into(),
            ..Default::default()
        })
        .expect("valid")
    }

    fn key() -> ApiKey {
        ApiKey::new("sk-test-key").expect("key")
    }

    /// A local server answering every request with `answer`, recording the request paths.
    async fn serve(answer: fn() -> Response) -> (HttpClient, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let router = axum::Router::new().fallback(move |uri: Uri| {
            let log = log.clone();
            async move {
                log.lock().expect("lock").push(uri.path().to_string());
                answer()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        (client(&format!("http://{addr}")), seen)
    }

    #[test]
    fn instance_id_is_one_encoded_segment() {
        let c = client("https://api.ppio.com/");
        assert_eq!(
            c.instance_url("ca338f12f3"),
            "https://api.ppio.com/gpus/v2/instances/ca338f12f3"
        );
        assert_eq!(
            c.instance_url("a/b"),
            "https://api.ppio.com/gpus/v2/instances/a%2Fb"
        );
        assert_eq!(
            c.instance_url("../x"),
            "https://api.ppio.com/gpus/v2/instances/..%2Fx"
        );
        assert_eq!(
            c.instance_url(".."),
            "https://api.ppio.com/gpus/v2/instances/%2E%2E"
        );
        assert_eq!(
            c.instance_url("..."),
            "https://api.ppio.com/gpus/v2/instances/%2E%2E%2E"
        );
        assert_eq!(
            c.instance_url("%2F"),
            "https://api.ppio.com/gpus/v2/instances/%252F"
        );
        assert_eq!(
            c.instance_url("a?b#c"),
            "https://api.ppio.com/gpus/v2/instances/a%3Fb%23c"
        );
        let c = client("http://127.0.0.1:9/prefix");
        assert_eq!(
            c.instance_url("x.y_z-1"),
            "http://127.0.0.1:9/prefix/gpus/v2/instances/x.y_z-1"
        );
    }

    #[test]
    fn the_parsed_url_names_exactly_the_instance_or_nothing_is_sent() {
        let c = client("https://api.ppio.com/prefix/");
        for id in ["", ".", "..", "%2e", "%2E%2E"] {
            // `%2e` is encoded to `%252e`, so only the first three are dot segments.
            let r = c.instance_request_url(id);
            if matches!(id, "" | "." | "..") {
                assert_eq!(r, Err(PpioError::InvalidInstanceId), "{id:?}");
            } else {
                assert!(r.is_ok(), "{id:?}");
            }
        }
        for id in [
            "...",
            "....",
            "a..",
            "..a",
            "ca338f12f3",
            "a/../b",
            "%2E%2E",
            "é",
        ] {
            let url = c.instance_request_url(id).expect(id);
            let (dir, last) = url.path().rsplit_once('/').expect("a path");
            assert_eq!(dir, "/prefix/gpus/v2/instances", "{id:?}");
            let decoded = percent_encoding::percent_decode_str(last)
                .decode_utf8()
                .expect("utf8");
            assert_eq!(decoded, id, "{id:?}");
        }
    }

    #[tokio::test]
    async fn dot_ids_are_refused_before_anything_is_sent() {
        let (c, seen) = serve(|| StatusCode::OK.into_response()).await;
        for id in [".", ".."] {
            let e = c.get_instance(&key(), id).await.expect_err("refused");
            assert_eq!(e, PpioError::InvalidInstanceId, "{id:?}");
            assert_eq!(e.reason(), "RequestRejected");
        }
        assert!(seen.lock().expect("lock").is_empty(), "{seen:?}");
        let _ = c.get_instance(&key(), "...").await;
        assert_eq!(
            *seen.lock().expect("lock"),
            ["/gpus/v2/instances/%2E%2E%2E"]
        );
    }

    #[test]
    fn base_url_must_be_plain_http_or_https() {
        for bad in [
            "",
            "api.ppio.com",
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=b",
            "file:///etc",
        ] {
            let e = HttpClient::new(&HttpClientConfig {
                base_url: bad.into(),
                ..Default::default()
            });
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let config = |base: &str, allow: bool| HttpClientConfig {
            base_url: base.into(),
            allow_insecure_http: allow,
            ..Default::default()
        };
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.9.8.7",
            "http://[::1]:9",
            "http://localhost:3000/x",
            "http://LOCALHOST",
            "https://api.ppio.com",
            "https://10.0.0.1",
        ] {
            assert!(HttpClient::new(&config(ok, false)).is_ok(), "{ok}");
        }
        for remote in [
            "http://api.ppio.com",
            "http://10.0.0.1",
            "http://[2001:db8::1]",
            "http://localhost.example.com",
            "http://128.0.0.1",
        ] {
            let e = HttpClient::new(&config(remote, false))
                .err()
                .expect(remote)
                .to_string();
            assert!(
                e.contains("unencrypted") && e.contains("loopback"),
                "{remote}: {e}"
            );
            assert!(HttpClient::new(&config(remote, true)).is_ok(), "{remote}");
        }
        assert!(!HttpClientConfig::default().allow_insecure_http);
    }

    #[test]
    fn a_refused_base_url_never_repeats_its_password() {
        for bad in [
            "https://user:s3cret@api.ppio.com",
            "https://s3cret@api.ppio.com/",
            "https://user:s3/cret@api.ppio.com",
            "https://user:s3?cret@api.ppio.com",
            "https://user:s3#cret@api.ppio.com",
            "user:s3cret@api.ppio.com",
            "https:user:s3cret@api.ppio.com",
            "https://user:s3cret@bad host",
            "ftp://user:s3cret@x",
        ] {
            for allow in [false, true] {
                let e = HttpClient::new(&HttpClientConfig {
                    base_url: bad.into(),
                    allow_insecure_http: allow,
                    ..Default::default()
                })
                .err()
                .expect(bad);
                let text = format!("{e} {e:?}");
                assert!(!text.contains("s3"), "{bad}: {text}");
                assert!(text.contains("***@"), "{bad}: {text}");
            }
        }
        let e = HttpClient::new(&HttpClientConfig {
            base_url: "https://user:s3cret@api.ppio.com/v".into(),
            ..Default::default()
        })
        .err()
        .expect("refused");
        assert_eq!(
            e.to_string(),
            "invalid PPIO base URL 'https://***@api.ppio.com/v': a user name or password in the URL is not allowed (the API key is sent in a header)"
        );
        assert_eq!(
            redact_userinfo("https://api.ppio.com"),
            "https://api.ppio.com"
        );
    }

    #[tokio::test]
    async fn a_key_that_is_no_header_value_is_not_a_401() {
        let (c, seen) = serve(|| StatusCode::UNAUTHORIZED.into_response()).await;
        for raw in ["sk-abc\u{1}def", "sk-abc\ndef", "sk-abc\u{7f}", "sk-\u{0}x"] {
            let k = ApiKey::new(raw).expect("key");
            let e = c.get_instance(&k, "x").await.expect_err("refused");
            assert_eq!(e, PpioError::InvalidApiKey, "{raw:?}");
            assert_eq!(e.reason(), "CredentialsMissing");
            assert_eq!(
                e.to_string(),
                "the API key contains characters that cannot be sent in an HTTP header"
            );
            let e = c
                .list_instances(&k, &ListQuery::default())
                .await
                .expect_err("refused");
            assert_eq!(e, PpioError::InvalidApiKey, "{raw:?}");
        }
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn a_404_without_ppio_json_is_not_the_instance_gone() {
        let (c, _) = serve(|| {
            (
                StatusCode::NOT_FOUND,
                [("content-type", "text/html")],
                "<html><body>404 Not Found</body></html>",
            )
                .into_response()
        })
        .await;
        let e = c.get_instance(&key(), "x").await.expect_err("404");
        assert_eq!(e, PpioError::NotFoundWithoutPpioBody);
        assert_eq!(e.reason(), "ApiUnavailable");
        let (c, _) = serve(|| StatusCode::NOT_FOUND.into_response()).await;
        let e = c.get_instance(&key(), "x").await.expect_err("404");
        assert_eq!(e, PpioError::NotFoundWithoutPpioBody);
        let (c, _) = serve(|| {
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({"code": 404, "reason": "RESOURCE_NOT_FOUND"})),
            )
                .into_response()
        })
        .await;
        let e = c.get_instance(&key(), "x").await.expect_err("404");
        assert_eq!(e, PpioError::NotFound { status: 404 });
    }

    #[tokio::test]
    async fn a_large_error_body_does_not_hide_the_status() {
        // 2 MiB: over both the error body cap and the 1 MiB body limit.
        let (c, _) = serve(|| {
            (StatusCode::SERVICE_UNAVAILABLE, vec![b'x'; 2 * 1024 * 1024]).into_response()
        })
        .await;
        let e = c.get_instance(&key(), "x").await.expect_err("503");
        assert_eq!(e, PpioError::Server { status: 503 });
        let (c, _) = serve(|| {
            let mut body = br#"{"reason":"INVALID_PARAMS","pad":""#.to_vec();
            body.extend(vec![b'x'; 64 * 1024]);
            body.extend(br#""}"#);
            (StatusCode::BAD_REQUEST, body).into_response()
        })
        .await;
        let e = c
            .list_instances(&key(), &ListQuery::default())
            .await
            .expect_err("400");
        assert_eq!(
            e,
            PpioError::Rejected {
                status: 400,
                code: None
            }
        );
        // A 2xx body over the limit is still refused.
        let (c, _) = serve(|| (StatusCode::OK, vec![b' '; 2 * 1024 * 1024]).into_response()).await;
        let e = c.get_instance(&key(), "x").await.expect_err("too large");
        assert_eq!(e, PpioError::TooLarge { limit: 1024 * 1024 });
    }

    #[tokio::test]
    async fn a_bill_list_streams_in_and_one_over_its_cap_is_refused() {
        use crate::money::Window;
        use crate::ppio::{BillKind, BillQuery};
        fn bills() -> Response {
            // About 2.6 MiB: 20,000 rows, one of them the instance's.
            let mut rows: Vec<String> = (0..20_000)
                .map(|i| {
                    format!(
                        r#"{{"ownerID":"other-{i}","startTime":"1764547200","endTime":"1764550799","payAmount":"1","amount":"1","productName":"padding padding padding padding padding"}}"#
                    )
                })
                .collect();
            rows.push(
                r#"{"ownerID":"i-1","startTime":"1764547200","endTime":"1764550799","payAmount":"12345"}"#
                    .into(),
            );
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"bills":[{}]}}"#, rows.join(",")),
            )
                .into_response()
        }
        let (client, _) = serve(bills).await;
        let query = BillQuery {
            kind: BillKind::PayAsYouGo,
            window: Window {
                start: 1_764_547_200,
                end: 1_767_225_600,
            },
            owner: None,
        };
        let totals = client.bill_totals(&key(), &query).await.expect("decoded");
        assert_eq!(totals.by_owner.len(), 20_001);
        assert_eq!(totals.by_owner["i-1"].paid, 12_345);
        let small = HttpClient {
            max_bill_bytes: 1024 * 1024,
            ..client
        };
        assert_eq!(
            small.bill_totals(&key(), &query).await,
            Err(PpioError::TooLarge { limit: 1024 * 1024 })
        );
    }

    #[tokio::test]
    async fn a_list_page_has_a_cap_sized_for_the_page_asked_for() {
        // A page of 1,000 items of about 2 KiB: over one instance's 1 MiB cap, within the
        // page's own.
        fn big_page() -> Response {
            static BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                let item = format!(
                    r#"{{"id":"i","status":{{"status":"running"}},"pad":"{}"}}"#,
                    "x".repeat(2000)
                );
                format!(
                    r#"{{"data":[{}],"has_more":false}}"#,
                    vec![item; 1000].join(",")
                )
            });
            assert!(BODY.len() > 1024 * 1024);
            (StatusCode::OK, BODY.clone()).into_response()
        }
        let (c, _) = serve(big_page).await;
        let query = ListQuery {
            limit: 1000,
            ..ListQuery::default()
        };
        let page = c.list_instances(&key(), &query).await.expect("a page");
        assert_eq!(page.len(), 1000);
        // Asked for 100 items, the same body is over its cap.
        let small = ListQuery {
            limit: 100,
            ..ListQuery::default()
        };
        let e = c
            .list_instances(&key(), &small)
            .await
            .expect_err("too large");
        assert_eq!(e, PpioError::TooLarge { limit: 1024 * 1024 });
        assert_eq!(list_body_cap(1024 * 1024, 1000), 8000 * 1024);
    }

    #[tokio::test]
    async fn retry_after_date_is_read_against_the_date_header() {
        // The server's clock is far behind ours: judged by the local clock, the date would be
        // long past and the wait zero.
        let (c, _) = serve(|| {
            let server_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
            let mut headers = HeaderMap::new();
            let date = httpdate::fmt_http_date(server_now);
            let at = httpdate::fmt_http_date(server_now + Duration::from_secs(120));
            headers.insert(DATE, HeaderValue::from_str(&date).expect("date"));
            headers.insert(RETRY_AFTER, HeaderValue::from_str(&at).expect("date"));
            (StatusCode::TOO_MANY_REQUESTS, headers, "{}").into_response()
        })
        .await;
        let e = c.get_instance(&key(), "x").await.expect_err("429");
        assert_eq!(
            e,
            PpioError::RateLimited {
                retry_after: Some(Duration::from_secs(120))
            }
        );
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn transport_failure(base: &str) -> reqwest::Error {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(format!("{base}/gpus/v2/instances/x"))
            .send()
            .await
            .expect_err("fails")
    }

    #[tokio::test]
    async fn transport_failures_share_one_message_and_log_their_cause() {
        // Nothing listens on a port just released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let e = transport_failure(&closed).await;
        assert_eq!(transport_cause(&e), "connection refused");
        // TLS to a plain HTTP server.
        let (plain, _) = serve(|| StatusCode::OK.into_response()).await;
        let tls = plain.base.replace("http://", "https://");
        let e = transport_failure(&tls).await;
        assert_eq!(transport_cause(&e), "tls");
        // `.invalid` never resolves.
        let e = transport_failure("https://ppio-operator-test.invalid").await;
        assert_eq!(transport_cause(&e), "dns");

        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("ppio_operator=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        for (base, cause) in [(closed.as_str(), "connection refused"), (&tls, "tls")] {
            let c = client(base);
            let e = c
                .get_instance(&key(), "id-marker")
                .await
                .expect_err("fails");
            if cause == "tls" {
                assert_eq!(e, PpioError::Tls);
                assert!(e.to_string().contains("--ppio-ca-file"), "{e}");
            } else {
                assert_eq!(e, PpioError::Connect);
                assert_eq!(e.to_string(), "could not connect to the PPIO API");
            }
            let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
            assert!(logs.contains(&format!("cause=\"{cause}\"")), "{logs}");
            assert!(!logs.contains("id-marker"), "the URL in the log: {logs}");
            assert!(!logs.contains("127.0.0.1"), "the URL in the log: {logs}");
            assert!(!logs.contains("sk-test-key"), "the key in the log: {logs}");
        }
    }
}
