//! The product's end-to-end pieces: the operator binary run as its own process the way a
//! user runs it, and the usual scene of a test. The rest (the shared control plane, kubectl,
//! the mocked API, waiting helpers) comes from the `ppio-testenv` crate.
// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::{Api, Client};
use ppio_operator::crd::PpioInstance;
use ppio_operator::simulator::Simulator;
pub use ppio_testenv::cluster::*;
pub use ppio_testenv::controlplane::{PORT_ATTEMPTS, bind_failed, clean_env};
pub use ppio_testenv::mock;
pub use ppio_testenv::{Guarded, free_port, tools_dir};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_ppio-operator");

/// A finished command's exit code (-1 when a signal ended it) and what it printed: stdout,
/// then stderr.
pub fn code_and_output(out: &std::process::Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The operator, run as its own process the way a user runs it.
pub struct Operator {
    pub process: Guarded,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `ppio-operator run` for one namespace against the simulator at `sim` and
    /// waits until `/readyz` answers 200.
    pub async fn start(
        ns: &str,
        sim: SocketAddr,
        default_key: Option<&str>,
        extra: &[&str],
    ) -> Operator {
        Self::start_logging(ns, sim, default_key, extra, "ppio_operator=debug,warn").await
    }

    /// [`Operator::start`] with a given `RUST_LOG`. The operator gets a clean environment:
    /// nothing of the caller's (`PPIO_API_KEY`, `WATCH_NAMESPACE`, `HTTP_ADDR`, `RUST_LOG`,
    /// `KUBECONFIG`...) reaches it, only what is given here. When its port was taken before it
    /// bound it, it is started again on another.
    pub async fn start_logging(
        ns: &str,
        sim: SocketAddr,
        default_key: Option<&str>,
        extra: &[&str],
        rust_log: &str,
    ) -> Operator {
        Self::start_as(ns, sim, default_key, extra, rust_log, kubeconfig()).await
    }

    /// [`Operator::start_logging`] with the Kubernetes identity of the kubeconfig `kc`.
    pub async fn start_as(
        ns: &str,
        sim: SocketAddr,
        default_key: Option<&str>,
        extra: &[&str],
        rust_log: &str,
        kc: &Path,
    ) -> Operator {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let kc = kc.display().to_string();
        // Money is read only where a test asks for it (its flags win over these).
        let mut envs = vec![
            ("KUBECONFIG", kc.as_str()),
            ("RUST_LOG", rust_log),
            ("PPIO_CATALOGUE_REFRESH_INTERVAL", "0"),
            ("PPIO_BILLING_REFRESH_INTERVAL", "0"),
        ];
        if let Some(k) = default_key {
            envs.push(("PPIO_API_KEY", k));
        }
        let mut attempt = 1;
        loop {
            let port = free_port().expect("port");
            let http = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = dir.join(format!("{ns}-{port}.log"));
            let mut args: Vec<String> = [
                "run",
                "--namespace",
                ns,
                "--ppio-base-url",
                &format!("http://{sim}"),
                "--http-addr",
                &http.to_string(),
                "--default-refresh-interval",
                "10s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut process =
                Guarded::spawn_clean("ppio-operator", Path::new(OPERATOR), &args, &log, &envs)
                    .expect("operator starts");
            let deadline = Deadline::new("the operator answers /readyz", WAIT);
            let ready = loop {
                if let Err(e) = process.check_alive() {
                    if attempt < PORT_ATTEMPTS && bind_failed(&log) {
                        break false;
                    }
                    panic!(
                        "operator died: {e}\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                // Ours, and not another server that took the port: ours still runs.
                if http_get(http, "/readyz")
                    .await
                    .is_some_and(|(code, _)| code == 200)
                    && process.check_alive().is_ok()
                {
                    break true;
                }
                deadline.check(|| std::fs::read_to_string(&log).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if ready {
                return Operator { process, http, log };
            }
            attempt += 1;
        }
    }

    /// The operator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test when the operator exited.
    pub fn assert_running(&mut self) {
        if let Err(e) = self.process.check_alive() {
            panic!("the operator exited: {e}\n{}", self.log());
        }
    }
}

/// What most end-to-end tests start from: a fresh namespace, a simulator with the samples
/// accepting `key`, the operator watching the namespace with `key` as its default, and an Api
/// for the namespace's PpioInstances.
pub struct Scene {
    pub client: Client,
    pub ns: String,
    pub sim: Simulator,
    pub sim_addr: SocketAddr,
    pub op: Operator,
    pub api: Api<PpioInstance>,
}

/// Sets up a [`Scene`]; `extra` are more `run` flags.
pub async fn scene(prefix: &str, key: &str, extra: &[&str]) -> Scene {
    let client = client().await;
    let ns = namespace(&client, prefix).await;
    let (sim, sim_addr) = simulator(&[key]).await;
    let op = Operator::start(&ns, sim_addr, Some(key), extra).await;
    let api = Api::namespaced(client.clone(), &ns);
    Scene {
        client,
        ns,
        sim,
        sim_addr,
        op,
        api,
    }
}

/// Requests that observe the instance `id`: the LIST pages (each may carry it) and its GETs.
pub fn observations(sim: &Simulator, id: &str) -> u64 {
    sim.counts().list + sim.requests_for(id)
}

/// The operator run in this process (`run_with`) with `client` and `config`, on a free port
/// of 127.0.0.1 for its HTTP server (`config.http_addr` is replaced), until `stop` turns
/// true. Returns once `/livez` answers, with the address and the task; when the port was
/// taken before the operator bound it, it runs again on another.
pub async fn run_in_process(
    client: Client,
    config: ppio_operator::operator::RunConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), ppio_operator::operator::StartError>>,
) {
    use ppio_operator::operator::{RunConfig, StartError, run_with};
    let mut attempt = 1;
    loop {
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
        let config = RunConfig {
            http_addr: http,
            ..config.clone()
        };
        let mut stop = stop.clone();
        let running = tokio::spawn(run_with(client.clone(), config, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let deadline = Deadline::new("the operator in this process answers /livez", WAIT);
        let bound = loop {
            if running.is_finished() {
                break false;
            }
            // Ours, and not another server that took the port: ours still runs.
            if http_get(http, "/livez").await.is_some() && !running.is_finished() {
                break true;
            }
            deadline.check(|| "");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if bound {
            return (http, running);
        }
        match running.await.expect("the operator's task") {
            Err(StartError::Listen { .. }) if attempt < PORT_ATTEMPTS => attempt += 1,
            other => panic!("the operator stopped before it served: {other:?}"),
        }
    }
}
