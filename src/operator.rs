//! Start-up of `ppio-operator run`: connect, check the CRD, serve health and metrics, run the
//! controller until a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::controller::{Context, Settings, error_policy, reconcile};
use crate::crd::{CRD_NAME, CRD_PATH, PpioInstance};
use crate::leader::{Elector, LeaderConfig};
use crate::metrics::Metrics;
use crate::ppio::PpioApi;
use crate::server::{self, Health};

/// What `run` needs besides the Kubernetes client.
pub struct RunConfig {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub settings: Settings,
    pub ppio: Arc<dyn PpioApi>,
    /// At most this many PpioInstances are reconciled at once.
    pub concurrency: u16,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Leader election; `None`: this replica always reconciles.
    pub leader: Option<LeaderConfig>,
    /// This replica's name in Events (`reportingInstance`).
    pub identity: String,
}

/// How long in-flight work may take after SIGTERM before the operator exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Start-up failures, each with what the user should do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot configure the Kubernetes client ({0}); run inside a cluster or set KUBECONFIG")]
    KubeConfig(#[source] kube::Error),
    #[error(
        "the PpioInstance CRD ({CRD_NAME}) is not installed in this cluster; install it with:\n  ppio-operator crd | kubectl apply --server-side -f -\nor: kubectl apply --server-side -f {CRD_PATH}"
    )]
    CrdMissing,
    #[error("cannot list PpioInstances{scope}: {source}")]
    CrdCheck {
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the leader lease {0}; exiting so that no two replicas write")]
    LostLeadership(String),
    #[error("--http-addr: cannot listen on {addr}: {source}")]
    HttpAddr {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that PpioInstances can be listed (the CRD is installed and we may read it).
pub async fn check_crd(api: &Api<PpioInstance>, namespace: Option<&str>) -> Result<(), StartError> {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(ae)) if ae.code == 404 => Err(StartError::CrdMissing),
        Err(source) => Err(StartError::CrdCheck {
            scope: namespace
                .map(|n| format!(" in namespace {n:?}"))
                .unwrap_or_default(),
            source,
        }),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(config: RunConfig) -> Result<(), StartError> {
    let client = Client::try_default()
        .await
        .map_err(StartError::KubeConfig)?;
    run_until(client, config, shutdown_signal()).await
}

/// Runs the controller and the HTTP server until `shutdown` resolves.
pub async fn run_until(
    client: Client,
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| StartError::HttpAddr {
            addr: config.http_addr,
            source,
        })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(server::serve(
        listener,
        health.clone(),
        metrics.clone(),
        stopped(http_stop_rx),
    ));

    let result = async {
        let api: Api<PpioInstance> = scoped(&client, config.namespace.as_deref());
        check_crd(&api, config.namespace.as_deref()).await?;
        let Some(leader) = config.leader.clone() else {
            return run_bounded(client, config, metrics, health, stop_rx).await;
        };
        // A standby is ready: it serves, and takes over when the leader goes.
        health.ready.store(true, Ordering::Relaxed);
        let mut elector = Elector::new(client.clone(), leader);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stopped(stop_rx.clone()) => {
                info!("stopped while standing by");
                return Ok(());
            }
        }
        metrics.leader.set(1);
        let lease = format!("{}/{}", elector.config().namespace, elector.config().name);
        let outcome = tokio::select! {
            r = run_bounded(client, config, metrics.clone(), health, stop_rx) => r,
            _ = elector.hold() => Err(StartError::LostLeadership(lease)),
        };
        metrics.leader.set(0);
        if outcome.is_ok() {
            elector.release().await;
        }
        outcome
    }
    .await;
    let _ = http_stop_tx.send(true);
    let _ = http.await;
    result
}

/// PpioInstances in one namespace, or in all.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Resolves once the stop flag is set.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// [`run_controller`], cut short [`SHUTDOWN_GRACE`] after the stop signal.
async fn run_bounded(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> Result<(), StartError> {
    let deadline = {
        let rx = stop_rx.clone();
        async move {
            stopped(rx).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    tokio::select! {
        r = run_controller(client, config, metrics, health, stopped(stop_rx)) => r,
        _ = deadline => {
            warn!("in-flight reconciles did not finish in time; exiting");
            Ok(())
        }
    }
}

async fn run_controller(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let guarded: Api<DeserializeGuard<PpioInstance>> = scoped(&client, config.namespace.as_deref());
    info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        default_refresh_s = config.settings.default_refresh.as_secs(),
        default_key = config.settings.default_key.is_some(),
        "ppio-operator started"
    );
    if config.settings.default_key.is_none() {
        warn!(
            "PPIO_API_KEY is not set: PpioInstances without spec.credentialsSecretRef will report CredentialsMissing"
        );
    }
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: crate::controller::FIELD_MANAGER.into(),
            instance: Some(config.identity.clone()),
        },
    );
    let ctx = Arc::new(
        Context::new(client, config.ppio, config.settings, metrics).with_recorder(recorder),
    );
    let controller = Controller::new(guarded, watcher::Config::default().any_semantic());
    let store = controller.store();
    let housekeeping = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            // The store's readiness signal wakes only its latest waiter (the controller also
            // waits on it), so look again every 100ms instead of waiting once.
            loop {
                match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => {
                        health.ready.store(true, Ordering::Relaxed);
                        info!("watch synced; ready");
                        break;
                    }
                    Ok(Err(_)) => return,
                    Err(_elapsed) => {}
                }
            }
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                ctx.forget_missing(|ns, name| {
                    store.get(&ObjectRef::new(name).within(ns)).is_some()
                });
            }
        }
    });
    controller
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(config.concurrency)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    // Reconcile errors are already logged by the error policy.
                    kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                    other => warn!(error = %other, "controller error"),
                }
            }
        })
        .await;
    housekeeping.abort();
    info!("ppio-operator stopped");
    Ok(())
}
