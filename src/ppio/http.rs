//! The production PPIO client: reqwest over rustls.

use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};

use super::{ApiKey, Instance, InstancePage, ListQuery, PpioApi, PpioError};

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

/// Settings of [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    /// `https://api.ppio.com` or another host serving the same `/gpus/v2` API.
    pub base_url: String,
    /// The whole-request timeout.
    pub timeout: Duration,
    /// Bodies larger than this are rejected without being buffered.
    pub max_body_bytes: usize,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            base_url: DEFAULT_BASE_URL.into(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The base URL is not an absolute http(s) URL without query or fragment.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "invalid PPIO base URL '{0}': expected an absolute http:// or https:// URL such as https://api.ppio.com"
)]
pub struct InvalidBaseUrl(pub String);

/// The reqwest implementation of [`PpioApi`].
#[derive(Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base: String,
    max_body_bytes: usize,
}

impl HttpClient {
    pub fn new(config: &HttpClientConfig) -> Result<HttpClient, InvalidBaseUrl> {
        let bad = || InvalidBaseUrl(config.base_url.clone());
        let url = reqwest::Url::parse(&config.base_url).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(bad());
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            // The key travels in a header; never follow a redirect with it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ppio-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| bad())?;
        Ok(HttpClient {
            http,
            base: url.as_str().trim_end_matches('/').to_string(),
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The URL of one instance: the id is percent-encoded as a single path segment.
    pub fn instance_url(&self, instance_id: &str) -> String {
        let segment = match instance_id {
            "." => "%2E".to_string(),
            ".." => "%2E%2E".to_string(),
            id => utf8_percent_encode(id, SEGMENT).to_string(),
        };
        format!("{}/gpus/v2/instances/{segment}", self.base)
    }

    /// The URL of the instance list.
    pub fn list_url(&self) -> String {
        format!("{}/gpus/v2/instances", self.base)
    }

    async fn fetch(&self, key: &ApiKey, instance_id: &str) -> Result<Instance, PpioError> {
        let body = self
            .get_body(key, self.http.get(self.instance_url(instance_id)))
            .await?;
        Ok(Instance::from_slice(&body)?)
    }

    async fn list(&self, key: &ApiKey, query: &ListQuery) -> Result<InstancePage, PpioError> {
        let request = self.http.get(self.list_url()).query(&query.pairs());
        let body = self.get_body(key, request).await?;
        Ok(InstancePage::from_slice(&body)?)
    }

    /// Sends a GET with the key and returns a 2xx body; any other answer is classified.
    async fn get_body(
        &self,
        key: &ApiKey,
        request: reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, PpioError> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
            .map_err(|_| PpioError::Unauthorized)?;
        auth.set_sensitive(true);
        let mut response = request
            .header(AUTHORIZATION, auth)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_capped(&mut response).await?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(PpioError::from_response(
            status,
            retry_after.as_deref(),
            &body,
            SystemTime::now(),
        ))
    }

    async fn read_capped(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, PpioError> {
        let limit = self.max_body_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(PpioError::TooLarge { limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > limit {
                return Err(PpioError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn transport_error(e: reqwest::Error) -> PpioError {
    // A connection refused, reset or closed mid-body is an outage, like a 5xx.
    if e.is_timeout() {
        PpioError::Timeout
    } else {
        PpioError::Connect
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> HttpClient {
        HttpClient::new(&HttpClientConfig {
            base_url: base.into(),
            ..Default::default()
        })
        .expect("valid")
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
}
