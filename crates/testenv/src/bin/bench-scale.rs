//! The scale benchmark (`tools/bench-scale.sh N`): a real etcd + kube-apiserver, the PPIO
//! simulator with N instances, the release operator binary at its default settings (budget
//! 10/s, burst 20, refreshInterval 60s), N PpioInstances on one key. Prints figures; asserts
//! nothing.
//!
//!   bench-scale N OPERATOR_BINARY [STEADY_SECONDS]
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{ListParams, PostParams};
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

fn secret_gets(apiserver: &str) -> f64 {
    metric_sum(
        apiserver,
        "apiserver_request_total",
        &["resource=\"secrets\"", "verb=\"GET\""],
    )
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
        .ok_or("usage: bench-scale N OPERATOR [STEADY_SECONDS]")?;
    let operator = PathBuf::from(arg(2).ok_or("usage: bench-scale N OPERATOR [STEADY_SECONDS]")?);
    let steady: u64 = arg(3).and_then(|a| a.parse().ok()).unwrap_or(60);

    let state = tempfile::Builder::new().prefix("ppio-bench-").tempdir()?;
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

    // The simulator: N copies of the first sample, each with its own id.
    let sample = Simulator::samples().remove(0);
    let instances: Vec<Value> = (0..n)
        .map(|i| {
            let mut v = sample.clone();
            v["id"] = Value::from(format!("bench{i:06}"));
            v
        })
        .collect();
    let sim = Simulator::new(instances, vec![KEY.to_string()]);
    let sim_addr = sim
        .spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await?;

    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?,
        )
        .await?;

    let http_port = free_port()?;
    let log = state.path().join("operator.log");
    let mut op = Guarded::spawn(
        "ppio-operator",
        &operator,
        &[
            "run".into(),
            "--namespace".into(),
            NS.into(),
            "--ppio-base-url".into(),
            format!("http://{sim_addr}"),
            "--http-addr".into(),
            format!("127.0.0.1:{http_port}"),
        ],
        &log,
        &[
            ("KUBECONFIG", &cp.kubeconfig.display().to_string()),
            ("PPIO_API_KEY", KEY),
        ],
    )?;
    let op_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    while http_get(op_addr, "/readyz").await.map(|(c, _)| c) != Some(200) {
        op.check_alive()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let op_pid = op.pid().unwrap_or(0);

    println!(
        "bench-scale: {n} PpioInstances on one key, default budget (10/s, burst 20), refreshInterval 60s"
    );
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), NS);
    let created_at = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(32, |i| {
            let api = api.clone();
            async move {
                let mut o = PpioInstance::new(
                    &format!("i{i:06}"),
                    PpioInstanceSpec {
                        instance_id: format!("bench{i:06}"),
                        credentials_secret_ref: None,
                        refresh_interval: None,
                        suspend: None,
                    },
                );
                o.metadata.namespace = Some(NS.into());
                if let Err(e) = api.create(&PostParams::default(), &o).await {
                    eprintln!("create i{i:06}: {e}");
                }
            }
        })
        .await;
    let create_secs = created_at.elapsed().as_secs_f64();
    println!("created {n} PpioInstances in {create_secs:.1} s");

    // Fill: every object Synced=True.
    let synced = |o: &PpioInstance| {
        o.status
            .as_ref()
            .and_then(|s| s.condition("Synced"))
            .is_some_and(|c| c.status == "True")
    };
    let mut first_state_at = None;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let with_state = list
            .items
            .iter()
            .filter(|o| o.status.as_ref().and_then(|s| s.state.as_ref()).is_some())
            .count();
        if first_state_at.is_none() && with_state == n {
            first_state_at = Some(created_at.elapsed());
        }
        let done = list.items.iter().filter(|o| synced(o)).count();
        if done == n {
            break;
        }
        op.check_alive()?;
        if created_at.elapsed() > Duration::from_secs(7200) {
            return Err(format!("only {done} of {n} observed after 2h").into());
        }
        // Listing every object is heavy at 10,000: look less often (the latencies below come
        // from the objects' own timestamps, not from this loop).
        tokio::time::sleep(Duration::from_secs(if n > 2000 { 3 } else { 1 })).await;
    }
    let fill = created_at.elapsed();
    let list = api.list(&ListParams::default()).await?;
    let mut latencies: Vec<f64> = list
        .items
        .iter()
        .filter_map(|o| {
            let created = o.metadata.creation_timestamp.as_ref()?.0.as_second();
            let synced = o
                .status
                .as_ref()?
                .condition("Synced")?
                .last_transition_time
                .0
                .as_second();
            Some((synced - created) as f64)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "fill: every PpioInstance Synced after {:.1} s (every state shown after {:.1} s)",
        fill.as_secs_f64(),
        first_state_at.unwrap_or(fill).as_secs_f64()
    );
    println!(
        "create -> Synced: p50 {:.0} s, p99 {:.0} s, max {:.0} s (1 s resolution)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );

    // Every PpioInstance fetched in full (prices and endpoints come from a GET only).
    loop {
        let list = api.list(&ListParams::default()).await?;
        let fetched = list
            .items
            .iter()
            .filter(|o| o.status.as_ref().is_some_and(|s| s.pricing.is_some()))
            .count();
        if fetched == n {
            break;
        }
        op.check_alive()?;
        if created_at.elapsed() > Duration::from_secs(7200) {
            return Err(format!("only {fetched} of {n} fetched in full after 2h").into());
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    println!(
        "every PpioInstance fetched in full (prices, endpoints) after {:.0} s",
        created_at.elapsed().as_secs_f64()
    );
    println!("  operator RSS: {:.0} MiB", rss_mib(op_pid));

    // Steady state.
    let counts0 = sim.counts();
    let op_metrics0 = http_get(op_addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let api_metrics0 = apiserver_metrics(&client).await;
    let (op_cpu0, api_cpu0) = (cpu_seconds(op_pid), cpu_seconds(apiserver_pid));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(steady)).await;
    let secs = t0.elapsed().as_secs_f64();
    let counts1 = sim.counts();
    let op_metrics1 = http_get(op_addr, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let api_metrics1 = apiserver_metrics(&client).await;
    let (op_cpu1, api_cpu1) = (cpu_seconds(op_pid), cpu_seconds(apiserver_pid));
    let gets = counts1.instances.values().sum::<u64>() - counts0.instances.values().sum::<u64>();
    let lists = counts1.list - counts0.list;
    let intervals = secs / 60.0;
    let per = |x: f64| x / n as f64 / intervals;
    let writes = metric_sum(&op_metrics1, "ppio_status_writes_total", &[])
        - metric_sum(&op_metrics0, "ppio_status_writes_total", &[]);
    let oldest = metric_min(&op_metrics1, "ppio_instance_last_success_timestamp_seconds")
        .map(|t| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
                - t
        })
        .unwrap_or(f64::NAN);
    println!("steady state over {secs:.0} s:");
    println!(
        "  PPIO requests per instance per interval: {:.4} ({:.4} GET, {:.4} LIST)",
        per((gets + lists) as f64),
        per(gets as f64),
        per(lists as f64)
    );
    println!("  status writes: {writes:.0}");
    println!(
        "  Secret GETs at the API server: {:.0}",
        secret_gets(&api_metrics1) - secret_gets(&api_metrics0)
    );
    println!(
        "  operator CPU: {:.1} µs per instance per interval; API server CPU: {:.2} s",
        per(op_cpu1 - op_cpu0) * 1e6,
        api_cpu1 - api_cpu0
    );
    println!("  operator RSS: {:.0} MiB", rss_mib(op_pid));
    println!("  oldest observation: {oldest:.0} s old (interval 60 s)");
    op.stop();
    cp.stop();
    Ok(())
}
