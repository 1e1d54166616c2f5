//! One real control plane per test binary, shared by its tests, and what end-to-end tests do
//! with it: kubectl, namespaces, Secrets, a simulator on a runtime of its own, and waiting
//! for a PpioInstance to reach a state.
//!
//! Helpers here panic with a message instead of returning errors: they are for tests.

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

use crate::{ControlPlane, client_for, tools_dir};

struct Shared {
    kubeconfig: PathBuf,
    tools: PathBuf,
    _cp: ControlPlane,
}

static CONTROL_PLANE: OnceLock<Result<Shared, String>> = OnceLock::new();

/// The state folder of this test binary's control plane: `<tmp>/ppio-testenv/<binary>-<pid>`.
/// Folders of earlier runs whose process is gone are removed first.
fn state_dir() -> PathBuf {
    let base = std::env::temp_dir().join("ppio-testenv");
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tests".into());
    if let Ok(entries) = std::fs::read_dir(&base) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let pid = file.rsplit_once('-').map(|(_, pid)| pid.to_string());
            let gone = pid
                .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
                .is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    base.join(format!("{name}-{}", std::process::id()))
}

fn shared() -> &'static Shared {
    let result = CONTROL_PLANE.get_or_init(|| {
        let tools = tools_dir();
        // Start on a runtime of its own: the control plane outlives every test's runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let dir = state_dir();
            let crds = dir.join("crds");
            std::fs::create_dir_all(&crds).map_err(|e| e.to_string())?;
            let yaml = ppio_operator::crd::crd_yaml().map_err(|e| e.to_string())?;
            std::fs::write(crds.join("ppioinstances.gpus.ppio.com.yaml"), yaml)
                .map_err(|e| e.to_string())?;
            let cp = rt
                .block_on(ControlPlane::start(&tools, Some(&dir), Some(&crds)))
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

/// The admin kubeconfig of the shared control plane (started on first use).
pub fn kubeconfig() -> &'static Path {
    &shared().kubeconfig
}

/// A client for the shared control plane, on the calling test's runtime.
pub async fn client() -> Client {
    client_for(kubeconfig()).await.expect("client")
}

/// Runs the real kubectl against the shared control plane; `stdin` is piped in when given.
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

/// Creates (or re-creates) a Secret with one key, marked as PPIO credentials.
pub async fn secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    put_secret(client, ns, name, key, value, true).await
}

/// Creates (or re-creates) a Secret with one key, without the credentials label.
pub async fn unmarked_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    put_secret(client, ns, name, key, value, false).await
}

async fn put_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str, marked: bool) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let labels = marked.then(|| {
        [(
            ppio_operator::crd::CREDENTIALS_LABEL.to_string(),
            "true".to_string(),
        )]
        .into()
    });
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels,
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
    simulator_with(Simulator::samples(), keys).await
}

/// A simulator on 127.0.0.1 serving `instances` to `keys`.
pub async fn simulator_with(
    instances: Vec<serde_json::Value>,
    keys: &[&str],
) -> (Simulator, SocketAddr) {
    let sim = Simulator::new(instances, keys.iter().map(|k| k.to_string()).collect());
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

/// A minimal HTTP/1.1 GET (a local server, or a pod or Service of the test node): status, body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// A minimal HTTP/1.1 request, with a JSON merge patch as its body if any: status, body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    merge_patch: Option<&str>,
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let body = match merge_patch {
        Some(b) => format!(
            "Content-Type: application/merge-patch+json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => "\r\n".into(),
    };
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{body}")
            .as_bytes(),
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

/// Waits until a PpioInstance is observed in full: by a GET, whose fields (prices,
/// endpoints) LIST items lack.
pub async fn wait_fetched(api: &Api<PpioInstance>, name: &str) -> PpioInstance {
    wait_for(api, name, Duration::from_secs(15), "fetched in full", |o| {
        has(o, "Synced", "True", "Observed")
            && o.status.as_ref().is_some_and(|s| s.pricing.is_some())
    })
    .await
}

/// The (status, reason) of a condition, the one way tests read a condition.
pub fn condition(s: Option<&PpioInstanceStatus>, t: &str) -> Option<(String, String)> {
    s?.condition(t)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// True when the condition has this status and reason.
pub fn has(obj: &PpioInstance, t: &str, status: &str, reason: &str) -> bool {
    condition(obj.status.as_ref(), t) == Some((status.to_string(), reason.to_string()))
}
