//! A real single-node Kubernetes on this machine, for end-to-end tests of the image and the
//! Helm chart the way users run them: the control plane of [`crate::controlplane`] (with
//! [`ApiServerOptions::node_ip`]), kube-controller-manager, kube-scheduler, the kubelet
//! (cgroupfs, cgroup v1 allowed), kube-proxy (iptables), containerd and runc (Debian's, run
//! with a config, socket and state of our own), the CNI bridge plugin, and images imported
//! from OCI archives (`imagePullPolicy: Never`). The settings that matter and the pitfalls of
//! a node on this kind of machine: docs/development.md, "The real node".
//!
//! It needs root and changes the machine, so it is careful to change it back:
//!
//! - One node at a time: a watchdog process holds an flock on [`LOCK_FILE`] for the node's
//!   whole life, teardown included.
//! - Before anything starts, the kernel settings the kubelet, the bridge plugin and kube-proxy
//!   may change ([`KERNEL_SETTINGS`]) and the folders they may create outside [`STATE_DIR`]
//!   are recorded into a teardown script, `STATE_DIR/teardown.sh`. It stops every process of
//!   the node (by the pids they wrote), kills every process of a pod (the `kubepods`
//!   cgroups) and the containerd shims, unmounts everything under [`STATE_DIR`], removes the
//!   cgroups, the `cni0` bridge and its veths, every `KUBE-*`/`CNI-*` chain (iptables and
//!   ip6tables) and the folders that were not there, restores the kernel settings, and
//!   removes [`STATE_DIR`]. It is safe to run twice.
//! - The script runs from [`Node::down`], from [`Drop`] (a panicking test), from the
//!   watchdog when this process dies without either (killed; the watchdog ignores SIGINT,
//!   SIGTERM and SIGHUP and sits in a process group of its own), and at the next
//!   [`Node::up`] if a run was interrupted harder than that (the machine lost power). By hand:
//!   `sh /var/lib/ppio-testenv-node/teardown.sh`.
//! - [`Node::down`] then checks that nothing is left: no process of the node, no mount, no
//!   interface, no iptables chain, no changed kernel setting, no cgroup ([`Teardown`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as KubeNode, ServiceAccount};
use kube::{Api, Client};

use crate::controlplane::{ApiServerOptions, ControlPlane, EnvError, Guarded, client_for};

/// Where the node keeps all its state (containerd's root and state, the kubelet's root, CNI
/// configuration, the control plane, the teardown script). Fixed: one node at a time, and a
/// later run must find an interrupted one.
pub const STATE_DIR: &str = "/var/lib/ppio-testenv-node";
/// Held (flock) by the node's watchdog from before the node starts until its teardown ends;
/// the watchdog removes it when it exits.
pub const LOCK_FILE: &str = "/run/ppio-testenv-node.lock";
/// The pods' addresses (the CNI bridge's host-local range); the bridge is 10.244.0.1.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The Services' addresses (kube-apiserver's `--service-cluster-ip-range`).
pub use crate::controlplane::NODE_SERVICE_CIDR as SERVICE_CIDR;
/// The CNI network's name.
pub const CNI_NETWORK: &str = "ppio-testenv-node";
/// The pod sandbox image, built by `tools/build.sh pause` into the tools folder as
/// `pause.oci.tar`.
pub const PAUSE_IMAGE: &str = "localhost/ppio-testenv/pause:1";

/// Kernel settings (under /proc/sys) the kubelet (`vm.overcommit_memory`, `vm.panic_on_oom`,
/// `kernel.panic`, `kernel.panic_on_oops`, `kernel.keys.*`), the bridge plugin
/// (`net.ipv4.ip_forward`, which also flips `net.ipv4.conf.all.accept_redirects`) and
/// kube-proxy (conntrack, `route_localnet`, bridge netfilter) may change. Recorded before the
/// node starts and restored at teardown in this order: forwarding first, since writing it
/// resets `accept_redirects`.
pub const KERNEL_SETTINGS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/default/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/ipv6/conf/default/forwarding",
    "net/ipv4/conf/all/accept_redirects",
    "net/ipv4/conf/default/accept_redirects",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Folders outside [`STATE_DIR`] that the kubelet, containerd, runc, CNI or iptables write
/// to whatever their configuration says. Removed at teardown when they did not exist before.
pub const OUTSIDE_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/var/lib/containerd",
    "/run/containerd",
    "/opt/containerd",
    "/etc/cni",
    "/opt/cni",
    "/run/netns",
    "/etc/kubernetes",
    "/run/xtables.lock",
    "/usr/libexec/kubernetes",
    "/run/mount",
];

/// Programs the node runs from the tools folder (`tools/build.sh`).
const TOOLS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];
/// Programs the node needs from the system (Debian packages, see `tools/node-packages.sh`).
const SYSTEM: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("iptables", "iptables"),
    ("ip6tables", "iptables"),
    ("iptables-save", "iptables"),
    ("ip6tables-save", "iptables"),
    ("conntrack", "conntrack"),
    ("ip", "iproute2"),
    ("flock", "util-linux"),
];
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];
const CNI_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// Failures bringing the node up; each names what is missing or what failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the test node needs root: it runs the kubelet, containerd and kube-proxy")]
    NotRoot,
    #[error("the test node needs {0}")]
    Missing(String),
    #[error("another test node is running on this machine (its watchdog holds {LOCK_FILE})")]
    Busy,
    #[error("{0}")]
    Env(#[from] EnvError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what} not ready within {secs}s; logs are in {logs}")]
    NotReady {
        what: String,
        secs: u64,
        logs: String,
    },
}

