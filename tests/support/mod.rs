//! Shared pieces of the end-to-end tests: one real control plane per test binary, the
//! operator started as its own process, the simulator, kubectl, and waiting helpers.
#![allow(dead_code)]

pub mod mock;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ppio_operator::crd::{PpioInstance, PpioInstanceStatus};
use ppio_operator::simulator::Simulator;
use ppio_operator::testenv::{ControlPlane, Guarded, client_for, free_port};

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_ppio-operator");

/// The pinned upstream programs (tools/build.sh puts them here).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("PPIO_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join(".tools/bin"))
}

struct Shared {
    kubeconfig: PathBuf,
    tools: PathBuf,
    _cp: ControlPlane,
}

static CONTROL_PLANE: OnceLock<Result<Shared, String>> = OnceLock::new();

fn shared() -> &'static Shared {
    let result = CONTROL_PLANE.get_or_init(|| {
        let tools = tools_dir();
        // Start on a runtime of its own: the control plane outlives every test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testenv");
            let name = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "tests".into());
            let dir = base.join(format!("{name}-{}", std::process::id()));
            // State of earlier runs of this binary.
            if let Ok(entries) = std::fs::read_dir(&base) {
                for e in entries.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{name}-"))
                    {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
            let cp = rt
                .block_on(ControlPlane::start(
                    &tools,
                    Some(&dir),
                    Some(&Path::new(REPO).join("crds")),
                ))
                .map_err(|e| format!("{e} (build the upstream programs with tools/build.sh)"))?;
            Ok(Shared {
                kubeconfig: cp.kubeconfig.clone(),
                tools,
                _cp: cp,
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the control plane start-up panicked".into()))
    });
    match result {
        Ok(s) => s,
        Err(e) => panic!("cannot start the test control plane: {e}"),
    }
}

/// The admin kubeconfig of the shared control plane.
pub fn kubeconfig() -> &'static Path {
    &shared().kubeconfig
}

/// A client for the shared control plane, on the calling test's runtime.
pub async fn client() -> Client {
    client_for(kubeconfig()).await.expect("client")
}

/// Runs the real kubectl; `stdin` is piped in when given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(shared().tools.join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig()).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kubectl finishes")
}

/// kubectl that must succeed; its stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT_NS: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id() % 10000,
        NEXT_NS.fetch_add(1, Ordering::SeqCst)
    );
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    name
}

/// Creates a Secret with one key.
pub async fn secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some([(key.to_string(), value.to_string())].into()),
        ..Default::default()
    };
    let _ = api.delete(name, &Default::default()).await;
    api.create(&PostParams::default(), &s)
        .await
        .expect("secret created");
}

/// The simulators run on a runtime of their own, so a test that blocks its thread (waiting
/// for kubectl, say) does not stall the PPIO API the operator talks to.
fn simulator_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("simulator runtime")
    })
}

/// A simulator on 127.0.0.1 serving the built-in samples to `keys`.
pub async fn simulator(keys: &[&str]) -> (Simulator, SocketAddr) {
    let sim = Simulator::new(
        Simulator::samples(),
        keys.iter().map(|k| k.to_string()).collect(),
    );
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("simulator binds");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let server = sim.clone();
    simulator_runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let _ = server.serve(listener).await;
    });
    (sim, addr)
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

    /// [`Operator::start`] with a given `RUST_LOG`.
    pub async fn start_logging(
        ns: &str,
        sim: SocketAddr,
        default_key: Option<&str>,
        extra: &[&str],
        rust_log: &str,
    ) -> Operator {
        let port = free_port().expect("port");
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
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
        let kc = kubeconfig().display().to_string();
        let mut envs = vec![("KUBECONFIG", kc.as_str()), ("RUST_LOG", rust_log)];
        if let Some(k) = default_key {
            envs.push(("PPIO_API_KEY", k));
        }
        let mut process = Guarded::spawn("ppio-operator", Path::new(OPERATOR), &args, &log, &envs)
            .expect("operator starts");
        let start = Instant::now();
        loop {
            process.check_alive().unwrap_or_else(|e| {
                panic!(
                    "operator died: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
            if http_get(http, "/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "operator not ready in 30s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Operator { process, http, log }
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

/// A minimal HTTP/1.1 GET against 127.0.0.1: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Applies a PpioInstance manifest with the real kubectl.
pub fn apply_instance(ns: &str, name: &str, spec_yaml: &str) {
    let manifest = format!(
        "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{}",
        spec_yaml
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
}

/// Polls until `check` holds for the PpioInstance, or panics after `limit`.
pub async fn wait_for(
    api: &Api<PpioInstance>,
    name: &str,
    limit: Duration,
    what: &str,
    check: impl Fn(&PpioInstance) -> bool,
) -> PpioInstance {
    let start = Instant::now();
    loop {
        if let Ok(Some(obj)) = api.get_opt(name).await {
            if check(&obj) {
                return obj;
            }
            if start.elapsed() > limit {
                panic!(
                    "{name}: {what} not reached within {limit:?}; status: {}",
                    serde_json::to_string_pretty(&obj.status).unwrap_or_default()
                );
            }
        } else if start.elapsed() > limit {
            panic!("{name}: not found within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits up to 10s until the PpioInstance reports `Synced=True` (`Observed`).
pub async fn wait_observed(api: &Api<PpioInstance>, name: &str) -> PpioInstance {
    wait_for(api, name, Duration::from_secs(10), "observed", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await
}

/// The (status, reason) of a condition.
pub fn condition(s: Option<&PpioInstanceStatus>, t: &str) -> Option<(String, String)> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// True when the condition has this status and reason.
pub fn has(obj: &PpioInstance, t: &str, status: &str, reason: &str) -> bool {
    condition(obj.status.as_ref(), t) == Some((status.to_string(), reason.to_string()))
}
