//! Leader election against the real API server when the Lease calls of the leader hang: the
//! leader stops reconciling by its renew deadline, before a standby can take over, and goes
//! back to standby instead of exiting; a new leader is ready only once its watch synced.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use kube::client::Body;
use kube::{Api, Client};
use ppio_operator::controller::Settings;
use ppio_operator::crd::PpioInstance;
use ppio_operator::leader::LeaderConfig;
use ppio_operator::operator::{RunConfig, run_with};
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_testenv::cluster::*;
use ppio_testenv::free_port;
use tokio::sync::watch;

/// Lease duration 3s: renew deadline 2s, retry period 500ms.
const LEASE: Duration = Duration::from_secs(3);

/// A client whose Lease requests hang while `hang_leases` is true, and whose PpioInstance
/// LIST and WATCH wait while `hold_watch` is true.
fn switched_client(
    inner: Client,
    ns: &str,
    hang_leases: watch::Receiver<bool>,
    hold_watch: watch::Receiver<bool>,
) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let inner = inner.clone();
        let mut hang = hang_leases.clone();
        let mut hold = hold_watch.clone();
        async move {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            if path.contains("/leases") {
                let _ = hang.wait_for(|h| !*h).await;
            }
            if path.contains("/ppioinstances")
                && (query.contains("limit=500") || query.contains("watch="))
            {
                let _ = hold.wait_for(|h| !*h).await;
            }
            inner.send(req).await
        }
    });
    Client::new(service, ns.to_string())
}

struct Replica {
    http: SocketAddr,
    stop: watch::Sender<bool>,
    running: tokio::task::JoinHandle<Result<(), ppio_operator::operator::StartError>>,
}

fn start(client: Client, ns: &str, sim: SocketAddr, identity: &str) -> Replica {
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
    let ppio = HttpClient::new(&HttpClientConfig {
        base_url: format!("http://{sim}"),
        ..Default::default()
    })
    .expect("client");
    let config = RunConfig {
        namespace: Some(ns.to_string()),
        settings: Settings {
            default_refresh: Duration::from_secs(10),
            default_key: ApiKey::new("key-hl"),
            default_key_namespaces: None,
            budget: ppio_operator::controller::Budget::default(),
            observe: ppio_operator::controller::Observe::default(),
        },
        ppio: Arc::new(ppio),
        concurrency: 4,
        http_addr: http,
        health_addr: None,
        leader: Some(LeaderConfig::new(
            ns.to_string(),
            "ppio-operator".into(),
            identity.into(),
            LEASE,
        )),
        identity: identity.into(),
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let running = tokio::spawn(run_with(client, config, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    Replica {
        http,
        stop,
        running,
    }
}

async fn metrics(r: &Replica) -> String {
    http_get(r.http, "/metrics")
        .await
        .map(|(_, m)| m)
        .unwrap_or_default()
}

fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn is_leader(r: &Replica) -> bool {
    sample(&metrics(r).await, "ppio_leader ") == Some(1.0)
}

async fn ready(r: &Replica) -> Option<u16> {
    http_get(r.http, "/readyz").await.map(|(c, _)| c)
}

async fn wait(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_leader_whose_lease_calls_hang_steps_down_before_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "hleader").await;
    let (_sim, sim) = simulator(&["key-hl"]).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);

    let (hang_a, hang_a_rx) = watch::channel(false);
    let (_hold_a, hold_a_rx) = watch::channel(false);
    let a = start(
        switched_client(client.clone(), &ns, hang_a_rx, hold_a_rx),
        &ns,
        sim,
        "replica-a",
    );
    wait("replica-a leading", Duration::from_secs(15), async || {
        is_leader(&a).await
    })
    .await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    wait("replica-a ready", Duration::from_secs(10), async || {
        ready(&a).await == Some(200)
    })
    .await;
    assert!(metrics(&a).await.contains(&format!(
        "ppio_instance_ready{{namespace=\"{ns}\",name=\"a\"}}"
    )));

    // The standby's PpioInstance watch cannot sync until we say so: as a standby it is ready
    // all the same.
    let (_hang_b, hang_b_rx) = watch::channel(false);
    let (hold_b, hold_b_rx) = watch::channel(true);
    let b = start(
        switched_client(client.clone(), &ns, hang_b_rx, hold_b_rx),
        &ns,
        sim,
        "replica-b",
    );
    wait(
        "replica-b ready as a standby",
        Duration::from_secs(10),
        async || ready(&b).await == Some(200),
    )
    .await;
    assert!(!is_leader(&b).await, "two leaders");

    // The leader's Lease calls now hang (a slow API server). It must stop leading by its
    // renew deadline, while the standby waits a whole lease duration: never two leaders.
    hang_a.send(true).expect("hang");
    let hung = Instant::now();
    let mut a_stopped = None;
    let mut b_started = None;
    while b_started.is_none() {
        assert!(
            hung.elapsed() < Duration::from_secs(20),
            "no takeover within 20s (a stopped after {a_stopped:?})"
        );
        let a_leads = is_leader(&a).await;
        let b_leads = is_leader(&b).await;
        if !a_leads && a_stopped.is_none() {
            a_stopped = Some(hung.elapsed());
        }
        if b_leads {
            b_started = Some(hung.elapsed());
        }
        assert!(
            !(a_leads && b_leads),
            "two leaders {:?} after the Lease calls hung",
            hung.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_stopped = a_stopped.expect("replica-a stepped down");
    assert!(
        a_stopped <= LEASE.mul_f64(2.0 / 3.0) + Duration::from_millis(500),
        "replica-a led {a_stopped:?} after its Lease calls hung"
    );
    // Losing the lease is not an exit: replica-a is a ready standby without instance series.
    assert!(!a.running.is_finished(), "replica-a exited");
    assert_eq!(ready(&a).await, Some(200));
    let m = metrics(&a).await;
    assert!(!m.contains("ppio_instance_ready{"), "{m}");
    assert_eq!(sample(&m, "ppio_leader "), Some(0.0));

    // The new leader is not ready until its watch has synced.
    for _ in 0..10 {
        assert!(is_leader(&b).await);
        assert_eq!(
            ready(&b).await,
            Some(503),
            "a new leader ready before its watch synced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hold_b.send(false).expect("open");
    wait(
        "replica-b ready as leader",
        Duration::from_secs(10),
        async || ready(&b).await == Some(200),
    )
    .await;

    // replica-a's API server recovers: it stays a standby while replica-b holds the lease.
    hang_a.send(false).expect("unhang");
    tokio::time::sleep(LEASE * 2).await;
    assert!(!is_leader(&a).await, "replica-a took the lease back");
    assert!(is_leader(&b).await);
    assert_eq!(ready(&a).await, Some(200));
    assert!(!a.running.is_finished(), "replica-a exited");

    // Both stop cleanly; the leader releases the lease and replica-a may lead briefly.
    b.stop.send(true).expect("stop b");
    tokio::time::timeout(Duration::from_secs(15), b.running)
        .await
        .expect("b stops")
        .expect("joins")
        .expect("b runs cleanly");
    a.stop.send(true).expect("stop a");
    tokio::time::timeout(Duration::from_secs(15), a.running)
        .await
        .expect("a stops")
        .expect("joins")
        .expect("a runs cleanly");
}