/// What [`Node::up`] needs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The upstream programs and the pause image (`tools/build.sh`; see [`crate::tools_dir`]).
    pub tools: PathBuf,
    /// Image archives (OCI image layouts in a tar) to import; pods use them with
    /// `imagePullPolicy: Never`.
    pub images: Vec<PathBuf>,
    /// Where the programs' logs go; kept after the teardown (with the pods' logs and the
    /// teardown's output).
    pub logs: PathBuf,
}

/// What the teardown did and what it left.
#[derive(Debug)]
pub struct Teardown {
    /// The teardown script's output.
    pub output: String,
    /// Everything left of the node: processes, mounts, interfaces, iptables chains, kernel
    /// settings, cgroups, files. Empty when the machine is as it was.
    pub leftovers: Vec<String>,
    /// How long the teardown took.
    pub took: Duration,
}

/// A running node. [`Node::down`] tears it down (so does dropping it).
pub struct Node {
    /// The node's name (the host name).
    pub name: String,
    /// The node's IP: the API server's advertised address and the `kubernetes` Service's
    /// endpoint.
    pub ip: Ipv4Addr,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The logs folder.
    pub logs: PathBuf,
    /// The tools folder (kubectl).
    pub tools: PathBuf,
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// How long [`Node::up`] took.
    pub took: Duration,
    // Stop order: kube-proxy, kubelet, scheduler, controller-manager, containerd (the
    // teardown script stops them first anyway).
    processes: Vec<Guarded>,
    control_plane: Option<ControlPlane>,
    baseline: Baseline,
    // (pid, executable) of every program started, checked after the teardown.
    started: Vec<(u32, PathBuf)>,
    watchdog: Option<Watchdog>,
}

impl Node {
    /// Brings the node up: checks root and programs, takes the lock, cleans up after an
    /// interrupted earlier node, records the machine's state, starts the control plane,
    /// containerd (and imports the pause image and `options.images`), the
    /// controller-manager, the scheduler, the kubelet and kube-proxy, and waits until the node
    /// is Ready, kube-proxy has synced and the `default` ServiceAccount exists. On failure
    /// everything is torn down again.
    pub async fn up(options: &NodeOptions) -> Result<Node, NodeError> {
        let start = Instant::now();
        check_prerequisites(options)?;
        fs::create_dir_all(&options.logs)?;
        let mut watchdog = Watchdog::start(&options.logs.join("teardown.log"))?;
        let script = Path::new(STATE_DIR).join("teardown.sh");
        if script.exists() {
            // An earlier node was interrupted before its teardown could run.
            let out = run_teardown(&script, &options.logs.join("teardown-stale.log"))?;
            if Path::new(STATE_DIR).exists() {
                watchdog.release();
                return Err(NodeError::Command {
                    what: format!("cleaning up an interrupted node ({})", script.display()),
                    detail: out,
                });
            }
        } else if Path::new(STATE_DIR).exists() {
            watchdog.release();
            return Err(NodeError::Missing(format!(
                "{STATE_DIR} to be absent (it exists without a teardown script; remove it)"
            )));
        }
        if let Some(cg) = kubepods_cgroups().first() {
            watchdog.release();
            return Err(NodeError::Missing(format!(
                "a machine without another kubelet ({} exists)",
                cg.display()
            )));
        }
        let baseline = Baseline::record()?;
        fs::create_dir_all(STATE_DIR)?;
        let layout = Layout::new(&options.logs);
        fs::write(&script, teardown_script(&layout, &baseline))?;
        match start_node(options, &layout).await {
            Ok((name, ip, control_plane, processes)) => Ok(Node {
                started: started_programs(&layout),
                name,
                ip,
                kubeconfig: layout.admin_kubeconfig(),
                logs: options.logs.clone(),
                tools: options.tools.clone(),
                containerd_socket: layout.containerd_socket.clone(),
                took: start.elapsed(),
                processes,
                control_plane: Some(control_plane),
                baseline,
                watchdog: Some(watchdog),
            }),
            Err(e) => {
                let _ = run_teardown(&script, &options.logs.join("teardown.log"));
                watchdog.release();
                Err(e)
            }
        }
    }

    /// A client for the admin kubeconfig.
    pub async fn client(&self) -> Result<Client, NodeError> {
        Ok(client_for(&self.kubeconfig).await?)
    }

