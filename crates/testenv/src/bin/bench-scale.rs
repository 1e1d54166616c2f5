//! The scale benchmark (`tools/bench-scale.sh N`): a real etcd + kube-apiserver, the PPIO
//! simulator with N instances, the release operator binary at its default settings (budget
//! 10/s, burst 20, refreshInterval 60s), N PpioInstances on one key. Prints figures; asserts
//! nothing.
//!
//!   bench-scale N OPERATOR_BINARY [STEADY_SECONDS]
//!
//! With `BENCH_KEYS=K` (K > 1) the N PpioInstances are spread over K namespaces, each with a
//! credentials Secret of its own key, all keys seeing one account of `BENCH_ACCOUNT`
//! instances (default N): the "many keys" scenario. It then also prints PPIO requests per
//! interval per key.
//!
//! With `BENCH_EXPORTS=M` the first M PpioInstances each ask for a connection Secret and a
//! Service (the operator runs with both exports allowed); the steady state then also prints
//! the writes of exported objects (the operator's count and the API server's) and the reads
//! the operator's periodic checks make.
//!
//! With `BENCH_ANNOTATION_KIB=K` each PpioInstance carries a foreign annotation of K KiB
//! (what a tenant may put on its objects; the operator's cache should not hold it).
//!
//! With `BENCH_SLOW_SCRAPERS=S`, after the steady state S clients ask for /metrics and never
//! read it: the operator's RSS and the slowest /readyz meanwhile are printed.
//!
//! With `BENCH_CHURN_EVERY=S` (one key only) the steady window is the "churn" scenario: a new
//! PpioInstance every S seconds (of instances the account holds besides the N), and with
//! `BENCH_LIST_FAILURES=F` that share of LIST pages failing (503, the same pages every run).
//! It prints the oldest observation, sampled every 5 s, as the maximum, the LIST pages and
//! walks meanwhile, and how long the newcomers took to show Synced.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use ppio_operator::crd::{PpioInstance, PpioInstanceSpec};
use ppio_operator::simulator::Simulator;
use ppio_testenv::cluster::http_get;
use ppio_testenv::{ControlPlane, Guarded, free_port, tools_dir};
use serde_json::Value;

const KEY: &str = "sk-bench";
const NS: &str = "bench";

fn arg(n: usize) -> Option<String> {
    std::env::args().nth(n)
}

/// The steady window's operator CPU is also printed for each of this many equal slices.
const CPU_SLICES: u32 = 3;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of a fixed piece of the operator's own work (decoding a PPIO instance and
/// computing its status, 100,000 times) on one thread: a yardstick of how fast this machine
/// runs the operator's code right now, printed around the steady window so that CPU figures of
/// runs on a busier or quieter machine can be told apart from changes of the code.
fn yardstick() -> f64 {
    fn thread_cpu() -> f64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<f64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
    }
    std::thread::spawn(|| {
        let body = ppio_testenv::mock::FIXTURE.as_bytes();
        let start = thread_cpu();
        let mut status = None;
        for i in 0..100_000i64 {
            let instance = ppio_operator::ppio::Instance::from_slice(body).expect("decodes");
            let now = jiff::Timestamp::from_second(1_750_000_000 + i).expect("time");
            status = Some(ppio_operator::status::compute_status(
                "ca338f12f3",
                Some(1),
                None,
                ppio_operator::status::Observation::Instance(&instance),
                status.as_ref(),
                now,
            ));
        }
        thread_cpu() - start
    })
    .join()
    .unwrap_or(0.0)
}

