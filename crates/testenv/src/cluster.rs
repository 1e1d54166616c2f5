//! One real control plane per test binary, shared by its tests, and what end-to-end tests do
//! with it: kubectl, namespaces, Secrets, a simulator on a runtime of its own, and waiting
//! for a PpioInstance to reach a state.
//!
//! Helpers here panic with a message instead of returning errors: they are for tests.
//!
//! Waiting: every wait loop of a test has a deadline, kept by [`Deadline`] (or
//! [`wait_until`], or [`wait_for`] for a PpioInstance). A deadline is hang protection, not a
//! claim about speed: it is generous ([`WAIT`] unless a wait needs longer), and the tests
//! assert behaviour (requests, writes, their order), never how fast something happened.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use ppio_operator::crd::{PpioInstance, PpioInstanceStatus};
use ppio_operator::simulator::Simulator;

use crate::{ControlPlane, client_for, tools_dir};

struct Shared {
    kubeconfig: PathBuf,
    _cp: ControlPlane,
    /// Held until this process exits (a static is never dropped): then its folder goes.
    _folder: FolderGuard,
}

/// Removes a folder once this process has exited, whatever way it ends: a shell waits for
/// the end of a pipe only this process holds, gives the control plane's processes the time
/// their guards give them to stop (SIGTERM, SIGKILL 5 s later), and removes the folder.
struct FolderGuard {
    _pipe: std::process::ChildStdin,
}

impl FolderGuard {
    fn new(folder: &Path) -> Result<FolderGuard, String> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"read _x; sleep 7; rm -rf -- "$1""#)
            .arg("sh")
            .arg(folder)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the folder guard: {e}"))?;
        let pipe = child.stdin.take().ok_or("the folder guard has no stdin")?;
        Ok(FolderGuard { _pipe: pipe })
    }
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
            // From here on (a control plane that did not start keeps its logs for a look).
            let folder = FolderGuard::new(&dir)?;
            Ok(Shared {
                kubeconfig: cp.kubeconfig.clone(),
                _cp: cp,
                _folder: folder,
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

/// How long a test waits for something before it fails: hang protection for a wait loop, not
/// a claim about how fast anything happens (tests run many at once on small machines).
pub const WAIT: Duration = Duration::from_secs(120);

/// How often the wait helpers look again.
const POLL: Duration = Duration::from_millis(200);

/// The deadline of a wait loop: the one way tests bound a wait.
///
/// ```ignore
/// let deadline = Deadline::new("the operator answers /readyz", WAIT);
/// while !ready().await {
///     deadline.check(|| format!("its log:\n{}", log()));
///     tokio::time::sleep(Duration::from_millis(100)).await;
/// }
/// ```
///
/// It measures real time (a thread's clock, not tokio's), so a test on tokio's paused clock
/// is held to it too. Passing it is a hang, reported with what was awaited and the details
/// given; a deadline is never an assertion about speed.
#[derive(Debug)]
pub struct Deadline {
    what: String,
    limit: Duration,
    start: Instant,
}

impl Deadline {
    /// A deadline `limit` (times `PPIO_TEST_DEADLINE_SCALE`) from now, for `what`.
    pub fn new(what: impl Into<String>, limit: Duration) -> Deadline {
        Deadline {
            what: what.into(),
            limit: limit * crate::deadline_scale(),
            start: Instant::now(),
        }
    }

    /// True once the deadline has passed.
    pub fn passed(&self) -> bool {
        self.start.elapsed() > self.limit
    }

    /// Panics with "<what> not reached within <limit>: <details>" once the deadline has
    /// passed; `details` (the state last seen, a log) is only computed then.
    #[track_caller]
    pub fn check<D: std::fmt::Display>(&self, details: impl FnOnce() -> D) {
        if self.passed() {
            panic!(
                "{} not reached within {:?} (a hang: the deadline is generous): {}",
                self.what,
                self.limit,
                details()
            );
        }
    }
}

/// Polls `check` until it gives a value, or panics after `limit` (see [`Deadline`]).
pub async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Deadline::new(what, limit);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        deadline.check(|| "");
        tokio::time::sleep(POLL).await;
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
    kubectl_at(kubeconfig(), args, stdin)
}

/// [`kubectl`] against the cluster of another kubeconfig (a control plane of a test's own).
pub fn kubectl_at(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = std::process::Command::new(tools_dir().join("kubectl"));
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
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

/// The names of the objects in `ns` with a Warning Event of `reason`, space separated, once
/// there is one (waits up to `WAIT`).
pub async fn warning_event_objects(ns: &str, reason: &str) -> String {
    let selector = format!("type=Warning,reason={reason}");
    wait_until(&format!("a Warning Event {reason}"), WAIT, async || {
        let names = kubectl_ok(
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                &selector,
                "-o",
                "jsonpath={.items[*].involvedObject.name}",
            ],
            None,
        );
        (!names.trim().is_empty()).then(|| names.trim().to_string())
    })
    .await
}

/// kubectl that must succeed; its stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    kubectl_at_ok(kubeconfig(), args, stdin)
}

