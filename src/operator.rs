//! `ppio-operator run`: connect, check the CRD, serve health and metrics, elect a leader if
//! asked to, and run the controller until a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{
    Controller, Predicate, PredicateConfig, WatchStreamExt, predicates, reflector, watcher,
};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::controller::cached::keep_own;
use crate::controller::{CachedInstance, Context, Settings, Waker, error_policy, reconcile};
use crate::crd::{CRD_NAME, CRD_PATH, PpioInstance};
use crate::leader::{Elector, LeaderConfig};
use crate::metrics::Metrics;
use crate::ppio::PpioApi;
use crate::server::{self, Authorizer, Health, MetricsAuth, Routes, Serving};

/// What `run` needs besides the Kubernetes client.
#[derive(Clone)]
pub struct RunConfig {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub settings: Settings,
    pub ppio: Arc<dyn PpioApi>,
    /// At most this many PpioInstances are reconciled at once.
    pub concurrency: u16,
    /// Where `/metrics`, `/livez` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Where `/livez` and `/readyz` are also served, alone.
    pub health_addr: Option<SocketAddr>,
    /// How `/metrics` is guarded.
    pub metrics_auth: MetricsAuth,
    /// Leader election; `None`: this replica always reconciles. A replica that loses the
    /// lease (another took it, or it could not renew within the renew deadline) stops
    /// reconciling at once and stands by again; it does not exit.
    pub leader: Option<LeaderConfig>,
    /// This replica's name in Events (`reportingInstance`).
    pub identity: String,
}

/// At most this many PpioInstances are reconciled at once, unless configured.
pub const DEFAULT_CONCURRENCY: u16 = 16;

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
    #[error("{flag}: cannot listen on {addr}: {source}")]
    Listen {
        flag: &'static str,
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

/// `ppio-operator run`: connects with the usual Kubernetes configuration (in-cluster, else
/// KUBECONFIG) and runs until SIGTERM or SIGINT.
pub async fn run(config: RunConfig) -> Result<(), StartError> {
    let client = Client::try_default()
        .await
        .map_err(StartError::KubeConfig)?;
    run_with(client, config, crate::signal::shutdown_signal()).await
}

/// Binds a listener, or says which flag names the address that failed.
async fn listen(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { flag, addr, source })
}

/// Runs with a given client until `shutdown` resolves: the HTTP servers, the CRD check, then
/// (as leader, or always without leader election) the controller.
///
/// With leader election, a replica alternates between standby and leader until `shutdown`:
/// a standby is ready (`/readyz` 200); a new leader is ready only once its watch has synced;
/// a leader that loses the lease stops reconciling at once (by its renew deadline at the
/// latest, see [`Elector::hold`]), drops its per-instance metrics and stands by again, so
/// losing the lease is neither an error nor an exit. On `shutdown` a leader releases the
/// lease (within [`crate::leader::RELEASE_TIMEOUT`]).
pub async fn run_with(
    client: Client,
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let mut listeners = vec![(listen("--http-addr", config.http_addr).await?, Routes::All)];
    if let Some(addr) = config.health_addr {
        listeners.push((listen("--health-addr", addr).await?, Routes::Health));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = Serving::open(health.clone(), metrics.clone());
    if config.metrics_auth == MetricsAuth::Kubernetes {
        serving.authorizer = Some(Arc::new(Authorizer::new(client.clone(), metrics.clone())));
    }
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|(listener, routes)| {
            tokio::spawn(server::serve(
                listener,
                routes,
                serving.clone(),
                stopped(http_stop_rx.clone()),
            ))
        })
        .collect();

    // The controller runs as a task of its own on the runtime's worker threads, beside the
    // tasks of its HTTP connections, rather than on the thread that waits for it: each
    // request's hand-over then stays on the workers instead of waking another thread.
    let mut controller = AbortOnDrop(tokio::spawn(lead_and_reconcile(
        client, config, metrics, health, stop_rx,
    )));
    let result = match (&mut controller.0).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Aborted only when this future is dropped, so never seen here.
        Err(_) => Ok(()),
    };
    let _ = http_stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    result
}

