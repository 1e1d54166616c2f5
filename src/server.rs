//! The operator's HTTP servers: `/livez`, `/readyz` and `/metrics` on `--http-addr`, and
//! optionally the probes alone on `--health-addr` (so a pod's probes use a port of their own).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the HTTP server reports.
#[derive(Default)]
pub struct Health {
    /// Set once the CRD check passed and the first watch sync completed (or, for a standby
    /// replica, once it is waiting for the lease).
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
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

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// `/livez`, `/readyz` and `/metrics`.
    All,
    /// `/livez` and `/readyz` only.
    Health,
}

/// The routes of one listener.
pub fn router(routes: Routes, health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    let router = match routes {
        Routes::Health => health_routes(),
        Routes::All => health_routes().route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
                    .into_response()
            }),
        ),
    };
    router.with_state(AppState { health, metrics })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(routes, health, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}