    /// The real kubectl with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.tools.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// Makes containerd pull from the registry at `host` (`ip:port`) over HTTPS, trusting the
    /// CA certificate `ca` (PEM): a `hosts.toml` under the node's state folder, read at each
    /// pull, so it applies at once.
    pub fn trust_registry(&self, host: &str, ca: &Path) -> Result<(), NodeError> {
        let dir = Path::new(STATE_DIR).join("containerd/certs.d").join(host);
        fs::create_dir_all(&dir)?;
        let ca_copy = dir.join("ca.crt");
        fs::copy(ca, &ca_copy)?;
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
                ca_copy.display()
            ),
        )?;
        Ok(())
    }

    /// `ctr` on the node's containerd, in the kubelet's namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        ctr(&self.containerd_socket)
    }

    /// Imports an image archive (an OCI layout in a tar).
    pub fn import_image(&self, archive: &Path) -> Result<(), NodeError> {
        import_image(&self.containerd_socket, archive)
    }

    /// The host pid of a running container, from its id in a pod's status
    /// (`containerd://<id>` or the bare id).
    pub fn container_pid(&self, container_id: &str) -> Option<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let file = Path::new(STATE_DIR)
            .join("containerd/state/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("init.pid");
        fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The logs of a pod's container (all its runs), as the kubelet stores them, without the
    /// CRI prefix (time, stream, tag).
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        let mut out = String::new();
        let prefix = format!("{namespace}_{pod}_");
        let Ok(entries) = fs::read_dir(Path::new(STATE_DIR).join("pod-logs")) else {
            return out;
        };
        for dir in entries.flatten() {
            if !dir.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let Ok(files) = fs::read_dir(dir.path().join(container)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
            files.sort();
            for f in files {
                for line in fs::read_to_string(&f).unwrap_or_default().lines() {
                    // <time> <stream> <P|F> <text>
                    let text = line.splitn(4, ' ').nth(3).unwrap_or(line);
                    out.push_str(text);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The resident memory (bytes) of everything the node runs: the control plane, the
    /// node's programs, the containerd shims and every process of a pod.
    pub fn resident_memory(&self) -> u64 {
        let mut pids: BTreeSet<u32> = self.started.iter().map(|(p, _)| *p).collect();
        pids.extend(node_processes().into_iter().map(|(p, _)| p));
        pids.iter()
            .filter_map(|p| {
                let status = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let kb: u64 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some(kb * 1024)
            })
            .sum()
    }

    /// The logs of every container of every pod (including deleted ones) in `namespace`, as
    /// (pod, container, log), from the kubelet's files: readable when the API server is not.
    pub fn namespace_logs(&self, namespace: &str) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        let prefix = format!("{namespace}_");
        let Ok(entries) = fs::read_dir(Path::new(STATE_DIR).join("pod-logs")) else {
            return out;
        };
        let mut dirs: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        dirs.sort();
        for dir in dirs {
            // <namespace>_<pod>_<uid>
            let pod = dir[prefix.len()..]
                .rsplit_once('_')
                .map_or(dir.as_str(), |(p, _)| p)
                .to_string();
            let Ok(containers) = fs::read_dir(Path::new(STATE_DIR).join("pod-logs").join(&dir))
            else {
                continue;
            };
            for c in containers.flatten() {
                let container = c.file_name().to_string_lossy().into_owned();
                let log = self.container_log(namespace, &pod, &container);
                out.push((pod.clone(), container, log));
            }
        }
        out
    }

    /// Fails when a program of the node died.
    pub fn check_alive(&mut self) -> Result<(), NodeError> {
        for p in &mut self.processes {
            p.check_alive()?;
        }
        if let Some(cp) = self.control_plane.as_mut() {
            cp.check_alive()?;
        }
        Ok(())
    }

    /// Tears the node down (the teardown script), then checks that nothing of it is left on
    /// the machine, and releases the lock.
    pub fn down(mut self) -> Teardown {
        self.teardown()
    }

    fn teardown(&mut self) -> Teardown {
        let start = Instant::now();
        let script = Path::new(STATE_DIR).join("teardown.sh");
        let output = if script.exists() {
            run_teardown(&script, &self.logs.join("teardown.log"))
                .unwrap_or_else(|e| format!("the teardown script failed to run: {e}"))
        } else {
            String::new()
        };
        // The script stopped them; this reaps their guards.
        for mut p in self.processes.drain(..) {
            p.stop();
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop();
        }
        let mut leftovers = self.baseline.leftovers();
        for (pid, exe) in &self.started {
            if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| &e == exe) {
                leftovers.push(format!("process {pid} {}", exe.display()));
            }
        }
        if let Some(mut w) = self.watchdog.take() {
            w.release();
        }
        Teardown {
            output,
            leftovers,
            took: start.elapsed(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            let t = self.teardown();
            if !t.leftovers.is_empty() {
                eprintln!("test node: left after teardown: {:?}", t.leftovers);
            }
        }
    }
}

/// Paths of one node.
struct Layout {
    state: PathBuf,
    logs: PathBuf,
    control_plane: PathBuf,
    containerd_socket: PathBuf,
}

impl Layout {
    fn new(logs: &Path) -> Layout {
        let state = PathBuf::from(STATE_DIR);
        Layout {
            control_plane: state.join("controlplane"),
            containerd_socket: state.join("containerd/containerd.sock"),
            state,
            logs: logs.to_path_buf(),
        }
    }

    fn admin_kubeconfig(&self) -> PathBuf {
        self.control_plane.join("kubeconfig")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Where [`Guarded`] writes the pid of `name` (next to its log).
    fn pidfile(&self, name: &str) -> PathBuf {
        self.log(name).with_extension("pid")
    }
}

/// (pid, executable) of every program of the node, from their pid files.
fn started_programs(layout: &Layout) -> Vec<(u32, PathBuf)> {
    let mut files: Vec<PathBuf> = [
        "containerd",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
    ]
    .iter()
    .map(|n| layout.pidfile(n))
    .collect();
    files.push(layout.control_plane.join("kube-apiserver.pid"));
    files.push(layout.control_plane.join("etcd.pid"));
    files
        .iter()
        .filter_map(|f| {
            let pid: u32 = fs::read_to_string(f).ok()?.trim().parse().ok()?;
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            Some((pid, exe))
        })
        .collect()
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `program` on PATH (or the sbin folders, which a non-login PATH may lack).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn cni_bin_dir() -> Option<PathBuf> {
    CNI_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| CNI_PLUGINS.iter().all(|p| d.join(p).is_file()))
}

fn check_prerequisites(options: &NodeOptions) -> Result<(), NodeError> {
    if !is_root() {
        return Err(NodeError::NotRoot);
    }
    let mut missing = Vec::new();
    for t in TOOLS {
        if !options.tools.join(t).is_file() {
            missing.push(format!("{t} (tools/build.sh {t})"));
        }
    }
    if !options.tools.join("pause.oci.tar").is_file() {
        missing.push("the pause image (tools/build.sh pause)".to_string());
    }
    for (p, package) in SYSTEM {
        if which(p).is_none() {
            missing.push(format!("{p} (apt-get install {package})"));
        }
    }
    if cni_bin_dir().is_none() {
        missing.push(format!(
            "the CNI plugins {CNI_PLUGINS:?} in {CNI_DIRS:?} (apt-get install containernetworking-plugins)"
        ));
    }
    for image in &options.images {
        if !image.is_file() {
            missing.push(format!("the image archive {}", image.display()));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Missing(format!(
            "{} (tools/node-packages.sh installs the system packages)",
            missing.join(", ")
        )))
    }
}

/// The machine's IPv4 address the node uses: `PPIO_NODE_IP`, else the source address of the
/// default route, else the first global address.
fn node_ip() -> Result<Ipv4Addr, NodeError> {
    if let Ok(ip) = std::env::var("PPIO_NODE_IP") {
        return ip.parse().map_err(|_| NodeError::Command {
            what: "PPIO_NODE_IP".into(),
            detail: format!("'{ip}' is not an IPv4 address"),
        });
    }
    let route = command_output(Command::new("ip").args(["-4", "route", "get", "192.0.2.123"]))
        .unwrap_or_default();
    let mut words = route.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src"
            && let Some(ip) = words.next().and_then(|s| s.parse::<Ipv4Addr>().ok())
            && !ip.is_loopback()
        {
            return Ok(ip);
        }
    }
    let addrs =
        command_output(Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]))?;
    addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| NodeError::Missing("an IPv4 address (set PPIO_NODE_IP)".into()))
}