/// The CRD check, then the controller: as leader, or always without leader election.
async fn lead_and_reconcile(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> Result<(), StartError> {
    let api: Api<PpioInstance> = scoped(&client, config.namespace.as_deref());
    check_crd(&api, config.namespace.as_deref()).await?;
    let Some(leader) = config.leader.clone() else {
        return reconcile_with_grace(client, config, metrics, health, stop_rx).await;
    };
    let mut elector = Elector::new(client.clone(), leader);
    let lease = format!("{}/{}", elector.config().namespace, elector.config().name);
    loop {
        // A standby is ready: it serves, and takes over when the leader goes.
        health.ready.store(true, Ordering::Relaxed);
        let acquired = tokio::select! {
            acquired = elector.acquire() => acquired,
            _ = stopped(stop_rx.clone()) => {
                info!("stopped while standing by");
                return Ok(());
            }
        };
        // A new leader is ready once its own watch has synced (`reconcile_until`).
        health.ready.store(false, Ordering::Relaxed);
        metrics.controller.leader.set(1);
        let term = tokio::select! {
            r = reconcile_with_grace(
                client.clone(),
                config.clone(),
                metrics.clone(),
                health.clone(),
                stop_rx.clone(),
            ) => Some(r),
            // `hold` returns by the renew deadline at the latest: dropping the controller
            // here stops every reconcile and status write of this replica at once.
            _ = elector.hold(acquired) => None,
        };
        metrics.controller.leader.set(0);
        match term {
            Some(outcome) => {
                elector.release().await;
                return outcome;
            }
            None => {
                // Back to standby rather than exiting: the pod neither restarts nor
                // crash-loops, and the new leader exports the per-instance series.
                metrics.instances.forget_all();
                warn!(lease = %lease, "lost the leader lease; stopped reconciling and standing by");
            }
        }
    }
}

/// A task aborted when this handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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

/// Drops from a cached PpioInstance what the controller never reads. A valid object was
/// already decoded without it ([`crate::controller::cached`]); this covers the metadata kept
/// of an object that failed to decode.
fn slim(object: &mut DeserializeGuard<CachedInstance>) {
    if let Err(invalid) = &mut object.0 {
        keep_own(&mut invalid.metadata);
    }
}

/// Resolves once the stop flag is set.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// [`reconcile_until`], cut short [`SHUTDOWN_GRACE`] after the stop signal.
async fn reconcile_with_grace(
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
        r = reconcile_until(client, config, metrics, health, stopped(stop_rx)) => r,
        _ = deadline => {
            warn!("in-flight reconciles did not finish in time; exiting");
            Ok(())
        }
    }
}

/// What the controller forgets of PpioInstances that are gone.
enum Gone {
    /// The watch reported this one (namespace, name) deleted.
    One(String, String),
    /// The watch listed everything again: forget whatever it no longer holds.
    Relisted,
}

/// How often everything kept is checked against the watch's cache anyway.
const FORGET_PASS: Duration = Duration::from_secs(300);

/// How many PpioInstances woken by walks the controller holds before their reconciles start:
/// enough to keep every concurrent reconcile busy through the controller's debounce, few
/// enough that the first woken are the first served.
fn wake_window(concurrency: u16) -> usize {
    usize::from(concurrency.max(16)) * 16
}

/// Says in the log what the controller starts with.
fn say_started(config: &RunConfig) {
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
}