/// [`kubectl_at`] that must succeed; its stdout.
pub fn kubectl_at_ok(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_at(kubeconfig, args, stdin);
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

/// One request to a simulator as the recording proxy in front of it saw it
/// ([`simulator_recorded`]). Its times are facts recorded as the requests passed, on this
/// machine's monotonic clock (the one the operator's timers run on), not when a test looked.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: String,
    /// The bearer key presented, if any.
    pub key: Option<String>,
    /// The answer's HTTP status; 0 when the simulator gave none.
    pub status: u16,
    /// When the request had reached the proxy (after the client sent it).
    pub sent: Instant,
    /// When the answer was complete, before it was passed on (before the client had it).
    pub answered: Instant,
}

impl Recorded {
    /// The instance id of a GET of one instance (`None` for a LIST page).
    pub fn instance(&self) -> Option<&str> {
        self.path.strip_prefix("/gpus/v2/instances/")
    }

    /// True for a page of the LIST call.
    pub fn is_list(&self) -> bool {
        self.path == "/gpus/v2/instances"
    }
}

/// The requests a simulator answered through its recording proxy, in the order they reached
/// it.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<Recorded>>>);

impl RequestLog {
    /// Every request so far, in the order they were sent.
    pub fn all(&self) -> Vec<Recorded> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        all.sort_by_key(|r| r.sent);
        all
    }

    fn push(&self, r: Recorded) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }
}

/// A simulator on 127.0.0.1 serving `instances` to `keys`, behind a proxy that records every
/// request and its answer ([`RequestLog`]); the address is the proxy's.
pub async fn simulator_recorded(
    instances: Vec<serde_json::Value>,
    keys: &[&str],
) -> (Simulator, SocketAddr, RequestLog) {
    let (sim, backend) = simulator_with(instances, keys).await;
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("proxy binds");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("address");
    let log = RequestLog::default();
    let recorded = log.clone();
    simulator_runtime().spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, backend, recorded.clone()));
        }
    });
    (sim, addr, log)
}

/// Passes one request from `client` to the simulator at `backend` and its answer back, and
/// records both. The request is sent on with `Connection: close` and the answer is read to its
/// end, so each client connection carries one request (the answer says so).
async fn relay(mut client: tokio::net::TcpStream, backend: SocketAddr, log: RequestLog) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MAX_HEAD: usize = 64 * 1024;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return;
        }
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut key = None;
    let mut length = 0usize;
    let mut forwarded = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "connection" | "keep-alive" => continue,
            "authorization" => key = value.strip_prefix("Bearer ").map(str::to_string),
            "content-length" => length = value.parse().unwrap_or(0),
            _ => {}
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("connection: close\r\n\r\n");
    let mut body = buf.split_off(head_end);
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let sent = Instant::now();
    let mut answer = Vec::new();
    if let Ok(mut up) = tokio::net::TcpStream::connect(backend).await {
        let mut request = forwarded.into_bytes();
        request.extend_from_slice(&body);
        if up.write_all(&request).await.is_ok() {
            let _ = up.read_to_end(&mut answer).await;
        }
    }
    let answered = Instant::now();
    let status = String::from_utf8_lossy(&answer[..answer.len().min(32)])
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    log.push(Recorded {
        method,
        path,
        query,
        key,
        status,
        sent,
        answered,
    });
    // The answer closes the connection: say so when the simulator did not.
    if let Some(i) = find(&answer, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&answer[..i]).to_ascii_lowercase();
        if !head.contains("\r\nconnection:") {
            answer.splice(i + 2..i + 2, b"connection: close\r\n".iter().copied());
        }
    }
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A port on 127.0.0.1 where nothing listens while the returned socket lives: it is bound
/// (so no one else gets the port) but not listening, so a connection to it is refused.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind");
    let port = socket.local_addr().expect("address").port();
    (socket, port)
}

/// A minimal HTTP/1.1 GET (a local server, or a pod or Service of the test node): status, body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None).await
}

/// A minimal HTTP/1.1 GET with `Authorization: Bearer <token>`: status, body.
pub async fn http_get_bearer(addr: SocketAddr, path: &str, token: &str) -> Option<(u16, String)> {
    send(
        addr,
        "GET",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
        None,
    )
    .await
}

/// A minimal HTTP/1.1 request, with a JSON merge patch as its body if any: status, body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    merge_patch: Option<&str>,
) -> Option<(u16, String)> {
    send(addr, method, path, "", merge_patch).await
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
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
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}{body}")
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

/// Polls until `check` holds for the PpioInstance; panics after [`WAIT`] (hang protection).
pub async fn wait_for(
    api: &Api<PpioInstance>,
    name: &str,
    what: &str,
    check: impl Fn(&PpioInstance) -> bool,
) -> PpioInstance {
    let deadline = Deadline::new(format!("{name}: {what}"), WAIT);
    loop {
        let obj = api.get_opt(name).await.ok().flatten();
        if let Some(obj) = &obj
            && check(obj)
        {
            return obj.clone();
        }
        deadline.check(|| match &obj {
            Some(obj) => format!(
                "status: {}",
                serde_json::to_string_pretty(&obj.status).unwrap_or_default()
            ),
            None => "not found".into(),
        });
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the PpioInstance reports `Synced=True` (`Observed`).
pub async fn wait_observed(api: &Api<PpioInstance>, name: &str) -> PpioInstance {
    wait_for(api, name, "observed", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await
}

/// Waits until a PpioInstance is observed in full: by a GET, whose fields (prices,
/// endpoints) LIST items lack.
pub async fn wait_fetched(api: &Api<PpioInstance>, name: &str) -> PpioInstance {
    wait_for(api, name, "fetched in full", |o| {
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