/// `BENCH_SLOW_SCRAPERS=S`: S clients ask for /metrics and never read (a 4 KiB receive
/// buffer each) for 20 s; prints the operator's RSS before and at most during, and the
/// slowest /readyz answer meanwhile.
async fn slow_scrapers(op: SocketAddr, pid: u32, scrapers: usize) {
    use tokio::io::AsyncWriteExt;
    let size = http_get(op, "/metrics")
        .await
        .map(|(_, t)| t.len())
        .unwrap_or(0);
    let before = rss_mib(pid);
    let mut held = Vec::new();
    for _ in 0..scrapers {
        let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
            continue;
        };
        let _ = socket.set_recv_buffer_size(4096);
        if let Ok(mut stream) = socket.connect(op).await {
            let _ = stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\n\r\n")
                .await;
            held.push(stream);
        }
    }
    let mut peak = before;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let asked = Instant::now();
        let ok = http_get(op, "/readyz").await.is_some_and(|(c, _)| c == 200);
        slowest = slowest.max(if ok { asked.elapsed() } else { Duration::MAX });
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(held);
    println!(
        "{} scrapers that never read a {:.1} MB /metrics for 20 s: operator RSS {before:.0} MiB before, {peak:.0} MiB at most during (+{:.0}); slowest /readyz {}",
        scrapers,
        size as f64 / 1e6,
        peak - before,
        if slowest == Duration::MAX {
            "unanswered".to_string()
        } else {
            format!("{} ms", slowest.as_millis())
        }
    );
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn pid_of(dir: &Path, name: &str) -> u32 {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// The sum of the samples of a metric family whose label set contains every `with`.
fn metric_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn metric_min(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .reduce(f64::min)
}

async fn apiserver_metrics(client: &Client) -> String {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    client.request_text(req).await.unwrap_or_default()
}

/// The API server's request counts for the exported kinds that grew between two scrapes:
/// `(resource, verb, code, increase)`.
fn export_request_breakdown(before: &str, after: &str) -> Vec<String> {
    let samples = |text: &str| -> HashMap<String, f64> {
        text.lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter(|l| {
                ["secrets", "services", "endpointslices"]
                    .iter()
                    .any(|r| l.contains(&format!("resource=\"{r}\"")))
            })
            .filter_map(|l| {
                let (labels, v) = l.rsplit_once(' ')?;
                Some((labels.to_string(), v.parse().ok()?))
            })
            .collect()
    };
    let label = |labels: &str, name: &str| -> String {
        labels
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let (b, a) = (samples(before), samples(after));
    let mut out: Vec<String> = a
        .iter()
        .filter_map(|(k, v)| {
            let grew = v - b.get(k).copied().unwrap_or(0.0);
            (grew > 0.0 && label(k, "verb") != "WATCH").then(|| {
                format!(
                    "{} {} {} {} {grew:.0}",
                    label(k, "resource"),
                    label(k, "verb"),
                    label(k, "code"),
                    label(k, "subresource")
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// API server requests for the exported kinds (`secrets`, `services`, `endpointslices`) of
/// these verbs.
fn export_requests(apiserver: &str, verbs: &[&str]) -> f64 {
    let mut sum = 0.0;
    for resource in ["secrets", "services", "endpointslices"] {
        for verb in verbs {
            sum += metric_sum(
                apiserver,
                "apiserver_request_total",
                &[
                    &format!("resource=\"{resource}\""),
                    &format!("verb=\"{verb}\""),
                ],
            );
        }
    }
    sum
}

fn secret_gets(apiserver: &str) -> f64 {
    metric_sum(
        apiserver,
        "apiserver_request_total",
        &["resource=\"secrets\"", "verb=\"GET\""],
    )
}

/// Where the PpioInstances go: one namespace and key, or `keys` of each.
struct Scene {
    /// The API keys, one per namespace.
    keys: Vec<String>,
    /// PpioInstances per namespace.
    per_key: usize,
    /// The first this many PpioInstances ask for a connection Secret and a Service.
    exports: usize,
}

impl Scene {
    fn new(keys: usize, n: usize, exports: usize) -> Scene {
        Scene {
            exports,
            keys: if keys == 1 {
                vec![KEY.to_string()]
            } else {
                (0..keys).map(|k| format!("sk-bench-{k:03}")).collect()
            },
            per_key: n.div_ceil(keys),
        }
    }

    fn namespace(&self, k: usize) -> String {
        if self.keys.len() == 1 {
            NS.to_string()
        } else {
            format!("{NS}-{k:03}")
        }
    }

    /// The namespaces, and with many keys a credentials Secret of its key in each.
    async fn create_namespaces(&self, client: &Client) -> Result<(), Box<dyn std::error::Error>> {
        let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        for (k, key) in self.keys.iter().enumerate() {
            let ns = self.namespace(k);
            ns_api
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
                )
                .await?;
            if self.keys.len() > 1 {
                let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                    Api::namespaced(client.clone(), &ns);
                secrets
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(serde_json::json!({
                            "metadata": {"name": "ppio", "labels": {"gpus.ppio.com/credentials": "true"}},
                            "stringData": {"apiKey": key},
                        }))?,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// The `i`th PpioInstance: its namespace, name and object (tracking an instance of the
    /// account of `account`).
    fn object(&self, i: usize, account: usize) -> (String, String, PpioInstance) {
        let k = i / self.per_key;
        let ns = self.namespace(k);
        let name = format!("i{i:06}");
        let mut o = PpioInstance::new(
            &name,
            PpioInstanceSpec {
                instance_id: format!("bench{:06}", i % account.max(1)),
                credentials_secret_ref: (self.keys.len() > 1).then(|| {
                    ppio_operator::crd::SecretKeyRef {
                        name: "ppio".into(),
                        key: None,
                    }
                }),
                refresh_interval: None,
                suspend: None,
                expect: None,
                connection_secret: (i < self.exports).then(|| {
                    ppio_operator::crd::ConnectionSecretSpec {
                        name: format!("{name}-connection"),
                    }
                }),
                service: (i < self.exports).then(ppio_operator::crd::ServiceExportSpec::default),
            },
        );
        o.metadata.namespace = Some(ns.clone());
        (ns, name, o)
    }
}

/// What the watch of PpioInstances saw: by name.
#[derive(Default)]
struct Progress {
    /// When each create was sent.
    created: HashMap<String, Instant>,
    with_state: HashSet<String>,
    /// When the watch first showed each Synced=True.
    synced: HashMap<String, Instant>,
    /// With prices (from a GET).
    fetched: HashSet<String>,
    /// Seconds from each object's creationTimestamp to its Synced condition's
    /// lastTransitionTime (both to the second): what the objects themselves record.
    recorded: HashMap<String, i64>,
    /// Changes the watch showed of objects it had seen before: status writes (no one else
    /// changes them).
    writes: u64,
    /// The objects the watch showed.
    seen: HashSet<String>,
}

impl Progress {
    /// Seconds from each create sent to Synced=True shown, sorted.
    fn latencies(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .synced
            .iter()
            .filter_map(|(name, at)| {
                let sent = self.created.get(name)?;
                Some(at.saturating_duration_since(*sent).as_secs_f64())
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows the PpioInstances with a watch, recording what they show.
async fn follow(api: Api<PpioInstance>, progress: Arc<Mutex<Progress>>) {
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let (o, relisted) = match event {
            Ok(watcher::Event::Apply(o)) => (o, false),
            Ok(watcher::Event::InitApply(o)) => (o, true),
            Ok(_) => continue,
            Err(e) => {
                eprintln!("watch: {e}");
                continue;
            }
        };
        let Some(name) = o.metadata.name.clone() else {
            continue;
        };
        let mut p = lock(&progress);
        if !p.seen.insert(name.clone()) && !relisted {
            p.writes += 1;
        }
        let Some(status) = o.status.as_ref() else {
            continue;
        };
        let now = Instant::now();
        if status.state.is_some() {
            p.with_state.insert(name.clone());
        }
        if status.pricing.is_some() {
            p.fetched.insert(name.clone());
        }
        if let Some(synced) = status.condition("Synced").filter(|c| c.status == "True") {
            if let Some(created) = &o.metadata.creation_timestamp {
                let secs = synced.last_transition_time.0.as_second() - created.0.as_second();
                p.recorded.entry(name.clone()).or_insert(secs);
            }
            p.synced.entry(name).or_insert(now);
        }
    }
}

/// Prints the fill's progress every 5 s until every PpioInstance is Synced: objects created,
/// showing a state and Synced, PPIO requests so far, and the CPU seconds of the operator,
/// the API server and etcd.
async fn timeline(
    progress: Arc<Mutex<Progress>>,
    sim: Simulator,
    n: usize,
    start: Instant,
    [op, apiserver, etcd]: [u32; 3],
) {
    println!(
        "  fill timeline: s, created, with a state, Synced, status writes, LIST, GET, CPU s operator/API server/etcd"
    );
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (created, with_state, synced, writes) = {
            let p = lock(&progress);
            (
                p.created.len(),
                p.with_state.len(),
                p.synced.len(),
                p.writes,
            )
        };
        let counts = sim.counts();
        println!(
            "  {:>5.0} {created:>6} {with_state:>6} {synced:>6} {writes:>6} {:>5} {:>6} {:.1}/{:.1}/{:.1}",
            start.elapsed().as_secs_f64(),
            counts.list,
            counts.instances.values().sum::<u64>(),
            cpu_seconds(op),
            cpu_seconds(apiserver),
            cpu_seconds(etcd),
        );
        if synced >= n {
            return;
        }
    }
}

/// The churn scenario (`BENCH_CHURN_EVERY`, `BENCH_LIST_FAILURES`).
struct Churn {
    /// A new PpioInstance this often.
    every: Duration,
    /// The share of LIST pages that fail.
    list_failures: Option<f64>,
}

impl Churn {
    fn from_env() -> Result<Option<Churn>, Box<dyn std::error::Error>> {
        let Ok(every) = std::env::var("BENCH_CHURN_EVERY") else {
            return Ok(None);
        };
        let every: u64 = every
            .parse()
            .map_err(|_| format!("BENCH_CHURN_EVERY={every}: not a number of seconds"))?;
        let list_failures = match std::env::var("BENCH_LIST_FAILURES") {
            Ok(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|f| (0.0..=1.0).contains(f))
                    .ok_or(format!("BENCH_LIST_FAILURES={v}: not a share from 0 to 1"))?,
            ),
            Err(_) => None,
        };
        Ok(Some(Churn {
            every: Duration::from_secs(every.max(1)),
            list_failures,
        }))
    }

    /// The PpioInstances it adds in `steady` seconds.
    fn newcomers(&self, steady: u64) -> usize {
        usize::try_from(steady / self.every.as_secs()).unwrap_or(0) + 1
    }
}

/// Seconds since the oldest `ppio_instance_last_success_timestamp_seconds` of `metrics`.
fn oldest_observation(metrics: &str) -> f64 {
    metric_min(metrics, "ppio_instance_last_success_timestamp_seconds")
        .map(|t| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
                - t
        })
        .unwrap_or(f64::NAN)
}

/// The steady window of the churn scenario: PpioInstances `n..` created one every
/// `churn.every`, LIST pages failing meanwhile; the oldest observation sampled every 5 s.
/// Prints what it saw.
async fn churn_window(
    churn: &Churn,
    (sim, op_addr): (&Simulator, SocketAddr),
    (scene, client): (&Scene, &Client),
    (n, account): (usize, usize),
    steady: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    use ppio_operator::simulator::{Fault, LIST_FAULT};
    if let Some(share) = churn.list_failures {
        sim.set_fault(LIST_FAULT, Fault::status(503).with_share(share));
    }
    let metrics = || async {
        http_get(op_addr, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    let before = metrics().await;
    let list0 = sim.counts().list;
    let start = Instant::now();
    let mut oldest: f64 = 0.0;
    let mut created = Vec::new();
    let mut next_new = start;
    while start.elapsed() < steady {
        if Instant::now() >= next_new {
            let (ns, name, o) = scene.object(n + created.len(), account);
            Api::<PpioInstance>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &o)
                .await?;
            created.push(name);
            next_new += churn.every;
        }
        oldest = oldest.max(oldest_observation(&metrics().await));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sim.clear_fault(LIST_FAULT);
    let after = metrics().await;
    let walks = |result: &str| {
        let with = format!("result=\"{result}\"");
        metric_sum(&after, "ppio_api_sweeps_total", &[&with])
            - metric_sum(&before, "ppio_api_sweeps_total", &[&with])
    };
    let pages = sim.counts().list - list0;
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), NS);
    let mut synced = Vec::new();
    for name in &created {
        let o = api.get(name).await?;
        let shown = o.status.as_ref().and_then(|s| s.condition("Synced"));
        if let (Some(c), Some(at)) = (shown, &o.metadata.creation_timestamp) {
            synced.push((c.last_transition_time.0.as_second() - at.0.as_second()) as f64);
        }
    }
    synced.sort_by(f64::total_cmp);
    println!(
        "churn: {} new PpioInstances (one every {} s){}",
        created.len(),
        churn.every.as_secs(),
        churn
            .list_failures
            .map(|f| format!(", {:.1}% of LIST pages failing (503)", f * 100.0))
            .unwrap_or_default()
    );
    println!("  oldest observation, sampled every 5 s: at most {oldest:.0} s old (interval 60 s)");
    println!(
        "  LIST pages: {pages} in {:.0} s; walks: {:.0} ended, {:.0} truncated, {:.0} failed",
        start.elapsed().as_secs_f64(),
        walks("ok"),
        walks("truncated"),
        walks("error"),
    );
    println!(
        "  newcomers create -> Synced (as the objects record it): {} of {} Synced, p50 {:.0} s, max {:.0} s",
        synced.len(),
        created.len(),
        percentile(&synced, 0.5),
        synced.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = arg(1)
        .and_then(|a| a.parse().ok())
        .ok_or("usage: bench-scale N OPERATOR [STEADY_SECONDS] [SETTLE_SECONDS]")?;
    let operator = PathBuf::from(
        arg(2).ok_or("usage: bench-scale N OPERATOR [STEADY_SECONDS] [SETTLE_SECONDS]")?,
    );
    let steady: u64 = arg(3).and_then(|a| a.parse().ok()).unwrap_or(60);
    let settle: u64 = arg(4).and_then(|a| a.parse().ok()).unwrap_or(0);

    let state = tempfile::Builder::new().prefix("ppio-bench-").tempdir()?;
    // SIGINT or SIGTERM stops the bench the way an error does: its programs are stopped and
    // its folder removed when `bench` and `state` are dropped.
    tokio::select! {
        done = bench(n, operator, (steady, settle), &state) => done,
        () = ppio_operator::signal::shutdown_signal() => {
            eprintln!("bench-scale: stopped by a signal; its programs and its folder go");
            Err("stopped by a signal".into())
        }
    }
}

/// The bench itself, with its programs' files under `state`.
async fn bench(
    n: usize,
    operator: PathBuf,
    (steady, settle): (u64, u64),
    state: &tempfile::TempDir,
) -> Result<(), Box<dyn std::error::Error>> {
    let crds = state.path().join("crds");
    std::fs::create_dir_all(&crds)?;
    std::fs::write(
        crds.join("ppioinstances.gpus.ppio.com.yaml"),
        ppio_operator::crd::crd_yaml()?,
    )?;
    let cp_dir = state.path().join("cp");
    let mut cp = ControlPlane::start(&tools_dir(), Some(&cp_dir), Some(&crds)).await?;
    let client = cp.client().await?;
    let apiserver_pid = pid_of(&cp_dir, "kube-apiserver");

    let env_number = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    let keys = env_number("BENCH_KEYS").unwrap_or(1).max(1);
    let account = env_number("BENCH_ACCOUNT")
        .unwrap_or(n)
        .max(n.div_ceil(keys));
    let exports = env_number("BENCH_EXPORTS").unwrap_or(0).min(n);
    let churn = Churn::from_env()?;
    if churn.is_some() && keys > 1 {
        return Err("BENCH_CHURN_EVERY runs with one key (no BENCH_KEYS)".into());
    }
    // The churn scenario's newcomers track instances the account holds besides the N.
    let account = account + churn.as_ref().map_or(0, |c| c.newcomers(steady));
    let scene = Scene::new(keys, n, exports);
    // The simulator: ACCOUNT copies of the first sample (running), billed by the hour so that
    // they have bills that grow every settled hour, each with its own id.
    let mut sample = Simulator::samples().remove(0);
    sample["billing"] = serde_json::json!({"mode": "postpaid"});
    let instances: Vec<Value> = (0..account)
        .map(|i| {
            let mut v = sample.clone();
            v["id"] = Value::from(format!("bench{i:06}"));
            v
        })
        .collect();
    let sim = Simulator::new(instances, scene.keys.clone());
    let sim_addr = sim
        .spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await?;

    scene.create_namespaces(&client).await?;

    let http_port = free_port()?;
    let log = state.path().join("operator.log");
    let mut args = vec![
        "run".to_string(),
        "--ppio-base-url".into(),
        format!("http://{sim_addr}"),
        "--http-addr".into(),
        format!("127.0.0.1:{http_port}"),
    ];
    if exports > 0 {
        args.extend([
            "--export-connection-secrets=true".to_string(),
            "--export-services=true".into(),
        ]);
    }
    let kubeconfig = cp.kubeconfig.display().to_string();
    let mut env = vec![("KUBECONFIG", kubeconfig.as_str())];
    if keys == 1 {
        args.extend(["--namespace".to_string(), NS.into()]);
        env.push(("PPIO_API_KEY", KEY));
    }
    let mut op = Guarded::spawn("ppio-operator", &operator, &args, &log, &env)?;
    let op_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    while http_get(op_addr, "/readyz").await.map(|(c, _)| c) != Some(200) {
        op.check_alive()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let op_pid = op.pid().unwrap_or(0);

    if keys == 1 {
        println!(
            "bench-scale: {n} PpioInstances on one key, default budget (10/s, burst 20), refreshInterval 60s"
        );
    } else {
        println!(
            "bench-scale: {n} PpioInstances over {keys} namespaces, a key each, one account of {account} instances; default budget (10/s, burst 20) per key, refreshInterval 60s"
        );
    }
    // The operator reads its settings from the environment too: say which ones differ.
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PPIO_") && k != "PPIO_API_KEY" && k != "PPIO_TOOLS_BIN")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !overrides.is_empty() {
        println!(
            "  NOT at the defaults: the operator also reads {}",
            overrides.join(" ")
        );
    }
    if exports > 0 {
        println!("  {exports} of them ask for a connection Secret and a Service (exports allowed)");
    }
    let api: Api<PpioInstance> = if keys == 1 {
        Api::namespaced(client.clone(), NS)
    } else {
        Api::all(client.clone())
    };
    // What the PpioInstances show, followed by a watch (a LIST of 10,000 objects every few
    // seconds would load the API server more than the operator does).
    let progress = Arc::new(Mutex::new(Progress::default()));
    let follow = tokio::spawn(follow(api.clone(), progress.clone()));
    let created_at = Instant::now();
    // The fill as it goes: every 5 s until every PpioInstance is Synced.
    tokio::spawn(timeline(
        progress.clone(),
        sim.clone(),
        n,
        created_at,
        [op_pid, apiserver_pid, pid_of(&cp_dir, "etcd")],
    ));
    // BENCH_ANNOTATION_KIB=K: each PpioInstance carries a foreign annotation of K KiB.
    let blob = env_number("BENCH_ANNOTATION_KIB").map(|k| "x".repeat(k * 1024));
    if let Some(b) = &blob {
        println!(
            "  each carries an annotation of {} KiB (example.com/notes)",
            b.len() / 1024
        );
    }
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let progress = progress.clone();
            let (ns, name, mut o) = scene.object(i, account);
            if let Some(blob) = &blob {
                o.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("example.com/notes".into(), blob.clone());
            }
            let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
            async move {
                let sent = Instant::now();
                match api.create(&PostParams::default(), &o).await {
                    Ok(_) => {
                        lock(&progress).created.insert(name, sent);
                    }
                    Err(e) => eprintln!("create {name}: {e}"),
                }
            }
        })
        .await;
    let create_secs = created_at.elapsed().as_secs_f64();
    println!("created {n} PpioInstances in {create_secs:.1} s");

    // Fill: every object Synced=True, then every one fetched in full (prices and endpoints
    // come from a GET only).
    let mut first_state_at = None;
    let mut fill = None;
    loop {
        let (with_state, synced, fetched) = {
            let p = lock(&progress);
            (p.with_state.len(), p.synced.len(), p.fetched.len())
        };
        if first_state_at.is_none() && with_state == n {
            first_state_at = Some(created_at.elapsed());
        }
        if fill.is_none() && synced == n {
            fill = Some(created_at.elapsed());
            let latencies = lock(&progress).latencies();
            let fill = fill.unwrap_or_default();
            println!(
                "fill: every PpioInstance Synced after {:.1} s (every state shown after {:.1} s)",
                fill.as_secs_f64(),
                first_state_at.unwrap_or(fill).as_secs_f64()
            );
            println!(
                "create -> Synced (create sent -> the watch shows Synced=True): p50 {:.1} s, p99 {:.1} s, max {:.1} s",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().copied().unwrap_or(f64::NAN)
            );
            let mut recorded: Vec<f64> = lock(&progress)
                .recorded
                .values()
                .map(|s| *s as f64)
                .collect();
            recorded.sort_by(f64::total_cmp);
            println!(
                "create -> Synced as the objects record it (creationTimestamp -> the Synced condition's lastTransitionTime, to the second): p50 {:.0} s, p99 {:.0} s, max {:.0} s",
                percentile(&recorded, 0.5),
                percentile(&recorded, 0.99),
                recorded.last().copied().unwrap_or(f64::NAN)
            );
            println!(
                "  CPU used so far: operator {:.1} s, API server {:.1} s",
                cpu_seconds(op_pid),
                cpu_seconds(apiserver_pid)
            );
        }
        if fetched == n {
            break;
        }
        op.check_alive()?;
        if follow.is_finished() {
            return Err("the watch of PpioInstances ended".into());
        }
        if created_at.elapsed() > Duration::from_secs(7200) {
            return Err(
                format!("after 2h: {synced} of {n} Synced, {fetched} fetched in full").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    follow.abort();
    println!(
        "every PpioInstance fetched in full (prices, endpoints) after {:.0} s",
        created_at.elapsed().as_secs_f64()
    );
    println!("  operator RSS: {:.0} MiB", rss_mib(op_pid));

    // BENCH_ACROSS_HOUR: the steady window starts 150 s before an hour begins, so that it
    // holds the status writes of one settled hour of bills.
    let settle = if std::env::var("BENCH_ACROSS_HOUR").is_ok_and(|v| v == "1") {
        let now = jiff::Timestamp::now().as_second();
        let to_window = (3600 - now.rem_euclid(3600) - 150).rem_euclid(3600);
        let mut wait = u64::try_from(to_window).unwrap_or(0);
        while wait < settle {
            wait += 3600;
        }
        wait
    } else {
        settle
    };
    if settle > 0 {
        // A PpioInstance's next full GET comes at its own slot of the full-refresh period,
        // at least half a period after its first one: right after the fill there are fewer
        // of them than in steady state.
        println!("waiting {settle} s before measuring, so that full GETs run at their steady rate");
        let until = Instant::now() + Duration::from_secs(settle);
        while Instant::now() < until {
            op.check_alive()?;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    // Steady state.
    let yardstick0 = tokio::task::spawn_blocking(yardstick).await.unwrap_or(0.0);
    let counts0 = sim.counts();
    let op_metrics0 = http_get(op_addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let api_metrics0 = apiserver_metrics(&client).await;
    let (op_cpu0, api_cpu0) = (cpu_seconds(op_pid), cpu_seconds(apiserver_pid));
    let t0 = Instant::now();
    // The operator's CPU at each third of the window: one window's figure can be moved by a
    // burst of work (a money read, the full GETs' slots), three show how much.
    let thirds = tokio::spawn(async move {
        let mut at = Vec::new();
        for k in 1..CPU_SLICES {
            let third = Duration::from_secs(steady).mul_f64(f64::from(k) / f64::from(CPU_SLICES));
            tokio::time::sleep_until((t0 + third).into()).await;
            at.push(cpu_seconds(op_pid));
        }
        at
    });
    match &churn {
        Some(churn) => {
            churn_window(
                churn,
                (&sim, op_addr),
                (&scene, &client),
                (n, account),
                Duration::from_secs(steady),
            )
            .await?
        }
        None => tokio::time::sleep(Duration::from_secs(steady)).await,
    }
    let secs = t0.elapsed().as_secs_f64();
    let counts1 = sim.counts();
    // Before the window's last /metrics read: the operator keeps the text of an answer (about
    // 6 MB at 10,000) for a second, for other scrapers to share.
    let rss_settled = rss_mib(op_pid);
    // Before the window's last /metrics answer, whose CPU is a scraper's, printed apart.
    let (op_cpu1, api_cpu1) = (cpu_seconds(op_pid), cpu_seconds(apiserver_pid));
    let op_metrics1 = http_get(op_addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let scrape_cpu = cpu_seconds(op_pid) - op_cpu1;
    let mut marks = vec![op_cpu0];
    marks.extend(thirds.await.unwrap_or_default());
    marks.push(op_cpu1);
    let slices: Vec<f64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    let api_metrics1 = apiserver_metrics(&client).await;
    let yardstick1 = tokio::task::spawn_blocking(yardstick).await.unwrap_or(0.0);
    let gets = counts1.instances.values().sum::<u64>() - counts0.instances.values().sum::<u64>();
    let lists = counts1.list - counts0.list;
    let intervals = secs / 60.0;
    let per = |x: f64| x / n as f64 / intervals;
    // How much an operator metric grew over the window.
    let grew =
        |name: &str| metric_sum(&op_metrics1, name, &[]) - metric_sum(&op_metrics0, name, &[]);
    let writes = grew("ppio_status_writes_total");
    let oldest = oldest_observation(&op_metrics1);
    let reconciles = grew("ppio_reconciles_total");
    // How the window's GETs fall on instances: once each, or some fetched again.
    let mut fetched: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, count) in &counts1.instances {
        let before = counts0.instances.get(id).copied().unwrap_or(0);
        if *count > before {
            *fetched.entry(count - before).or_default() += 1;
        }
    }
    println!("steady state over {secs:.0} s:");
    println!(
        "  PPIO requests per instance per interval: {:.4} ({:.4} GET, {:.4} LIST)",
        per((gets + lists) as f64),
        per(gets as f64),
        per(lists as f64)
    );
    println!(
        "  instances by GETs in the window (GETs: instances): {}",
        fetched
            .iter()
            .map(|(gets, ids)| format!("{gets}: {ids}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  reconciles per instance per interval: {:.4} ({:.2} per GET)",
        per(reconciles),
        reconciles / (gets.max(1) as f64)
    );
    println!(
        "  status writes: {writes:.0} ({:.2} per instance per hour)",
        writes / n as f64 / secs * 3600.0
    );
    let calls = |c: &ppio_operator::simulator::Counts, call: &str| {
        c.calls.get(call).copied().unwrap_or(0) as f64
    };
    let money: Vec<(&str, f64)> = ["products", "bills", "monthly_bills", "balance"]
        .into_iter()
        .map(|call| (call, calls(&counts1, call) - calls(&counts0, call)))
        .collect();
    let money_total: f64 = money.iter().map(|(_, v)| v).sum();
    println!(
        "  money requests: {money_total:.0} ({}) = {:.6} per instance per interval",
        money
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        per(money_total)
    );
    println!(
        "  Secret GETs at the API server: {:.0}",
        secret_gets(&api_metrics1) - secret_gets(&api_metrics0)
    );
    if exports > 0 {
        let export_writes = grew("ppio_export_writes_total");
        let writes = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];
        let reads = ["GET", "LIST"];
        println!(
            "  exports ({exports} PpioInstances): {export_writes:.0} writes by the operator; at the API server {:.0} writes and {:.0} reads of Secrets, Services and EndpointSlices",
            export_requests(&api_metrics1, &writes) - export_requests(&api_metrics0, &writes),
            export_requests(&api_metrics1, &reads) - export_requests(&api_metrics0, &reads),
        );
        for line in export_request_breakdown(&api_metrics0, &api_metrics1) {
            println!("    {line}");
        }
    }
    println!(
        "  operator CPU: {:.1} µs per instance per interval; API server CPU: {:.2} s; one /metrics answer: {:.2} s",
        per(op_cpu1 - op_cpu0) * 1e6,
        api_cpu1 - api_cpu0,
        scrape_cpu
    );
    if slices.len() == CPU_SLICES as usize {
        let slice_intervals = intervals / f64::from(CPU_SLICES);
        let us: Vec<f64> = slices
            .iter()
            .map(|c| c / n as f64 / slice_intervals * 1e6)
            .collect();
        let mut sorted = us.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "  operator CPU by thirds of the window: {} µs per instance per interval (median {:.1})",
            us.iter()
                .map(|u| format!("{u:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            sorted[sorted.len() / 2]
        );
    }
    println!(
        "  yardstick (the operator's decode + status code, 100,000 times, one thread): {yardstick0:.2} s CPU before the window, {yardstick1:.2} s after"
    );
    println!(
        "  operator RSS: {rss_settled:.0} MiB settled; {:.0} MiB right after a /metrics answer",
        rss_mib(op_pid)
    );
    println!("  oldest observation: {oldest:.0} s old (interval 60 s)");
    if keys > 1 {
        let mut per_key: Vec<f64> = (0..keys)
            .map(|k| {
                let label = format!("key{k}");
                let at = |c: &ppio_operator::simulator::Counts| {
                    c.keys.get(&label).copied().unwrap_or(0) as f64
                };
                (at(&counts1) - at(&counts0)) / intervals
            })
            .collect();
        per_key.sort_by(f64::total_cmp);
        println!(
            "  PPIO requests per interval per key ({} PpioInstances each): mean {:.1}, max {:.1} (GETs alone: {})",
            n / keys,
            per_key.iter().sum::<f64>() / keys as f64,
            per_key.last().copied().unwrap_or(f64::NAN),
            n / keys
        );
    }
    if let Some(scrapers) = env_number("BENCH_SLOW_SCRAPERS") {
        slow_scrapers(op_addr, op_pid, scrapers).await;
    }
    op.stop();
    cp.stop();
    // BENCH_LOG=PATH keeps the operator's log there.
    if let Ok(path) = std::env::var("BENCH_LOG") {
        std::fs::copy(&log, &path)?;
        println!("operator log: {path}");
    }
    Ok(())
}
