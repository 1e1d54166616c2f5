//! Leader election against the real API server when the Lease calls of the leader hang: the
//! leader stops reconciling by its renew deadline, before a standby can take over, and goes
//! back to standby instead of exiting; a new leader is ready only once its watch synced.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use kube::{Api, Client};
use ppio_operator::controller::Settings;
use ppio_operator::crd::PpioInstance;
use ppio_operator::leader::LeaderConfig;
use ppio_operator::operator::RunConfig;
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_testenv::cluster::*;
use tokio::sync::watch;

use crate::support::run_in_process;

/// Lease duration 3s: renew deadline 2s, retry period 500ms.
const LEASE: Duration = Duration::from_secs(3);

/// A client whose Lease requests hang while `hang_leases` is true, and whose PpioInstance
/// LIST and WATCH wait while `hold_watch` is true; `lease_calls` counts the Lease requests
/// that went through to the API server and were answered.
fn switched_client(
    inner: Client,
    ns: &str,
    hang_leases: watch::Receiver<bool>,
    hold_watch: watch::Receiver<bool>,
    lease_calls: Arc<AtomicU64>,
) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let inner = inner.clone();
        let mut hang = hang_leases.clone();
        let mut hold = hold_watch.clone();
        let lease_calls = lease_calls.clone();
        async move {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let lease = path.contains("/leases");
            if lease {
                let _ = hang.wait_for(|h| !*h).await;
            }
            if path.contains("/ppioinstances")
                && (query.contains("limit=500") || query.contains("watch="))
            {
                let _ = hold.wait_for(|h| !*h).await;
            }
            let answer = inner.send(req).await;
            if lease {
                lease_calls.fetch_add(1, Ordering::SeqCst);
            }
            answer
        }
    });
    Client::new(service, ns.to_string())
}

struct Replica {
    http: SocketAddr,
    stop: watch::Sender<bool>,
    running: tokio::task::JoinHandle<Result<(), ppio_operator::operator::StartError>>,
}

async fn start(client: Client, ns: &str, sim: SocketAddr, identity: &str) -> Replica {
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
            credentials_namespaces: None,
            budget: ppio_operator::controller::Budget::default(),
            observe: ppio_operator::controller::Observe::default(),
            money: ppio_operator::controller::MoneySettings::off(),
            exports: Default::default(),
        },
        ppio: Arc::new(ppio),
        concurrency: 4,
        // Replaced by run_in_process's port.
        http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        health_addr: None,
        metrics_auth: ppio_operator::server::MetricsAuth::None,
        leader: Some(LeaderConfig::new(
            ns.to_string(),
            "ppio-operator".into(),
            identity.into(),
            LEASE,
        )),
        identity: identity.into(),
    };
    let (stop, stop_rx) = watch::channel(false);
    let (http, running) = run_in_process(client, config, stop_rx).await;
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

/// Waits until `check` holds (hang protection: [`WAIT`]).
async fn wait(what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_until(what, WAIT, async || check().await.then_some(())).await
}