fn node_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 63
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "ppio-testenv-node".into())
}

/// Runs a command; its stdout, or an error with its stderr.
fn command_output(cmd: &mut Command) -> Result<String, NodeError> {
    let what = format!("{cmd:?}");
    let out: Output = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Command {
            what,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn ctr(socket: &Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"]);
    c
}

fn import_image(socket: &Path, archive: &Path) -> Result<(), NodeError> {
    command_output(ctr(socket).args(["images", "import"]).arg(archive)).map(drop)
}

/// Starts everything after the control plane's state folder exists; returns the node's
/// name, IP, control plane and processes.
async fn start_node(
    options: &NodeOptions,
    layout: &Layout,
) -> Result<(String, Ipv4Addr, ControlPlane, Vec<Guarded>), NodeError> {
    let name = node_name();
    let ip = node_ip()?;
    let state = &layout.state;
    let cni_bin = cni_bin_dir().ok_or_else(|| NodeError::Missing("the CNI plugins".into()))?;

    let control_plane = ControlPlane::start_with(
        &options.tools,
        Some(&layout.control_plane),
        None,
        &ApiServerOptions { node_ip: Some(ip) },
    )
    .await?;
    let pki = layout.control_plane.join("pki");
    let configs = state.join("config");
    fs::create_dir_all(&configs)?;
    let kubeconfig = |file: &str, user: &str, groups: &[&str]| -> Result<PathBuf, EnvError> {
        let path = configs.join(file);
        control_plane.user_kubeconfig(&path, user, groups)?;
        Ok(path)
    };
    let kubelet_kc = kubeconfig(
        "kubelet.kubeconfig",
        &format!("system:node:{name}"),
        &["system:nodes"],
    )?;
    let kcm_kc = kubeconfig(
        "controller-manager.kubeconfig",
        "system:kube-controller-manager",
        &[],
    )?;
    let scheduler_kc = kubeconfig("scheduler.kubeconfig", "system:kube-scheduler", &[])?;
    let proxy_kc = kubeconfig("kube-proxy.kubeconfig", "system:kube-proxy", &[])?;

    // CNI: a bridge with a host-local range, written before containerd and the kubelet start.
    let cni_conf = state.join("cni/net.d");
    fs::create_dir_all(&cni_conf)?;
    fs::write(
        cni_conf.join("10-ppio-testenv.conflist"),
        format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "{CNI_NETWORK}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{}"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
            state.join("cni/ipam").display()
        ),
    )?;

    // containerd: everything under the state folder; docs/development.md ("The real node")
    // says why each setting is needed.
    let containerd_dir = state.join("containerd");
    fs::create_dir_all(&containerd_dir)?;
    let containerd_config = containerd_dir.join("config.toml");
    fs::write(
        &containerd_config,
        format!(
            r#"version = 2
root = "{root}"
state = "{cstate}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc could not give the sandbox its oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"

  # Registries: one folder per host with its hosts.toml (Node::trust_registry).
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs_d}"
"#,
            root = containerd_dir.join("root").display(),
            cstate = containerd_dir.join("state").display(),
            socket = layout.containerd_socket.display(),
            cni_bin = cni_bin.display(),
            cni_conf = cni_conf.display(),
            runc_root = state.join("runc").display(),
            certs_d = containerd_dir.join("certs.d").display(),
        ),
    )?;
    let mut processes = Vec::new();
    let containerd = Guarded::spawn(
        "containerd",
        &which("containerd").ok_or_else(|| NodeError::Missing("containerd".into()))?,
        &["--config".into(), containerd_config.display().to_string()],
        &layout.log("containerd"),
        &[],
    )?;
    processes.push(containerd);
    wait_until(
        "containerd",
        &layout.logs,
        Duration::from_secs(30),
        &mut processes,
        || {
            ctr(&layout.containerd_socket)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        },
    )
    .await?;
    import_image(
        &layout.containerd_socket,
        &options.tools.join("pause.oci.tar"),
    )?;
    for image in &options.images {
        import_image(&layout.containerd_socket, image)?;
    }

    let tools = &options.tools;
    processes.push(Guarded::spawn(
        "kube-controller-manager",
        &tools.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", kcm_kc.display()),
            format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ),
            format!("--root-ca-file={}", pki.join("ca.crt").display()),
            "--use-service-account-credentials=true".into(),
            format!(
                "--flex-volume-plugin-dir={}",
                state.join("flex-volume-plugins").display()
            ),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            // No pod CIDRs to allocate, no CSRs to sign (the node's certificates are made).
            "--controllers=*,-node-ipam-controller,-certificatesigningrequest-signing-controller,-certificatesigningrequest-approving-controller".into(),
            "--v=0".into(),
        ],
        &layout.log("kube-controller-manager"),
        &[],
    )?);
    processes.push(Guarded::spawn(
        "kube-scheduler",
        &tools.join("kube-scheduler"),
        &[
            format!("--kubeconfig={}", scheduler_kc.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--v=0".into(),
        ],
        &layout.log("kube-scheduler"),
        &[],
    )?);

    let kubelet_dir = state.join("kubelet");
    fs::create_dir_all(&kubelet_dir)?;
    let kubelet_config = configs.join("kubelet.yaml");
    fs::write(
        &kubelet_config,
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {pod_logs}
volumePluginDir: {plugins}
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failSwapOn: false
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
serializeImagePulls: false
maxPods: 30
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
"#,
            socket = layout.containerd_socket.display(),
            pod_logs = state.join("pod-logs").display(),
            plugins = kubelet_dir.join("volume-plugins").display(),
        ),
    )?;
    processes.push(Guarded::spawn(
        "kubelet",
        &tools.join("kubelet"),
        &[
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", kubelet_kc.display()),
            format!("--root-dir={}", kubelet_dir.display()),
            format!("--cert-dir={}", kubelet_dir.join("pki").display()),
            format!("--node-ip={ip}"),
            format!("--hostname-override={name}"),
            "--v=0".into(),
        ],
        &layout.log("kubelet"),
        &[],
    )?);

    let proxy_config = configs.join("kube-proxy.yaml");
    fs::write(
        &proxy_config,
        format!(
            r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {name}
mode: iptables
clusterCIDR: {POD_CIDR}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
            kubeconfig = proxy_kc.display(),
        ),
    )?;
    processes.push(Guarded::spawn(
        "kube-proxy",
        &tools.join("kube-proxy"),
        &[
            format!("--config={}", proxy_config.display()),
            "--v=0".into(),
        ],
        &layout.log("kube-proxy"),
        &[],
    )?);
    // Stop order: kube-proxy, kubelet, scheduler, controller-manager, containerd.
    processes.reverse();

    let client = control_plane.client().await?;
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let (nodes, node) = (&nodes, name.as_str());
    let ready = move || async move {
        nodes.get_opt(node).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    wait_until_async(
        "the node (Ready)",
        &layout.logs,
        Duration::from_secs(90),
        &mut processes,
        ready,
    )
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let accounts = &accounts;
    let sa = move || async move { matches!(accounts.get_opt("default").await, Ok(Some(_))) };
    wait_until_async(
        "kube-controller-manager (the default ServiceAccount)",
        &layout.logs,
        Duration::from_secs(60),
        &mut processes,
        sa,
    )
    .await?;
    let proxy = || async {
        crate::cluster::http_get((Ipv4Addr::LOCALHOST, 10256).into(), "/healthz")
            .await
            .is_some_and(|(code, _)| code == 200)
    };
    wait_until_async(
        "kube-proxy (/healthz)",
        &layout.logs,
        Duration::from_secs(60),
        &mut processes,
        proxy,
    )
    .await?;
    Ok((name, ip, control_plane, processes))
}

