//! The operator's HTTP servers: `/livez`, `/readyz` and `/metrics` on `--http-addr`, and
//! optionally the probes alone on `--health-addr` (so a pod's probes use a port of their own).
//!
//! `/metrics` is guarded by `--metrics-auth` ([`auth`]); its text is rendered at most once
//! per [`RENDER_EVERY`] and shared by every scraper; at most [`SCRAPES`] answers are sent at
//! once; and every connection is bounded by [`limits`], so slow or many scrapers cannot pin
//! memory or delay the probes.

pub mod auth;
pub mod limits;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::Metrics;
pub use auth::{Authorizer, MetricsAuth, Verdict};
pub use limits::Limits;

/// What the HTTP server reports.
#[derive(Default)]
pub struct Health {
    /// Set once the CRD check passed and the first watch sync completed (or, for a standby
    /// replica, once it is waiting for the lease).
    pub ready: AtomicBool,
}

/// The metrics text is rendered at most this often; scrapers in between share it.
pub const RENDER_EVERY: Duration = Duration::from_secs(1);
/// Answers to `/metrics` being sent at once, at most.
pub const SCRAPES: usize = 4;
/// How long a scrape waits for one of those before it is answered 503.
const SCRAPE_WAIT: Duration = Duration::from_secs(5);
/// The metrics text goes out in pieces of this size (slices of one shared buffer).
const PIECE: usize = 64 * 1024;

/// The rendered metrics text, shared between scrapers.
pub struct Exposition {
    metrics: Arc<Metrics>,
    /// The last rendering, kept for [`RENDER_EVERY`] only (at 10,000 PpioInstances it is
    /// several MB, which an idle operator should not hold).
    last: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
    sending: Arc<Semaphore>,
}

impl Exposition {
    pub fn new(metrics: Arc<Metrics>) -> Exposition {
        Exposition {
            metrics,
            last: Arc::new(tokio::sync::Mutex::new(None)),
            sending: Arc::new(Semaphore::new(SCRAPES)),
        }
    }

    /// The current text: the last rendering if it is recent, else a new one (rendered once
    /// for every scraper waiting on it).
    async fn text(&self) -> Bytes {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < RENDER_EVERY
        {
            return text.clone();
        }
        let metrics = self.metrics.clone();
        let text = tokio::task::spawn_blocking(move || Bytes::from(metrics.encode()))
            .await
            .unwrap_or_default();
        let rendered = Instant::now();
        *last = Some((rendered, text.clone()));
        // Let go of it once it is too old to be shared (the scrapes sending it keep their own
        // references until they are done).
        let kept = self.last.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RENDER_EVERY).await;
            let mut last = kept.lock().await;
            if last.as_ref().is_some_and(|(at, _)| *at == rendered) {
                *last = None;
            }
        });
        text
    }

    /// Whether a rendering is held.
    #[cfg(test)]
    async fn holds_text(&self) -> bool {
        self.last.lock().await.is_some()
    }

    /// The answer to a scrape that may read the metrics.
    async fn answer(&self) -> Response {
        let Ok(Ok(sending)) =
            tokio::time::timeout(SCRAPE_WAIT, self.sending.clone().acquire_owned()).await
        else {
            self.metrics.serving.scraped("busy");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                "too many scrapes at once\n",
            )
                .into_response();
        };
        let text = self.text().await;
        self.metrics.serving.scraped("served");
        let length = text.len();
        let pieces: Vec<Bytes> = (0..text.len())
            .step_by(PIECE)
            .map(|at| text.slice(at..(at + PIECE).min(text.len())))
            .collect();
        // The slot is held until the last piece is handed over or the connection closes.
        let body = futures::stream::iter(pieces).map(move |piece| {
            let _ = &sending;
            Ok::<_, std::convert::Infallible>(piece)
        });
        (
            [
                (
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8".to_string(),
                ),
                (header::CONTENT_LENGTH, length.to_string()),
            ],
            Body::from_stream(body),
        )
            .into_response()
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    exposition: Arc<Exposition>,
    /// `None`: `/metrics` is open (`--metrics-auth=none`).
    authorizer: Option<Arc<Authorizer>>,
}

/// The probe routes: `/livez` and `/readyz`.
fn health_routes() -> Router<AppState> {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.health.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok\n")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for the first watch sync\n",
                    )
                }
            }),
        )
}

/// `/metrics`: checked, then served.
async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(authorizer) = &s.authorizer {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let serving = &s.exposition.metrics.serving;
        match authorizer.check(authorization).await {
            Verdict::Allowed => {}
            Verdict::Unauthenticated => {
                serving.scraped("unauthenticated");
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer realm=\"ppio-operator\"")],
                    "a bearer token Kubernetes accepts is needed to read /metrics\n",
                )
                    .into_response();
            }
            Verdict::Forbidden => {
                serving.scraped("forbidden");
                return (
                    StatusCode::FORBIDDEN,
                    "this user may not get the non-resource URL /metrics\n",
                )
                    .into_response();
            }
            Verdict::Unavailable => {
                serving.scraped("unavailable");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "5")],
                    "cannot check the token now\n",
                )
                    .into_response();
            }
        }
    }
    s.exposition.answer().await
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/livez`, `/readyz` and `/metrics`.
    All,
    /// `/livez` and `/readyz` only.
    Health,
}

/// What every listener of the operator shares.
#[derive(Clone)]
pub struct Serving {
    pub health: Arc<Health>,
    pub exposition: Arc<Exposition>,
    pub authorizer: Option<Arc<Authorizer>>,
    pub limits: Limits,
}

impl Serving {
    /// Open `/metrics`, default limits.
    pub fn open(health: Arc<Health>, metrics: Arc<Metrics>) -> Serving {
        Serving {
            health,
            exposition: Arc::new(Exposition::new(metrics)),
            authorizer: None,
            limits: Limits::default(),
        }
    }
}

/// The routes of one listener.
pub fn router(routes: Routes, serving: &Serving) -> Router {
    let router = match routes {
        Routes::Health => health_routes(),
        Routes::All => health_routes().route("/metrics", get(metrics)),
    };
    router.with_state(AppState {
        health: serving.health.clone(),
        exposition: serving.exposition.clone(),
        authorizer: serving.authorizer.clone(),
    })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    serving: Serving,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The probes' listener has no overall cap, only the per-peer one: clients elsewhere cannot
    // crowd out the kubelet.
    let limits = match routes {
        Routes::All => serving.limits,
        Routes::Health => Limits {
            connections: tokio::sync::Semaphore::MAX_PERMITS,
            ..serving.limits
        },
    };
    axum::serve(
        limits::Limited::new(listener, limits),
        router(routes, &serving),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rendering_is_shared_for_a_moment_and_then_let_go() {
        let exposition = Exposition::new(Arc::new(Metrics::new()));
        let first = exposition.text().await;
        assert!(exposition.holds_text().await);
        // Within the moment: the same buffer.
        let again = exposition.text().await;
        assert_eq!(first.as_ptr(), again.as_ptr());
        tokio::time::sleep(RENDER_EVERY * 2).await;
        assert!(
            !exposition.holds_text().await,
            "an idle operator holds no rendering"
        );
    }
}