// The replicas run on the test's runtime: two worker threads, so that a blocking kubectl of
// the test does not stall their Lease renewals.
#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_calls_hang_steps_down_before_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "hleader").await;
    let (_sim, sim) = simulator(&["key-hl"]).await;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);

    let (hang_a, hang_a_rx) = watch::channel(false);
    let (_hold_a, hold_a_rx) = watch::channel(false);
    let a_lease_calls = Arc::new(AtomicU64::new(0));
    let a = start(
        switched_client(
            client.clone(),
            &ns,
            hang_a_rx,
            hold_a_rx,
            a_lease_calls.clone(),
        ),
        &ns,
        sim,
        "replica-a",
    )
    .await;
    wait("replica-a leading", async || is_leader(&a).await).await;
    apply_instance(&ns, "a", "instanceId: ca338f12f3\nrefreshInterval: 10s");
    wait_observed(&api, "a").await;
    wait("replica-a ready", async || ready(&a).await == Some(200)).await;
    // (/metrics may be up to a second old: it is rendered at most once a second.)
    let series = format!("ppio_instance_ready{{namespace=\"{ns}\",name=\"a\"}}");
    wait("replica-a exports the instance", async || {
        metrics(&a).await.contains(&series)
    })
    .await;

    // The standby's PpioInstance watch cannot sync until we say so: as a standby it is ready
    // all the same.
    let (_hang_b, hang_b_rx) = watch::channel(false);
    let (hold_b, hold_b_rx) = watch::channel(true);
    let b = start(
        switched_client(
            client.clone(),
            &ns,
            hang_b_rx,
            hold_b_rx,
            Arc::new(AtomicU64::new(0)),
        ),
        &ns,
        sim,
        "replica-b",
    )
    .await;
    wait("replica-b ready as a standby", async || {
        ready(&b).await == Some(200)
    })
    .await;
    assert!(!is_leader(&b).await, "two leaders");

    // The leader's Lease calls now hang (a slow API server). It must stop leading on its own
    // (by its renew deadline, without an answer), while the standby waits a whole lease
    // duration: never two leaders. Each round reads b first, then a: replica-a cannot lead
    // again while its Lease calls hang, so a leading after b was seen leading is an overlap
    // (and how soon each one moved is not pinned: that is timing).
    hang_a.send(true).expect("hang");
    let deadline = Deadline::new("replica-b takes over", WAIT);
    let mut rounds = 0u32;
    let mut a_stopped = None;
    loop {
        rounds += 1;
        let b_leads = is_leader(&b).await;
        let a_leads = is_leader(&a).await;
        assert!(
            !(a_leads && b_leads),
            "two leaders in round {rounds} after the Lease calls hung"
        );
        if !a_leads && a_stopped.is_none() {
            a_stopped = Some(rounds);
        }
        if b_leads {
            break;
        }
        deadline.check(|| format!("replica-a stepped down in round {a_stopped:?}"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        a_stopped.is_some(),
        "replica-a stepped down before replica-b led"
    );
    // Losing the lease is not an exit: replica-a is a ready standby without instance series.
    assert!(!a.running.is_finished(), "replica-a exited");
    assert_eq!(ready(&a).await, Some(200));
    let m = metrics(&a).await;
    assert!(!m.contains("ppio_instance_ready{"), "{m}");
    assert_eq!(sample(&m, "ppio_leader "), Some(0.0));

    // The new leader is not ready until its watch has synced (held: it cannot sync).
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
    wait("replica-b ready as leader", async || {
        ready(&b).await == Some(200)
    })
    .await;

    // replica-a's API server recovers: it stays a standby while replica-b holds the lease.
    // Once several of replica-a's Lease calls were answered (it read the Lease replica-b
    // renews, more than once), replica-a has not taken it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let transitions = || async {
        leases
            .get("ppio-operator")
            .await
            .expect("lease")
            .spec
            .and_then(|s| s.lease_transitions)
    };
    let before = transitions().await;
    let answered = a_lease_calls.load(Ordering::SeqCst);
    hang_a.send(false).expect("unhang");
    wait("replica-a's Lease calls answered again", async || {
        a_lease_calls.load(Ordering::SeqCst) >= answered + 4
    })
    .await;
    assert!(!is_leader(&a).await, "replica-a took the lease back");
    assert!(is_leader(&b).await);
    assert_eq!(transitions().await, before, "the lease changed hands");
    assert_eq!(ready(&a).await, Some(200));
    assert!(!a.running.is_finished(), "replica-a exited");

    // Both stop cleanly; the leader releases the lease and replica-a may lead briefly.
    // (Timeouts: hang protection.)
    b.stop.send(true).expect("stop b");
    tokio::time::timeout(WAIT, b.running)
        .await
        .expect("b stops")
        .expect("joins")
        .expect("b runs cleanly");
    a.stop.send(true).expect("stop a");
    tokio::time::timeout(WAIT, a.running)
        .await
        .expect("a stops")
        .expect("joins")
        .expect("a runs cleanly");
}