async fn wait_until(
    what: &str,
    logs: &Path,
    limit: Duration,
    processes: &mut [Guarded],
    check: impl Fn() -> bool,
) -> Result<(), NodeError> {
    wait_until_async(what, logs, limit, processes, || std::future::ready(check())).await
}

async fn wait_until_async<F, Fut>(
    what: &str,
    logs: &Path,
    limit: Duration,
    processes: &mut [Guarded],
    check: F,
) -> Result<(), NodeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        for p in processes.iter_mut() {
            p.check_alive()?;
        }
        if check().await {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(NodeError::NotReady {
                what: what.into(),
                secs: limit.as_secs(),
                logs: logs.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The `kubepods` cgroups (of every hierarchy) the kubelet made.
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join("kubepods");
            if p.is_dir() {
                out.push(p);
            }
        }
    }
    let unified = Path::new("/sys/fs/cgroup/kubepods");
    if unified.is_dir() {
        out.push(unified.to_path_buf());
    }
    out
}

/// The watchdog: a shell in a process group of its own that takes the node's lock, then
/// waits for this process to say "done" on its stdin. When stdin closes without it (this
/// process died), it runs the teardown script. It holds the lock until it exits.
struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG_SCRIPT: &str = r#"trap '' INT TERM HUP PIPE
exec 9>>"$1" || exit 1
if ! flock -n 9; then echo busy; exit 75; fi
# The lock counts only if it is still the file at that path (an exiting holder removes it).
if [ "$(stat -L -c %i /proc/self/fd/9)" != "$(stat -c %i "$1" 2>/dev/null)" ]; then echo busy; exit 75; fi
echo locked
exec >/dev/null 2>&1
read -r line
if [ "$line" != done ] && [ -f "$2" ]; then
  sh "$2" >>"$3" 2>&1