/// Beside the controller: says ready once the watch's cache has synced, then forgets what
/// the controller keeps of PpioInstances that are gone (as `gone` reports them, and in a
/// slow pass, for a reconcile that finished after its object's deletion).
async fn housekeep(
    ctx: Arc<Context>,
    store: reflector::Store<DeserializeGuard<CachedInstance>>,
    mut gone: tokio::sync::mpsc::UnboundedReceiver<Gone>,
    health: Arc<Health>,
) {
    // The store's readiness signal wakes only its latest waiter (the controller also waits
    // on it), so look again every 100ms instead of waiting once.
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(Ok(())) => {
                health.ready.store(true, Ordering::Relaxed);
                info!("watch synced; ready");
                break;
            }
            Ok(Err(_)) => return,
            Err(_elapsed) => {}
        }
    }
    let mut tick = tokio::time::interval(FORGET_PASS);
    loop {
        let next = tokio::select! {
            next = gone.recv() => next,
            _ = tick.tick() => Some(Gone::Relisted),
        };
        match next {
            Some(Gone::One(ns, name))
                if store.get(&ObjectRef::new(&name).within(&ns)).is_none() =>
            {
                ctx.forget_deleted(&ns, &name);
            }
            Some(Gone::One(..)) => {}
            Some(Gone::Relisted) => {
                ctx.forget_missing(|ns, name| store.get(&ObjectRef::new(name).within(ns)).is_some())
            }
            None => return,
        }
    }
}

/// The controller: watches PpioInstances and reconciles them until `shutdown` resolves and
/// the reconciles in flight are done.
async fn reconcile_until(
    client: Client,
    config: RunConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let guarded: Api<DeserializeGuard<CachedInstance>> =
        scoped(&client, config.namespace.as_deref());
    say_started(&config);
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: crate::controller::FIELD_MANAGER.into(),
            instance: Some(config.identity.clone()),
        },
    );
    // Woken PpioInstances go to the controller a window at a time, in the order woken.
    let waker = Waker::new(wake_window(config.concurrency));
    let woken = waker.stream();
    let ctx = Arc::new(
        Context::new(client, config.ppio, config.settings, metrics)
            .with_recorder(recorder)
            .with_waker(waker)
            .with_concurrency(config.concurrency),
    );
    // The cache holds each PpioInstance without what the operator never reads (managedFields,
    // others' labels and annotations: kubectl's last-applied copy, a tenant's large ones).
    let (store, writer) = reflector::store();
    let (gone_tx, gone_rx) = tokio::sync::mpsc::unbounded_channel::<Gone>();
    let objects = instance_changes(guarded, writer, gone_tx);
    let controller = Controller::for_stream(objects, store.clone()).reconcile_on(woken);
    // Aborted when this future ends or is dropped (a leader that lost the lease).
    let housekeeping = AbortOnDrop(tokio::spawn(housekeep(ctx.clone(), store, gone_rx, health)));
    controller
        .with_config(
            kube::runtime::controller::Config::default()
                // The limit is the context's (`with_concurrency`), which keeps the order.
                .concurrency(0)
                .debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on({
            let ctx = ctx.clone();
            async move {
                shutdown.await;
                ctx.stop_reconciling();
            }
        })
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
    drop(housekeeping);
    info!("ppio-operator stopped");
    Ok(())
}

/// The PpioInstances to reconcile as the watch shows them, cached slim in `writer`'s store.
/// Deleted PpioInstances are forgotten as the watch reports them (sent to `gone`); a relist
/// (after which deletions meanwhile show only as absence) is followed by a pass over
/// everything kept.
fn instance_changes(
    api: Api<DeserializeGuard<CachedInstance>>,
    writer: reflector::store::Writer<DeserializeGuard<CachedInstance>>,
    gone: tokio::sync::mpsc::UnboundedSender<Gone>,
) -> impl futures::Stream<Item = Result<DeserializeGuard<CachedInstance>, watcher::Error>> {
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect(move |event| {
            let dead = match event {
                Ok(watcher::Event::Delete(o)) => {
                    Gone::One(o.namespace().unwrap_or_default(), o.name_any())
                }
                Ok(watcher::Event::InitDone) => Gone::Relisted,
                _ => return,
            };
            let _ = gone.send(dead);
        })
        .applied_objects()
        // A change of status alone (the operator's own writes, above all) needs no reconcile:
        // each object is reconciled when it appears, when its spec (generation) or its
        // annotations (a refresh request) change, and at the times it asked for.
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            PredicateConfig::default(),
        )
}