fi
rm -f "$1"
"#;

impl Watchdog {
    fn start(log: &Path) -> Result<Watchdog, NodeError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("sh")
            .arg(LOCK_FILE)
            .arg(Path::new(STATE_DIR).join("teardown.sh"))
            .arg(log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the watchdog has no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let stdin = child.stdin.take();
        match line.trim() {
            "locked" => Ok(Watchdog { child, stdin }),
            "busy" => {
                let _ = child.wait();
                Err(NodeError::Busy)
            }
            other => {
                let _ = child.wait();
                Err(NodeError::Command {
                    what: "taking the node lock".into(),
                    detail: format!("the watchdog said '{other}'"),
                })
            }
        }
    }

    /// The teardown ran (or nothing was started): ends the watchdog, which releases the lock.
    fn release(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Without "done" the watchdog tears down: dropped without release() means a failure.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Runs the teardown script, appending its output to `log`; returns the output.
fn run_teardown(script: &Path, log: &Path) -> Result<String, NodeError> {
    let out = Command::new("sh")
        .arg(script)
        .stdin(Stdio::null())
        .output()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = f.write_all(text.as_bytes());
    }
    Ok(text)
}

/// Single-quotes a string for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The teardown script of one node: the recorded state and paths, then [`TEARDOWN_STEPS`].
fn teardown_script(layout: &Layout, baseline: &Baseline) -> String {
    let q = |p: &Path| sh_quote(&p.display().to_string());
    let mut s = String::from(
        "#!/bin/sh\n\
         # Tears down the test node of ppio-testenv (crates/testenv/src/node.rs) and restores\n\
         # what it changed on this machine. Written before the node started; safe to run twice.\n\
         set -u\n",
    );
    let _ = writeln!(s, "STATE={}", q(&layout.state));
    let _ = writeln!(s, "LOGS={}", q(&layout.logs));
    let _ = writeln!(s, "SOCKET={}", q(&layout.containerd_socket));
    let _ = writeln!(s, "CNI_NETWORK={}", sh_quote(CNI_NETWORK));
    let _ = writeln!(s, "POD_CIDR={}", sh_quote(POD_CIDR));
    let _ = writeln!(s, "SERVICE_CIDR={}", sh_quote(SERVICE_CIDR));
    for (var, file) in [
        ("PROXY_PID", layout.pidfile("kube-proxy")),
        ("KUBELET_PID", layout.pidfile("kubelet")),
        ("SCHEDULER_PID", layout.pidfile("kube-scheduler")),
        ("KCM_PID", layout.pidfile("kube-controller-manager")),
        ("CONTAINERD_PID", layout.pidfile("containerd")),
        (
            "APISERVER_PID",
            layout.control_plane.join("kube-apiserver.pid"),
        ),
        ("ETCD_PID", layout.control_plane.join("etcd.pid")),
    ] {
        let _ = writeln!(s, "{var}={}", q(&file));
    }
    s.push_str(
        "# The kernel settings as they were before the node started.\nrestore_settings() {\n  :\n",
    );
    for (key, value) in &baseline.settings {
        let _ = writeln!(s, "  restore {} {}", sh_quote(key), sh_quote(value));
    }
    s.push_str("}\n# Folders the programs create whatever their configuration, absent before.\nremove_new_paths() {\n  :\n");
    for p in &baseline.absent_paths {
        let _ = writeln!(s, "  rm -rf {}", sh_quote(p));
    }
    s.push_str("}\n");
    s.push_str(TEARDOWN_STEPS);
    s
}

/// The steps of the teardown script, after its variables (see [`teardown_script`]).
const TEARDOWN_STEPS: &str = r#"
echo "teardown $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# The pid in file $1, only while it is still program $2 (/proc/PID/exe), never another
# process that got the pid later.
pid_of() {
  [ -f "$1" ] || return 1
  p=$(cat "$1" 2>/dev/null) || return 1
  e=$(readlink "/proc/$p/exe" 2>/dev/null) || return 1
  case "$e" in */"$2") echo "$p" ;; *) return 1 ;; esac
}
gone() {
  for p in "$@"; do readlink "/proc/$p/exe" >/dev/null 2>&1 && return 1; done
  return 0
}
# SIGTERM, up to 5s, then SIGKILL and up to 5s.
stop() {
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  i=0; while ! gone "$@" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$@" 2>/dev/null
  i=0; while ! gone "$@" && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
}
stop_program() {
  if p=$(pid_of "$1" "$2"); then echo "stopping $2 ($p)"; stop "$p"; fi
  return 0
}
kubepods() {
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do [ -d "$d" ] && echo "$d"; done
  return 0
}
# Every process of a pod: the kubepods cgroups are the kubelet's.
kill_pods() {
  for c in $(kubepods); do
    for f in $(find "$c" -name cgroup.procs 2>/dev/null); do
      for p in $(cat "$f" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    done
  done
}
# The containerd shims of this node's containerd: started with "-address $SOCKET".
shim_pids() {
  for d in /proc/[0-9]*; do
    case "$(readlink "$d/exe" 2>/dev/null)" in */containerd-shim-runc-v2) ;; *) continue ;; esac
    tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF -- "$SOCKET" && echo "${d#/proc/}"
  done
  return 0
}
mounts_under_state() {
  awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
restore() {
  [ -f "/proc/sys/$1" ] || return 0
  [ "$(cat "/proc/sys/$1")" = "$2" ] && return 0
  echo "$2" >"/proc/sys/$1" && echo "restored $1 = $2"
  return 0
}
# iptables or ip6tables: every KUBE-* and CNI-* chain, and the rules that jump to them.
clean_chains() {
  command -v "$1" >/dev/null 2>&1 || return 0
  for t in filter nat mangle raw security; do
    rules=$("$1" -w -t "$t" -S 2>/dev/null) || continue
    echo "$rules" | grep -E '^-A ' | grep -vE '^-A (KUBE-|CNI-)' | grep -E -- '-[jg] (KUBE-|CNI-)' |
      while IFS= read -r r; do eval "\"\$1\" -w -t \"\$t\" -D ${r#-A }"; done
    chains=$(echo "$rules" | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CNI-/) { print $2 }')
    for c in $chains; do "$1" -w -t "$t" -F "$c"; done
    for c in $chains; do "$1" -w -t "$t" -X "$c" && echo "removed $1 $t $c"; done
  done
  return 0
}

# 1. The node's programs (the kubelet first: it would restart pods), every process of a pod,
#    the containerd shims (by their pid files), containerd, the control plane.
stop_program "$PROXY_PID" kube-proxy
stop_program "$KUBELET_PID" kubelet
stop_program "$SCHEDULER_PID" kube-scheduler
stop_program "$KCM_PID" kube-controller-manager
kill_pods
shims=$(shim_pids)
if [ -n "$shims" ]; then echo "stopping containerd shims:" $shims; stop $shims; fi
kill_pods
stop_program "$CONTAINERD_PID" containerd
stop_program "$APISERVER_PID" kube-apiserver
stop_program "$ETCD_PID" etcd

# 2. Mounts under the state folder (container root filesystems, volumes, network
#    namespaces, the kubelet's bind mount of its root), deepest first.
for round in 1 2 3 4; do
  m=$(mounts_under_state)
  [ -n "$m" ] || break
  for x in $m; do umount "$x" 2>/dev/null || umount -l "$x" 2>/dev/null; done
done

# 3. The kubelet's cgroups (once their processes are gone).
for round in 1 2 3 4 5 6 7 8 9 10; do
  left=$(for c in $(kubepods); do find "$c" -depth -type d; done)
  [ -n "$left" ] || break
  kill_pods
  for d in $left; do rmdir "$d" 2>/dev/null; done
  sleep 0.2
done

# 4. The CNI bridge and its veths.
for l in $(ip -o link show master cni0 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
  ip link delete "$l" 2>/dev/null && echo "removed interface $l"
done
ip link delete cni0 2>/dev/null && echo "removed interface cni0"

# 5. iptables chains.
clean_chains iptables
clean_chains ip6tables

# 6. Kernel settings, and the connection tracking entries of pods and Services.
restore_settings
if command -v conntrack >/dev/null 2>&1; then
  for net in "$POD_CIDR" "$SERVICE_CIDR"; do
    conntrack -D -s "$net" >/dev/null 2>&1
    conntrack -D -d "$net" >/dev/null 2>&1
  done
fi

# 7. Files outside the state folder: the shims' sockets (containerd 1.6 puts them in
#    /run/containerd/s whatever its state folder), then the folders that were not there.
for a in "$STATE"/containerd/state/io.containerd.runtime.v2.task/*/*/address; do
  [ -f "$a" ] || continue
  sock=$(sed 's|^unix://||' "$a")
  case "$sock" in /run/containerd/s/*) rm -f "$sock" ;; esac
done
remove_new_paths
[ -d /var/log/containers ] && find /var/log/containers -lname "$STATE/*" -delete
[ -d /var/lib/cni ] && find /var/lib/cni -name "$CNI_NETWORK*" -delete

# 8. The logs, then the state folder (only once nothing is mounted in it).
mkdir -p "$LOGS"
cp "$STATE"/controlplane/*.log "$LOGS"/ 2>/dev/null
if [ -d "$STATE/pod-logs" ]; then rm -rf "$LOGS/pod-logs"; cp -r "$STATE/pod-logs" "$LOGS/pod-logs"; fi
if [ -n "$(mounts_under_state)" ]; then
  echo "teardown: mounts are left under $STATE; not removing it:" >&2
  mounts_under_state >&2
  exit 1
fi
rm -rf "$STATE"
echo "teardown done"
"#;

/// The machine's state before the node started, and the check that it is so again.
#[derive(Debug, Clone)]
struct Baseline {
    /// (/proc/sys path, value) of [`KERNEL_SETTINGS`] that exist.
    settings: Vec<(String, String)>,
    /// [`OUTSIDE_PATHS`] that did not exist.
    absent_paths: Vec<String>,
    /// Network interfaces.
    links: BTreeSet<String>,
    /// Mount points.
    mounts: BTreeSet<String>,
    /// `KUBE-*` and `CNI-*` chains already there (normally none).
    chains: BTreeSet<String>,
}

impl Baseline {
    fn record() -> Result<Baseline, NodeError> {
        let settings = KERNEL_SETTINGS
            .iter()
            .filter_map(|k| {
                fs::read_to_string(Path::new("/proc/sys").join(k))
                    .ok()
                    .map(|v| (k.to_string(), v.trim().to_string()))
            })
            .collect();
        let absent_paths = OUTSIDE_PATHS
            .iter()
            .filter(|p| fs::symlink_metadata(p).is_err())
            .map(|p| p.to_string())
            .collect();
        Ok(Baseline {
            settings,
            absent_paths,
            links: links()?,
            mounts: mount_points(),
            chains: node_chains(),
        })
    }

    /// Everything the node left on the machine, one line each.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (pid, exe) in node_processes() {
            out.push(format!("process {pid} {exe}"));
        }
        for m in mount_points().difference(&self.mounts) {
            out.push(format!("mount {m}"));
        }
        match links() {
            Ok(now) => {
                for l in now.difference(&self.links) {
                    out.push(format!("interface {l}"));
                }
            }
            Err(e) => out.push(format!("interfaces unknown: {e}")),
        }
        for c in node_chains().difference(&self.chains) {
            out.push(format!("chain {c}"));
        }
        for (key, before) in &self.settings {
            let now = fs::read_to_string(Path::new("/proc/sys").join(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
            if &now != before {
                out.push(format!(
                    "kernel setting {} = {now} (was {before})",
                    key.replace('/', ".")
                ));
            }
        }
        for c in kubepods_cgroups() {
            out.push(format!("cgroup {}", c.display()));
        }
        for p in &self.absent_paths {
            if fs::symlink_metadata(p).is_ok() {
                out.push(format!("file {p}"));
            }
        }
        if Path::new(STATE_DIR).exists() {
            out.push(format!("file {STATE_DIR}"));
        }
        out
    }
}

fn links() -> Result<BTreeSet<String>, NodeError> {
    let out = command_output(Command::new("ip").args(["-o", "link", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

fn mount_points() -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

/// `<iptables|ip6tables> <table> <chain>` of every KUBE-* and CNI-* chain.
fn node_chains() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for program in ["iptables", "ip6tables"] {
        for table in ["filter", "nat", "mangle", "raw", "security"] {
            let Ok(rules) = command_output(Command::new(program).args(["-w", "-t", table, "-S"]))
            else {
                continue;
            };
            for l in rules.lines() {
                if let Some(chain) = l.strip_prefix("-N ")
                    && (chain.starts_with("KUBE-") || chain.starts_with("CNI-"))
                {
                    out.insert(format!("{program} {table} {chain}"));
                }
            }
        }
    }
    out
}

/// Running processes of the node, (pid, executable): the Kubernetes programs (the machine has
/// no other kubelet: [`Node::up`] refuses to start otherwise), containerd, its shims and runc
/// when their command line names [`STATE_DIR`] (not a containerd of the machine's own, e.g.
/// Docker's), and every process in a `kubepods` cgroup.
fn node_processes() -> Vec<(u32, String)> {
    const KUBE: &[&str] = &[
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "kube-controller-manager",
    ];
    const RUNTIME: &[&str] = &["containerd", "containerd-shim-runc-v2", "runc"];
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = fs::read_link(e.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let program = exe.rsplit('/').next().unwrap_or_default().to_string();
        let in_pod = fs::read_to_string(e.path().join("cgroup"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(":/kubepods"));
        let ours = || {
            fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(STATE_DIR))
                .unwrap_or(false)
        };
        if KUBE.contains(&program.as_str())
            || (RUNTIME.contains(&program.as_str()) && ours())
            || in_pod
        {
            out.push((pid, exe));
        }
    }
    out
}
