//! The operator's release, image and Helm chart on a real node, the way users run them:
//! kubelet, containerd and runc, kube-proxy, the CNI bridge (`ppio_testenv::node`), a real
//! registry on the node (`ppio_testenv::registry`, TLS from a throwaway CA containerd trusts),
//! `tools/release.sh` publishing to it, containerd pulling the image, and the chart installed
//! from the registry with the real helm.
//!
//! A first test reads the release's image layout (`tools/release.sh VERSION --no-push`): both
//! platforms, only the binary, the user and the licence texts, which with the SBOMs cover
//! every crate linked into the binary; the arm64 binary runs under qemu-user.
//!
//! One node for this binary and one test that walks through the steps in order (each needs
//! the one before): the release is published and checked (both platforms in the registry, the
//! SBOMs attached, the signatures of image and chart, refused for a stranger's key and for
//! altered content, the same digest as the earlier build, with the tools at another path);
//! the image's binary starts in a container (and the image has no shell),
//! the simulator runs from the same image as a pod behind a Service, `helm install` makes an
//! Available Deployment whose pod runs as 65532 with a read-only root filesystem, no
//! capabilities, no privilege escalation and seccomp, passes its probes, reads the CRD with
//! its service account and the chart's RBAC, observes a PpioInstance and writes its status
//! and Events, and answers /metrics through the chart's Service; `helm upgrade` to a new image
//! tag with one replica (Recreate) never runs two operator processes at once; with two
//! replicas and leader election exactly one pod writes and, its leader deleted, another
//! takes over; the leader's container killed (SIGKILL from the host), the pod stays, the
//! kubelet restarts the container and a replica writes again, never two at once; `helm upgrade` to another tag with two replicas (rolling) never has two
//! leaders or two writers (each pod's /metrics sampled every ~200 ms throughout); `helm
//! uninstall` keeps the CRD and the PpioInstances; a second release with `watchNamespace` has
//! Roles only, works in its namespace (default key, a Secret there, Events, its Lease) and
//! leaves other namespaces alone. Then the node is torn down and the test checks that nothing
//! of it is left on the machine.
//!
//! It needs root, the node's programs (`tools/build.sh`, `tools/node-packages.sh`) and the
//! release (`tools/release.sh VERSION --no-push`); `tools/test.sh` builds them. Without root it fails, saying so:
//! `tools/test.sh` runs this tier only as root, or leaves it out when asked (`--no-node`).

#[path = "../support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use ppio_operator::crd::PpioInstance;
use ppio_testenv::node::{Node, NodeError, NodeOptions};
use ppio_testenv::registry::Registry;
use serde_json::{Value, json};
use support::*;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The key the simulator accepts and the chart gives the operator.
const KEY: &str = "sk-node-test";
const RELEASE: &str = "ppio-operator";
const RELEASE_NS: &str = "ppio-system";
const SIM_NS: &str = "ppio-sim";
const SIM_PORT: u16 = 8090;
const WATCHED_NS: &str = "ml";
/// The chart's leader election lease, shortened for the test (the chart allows 5s..120s).
const LEASE_SECONDS: u64 = 10;

/// The release under test, as `tools/release.sh VERSION --no-push` built it before the tests
/// (`tools/test.sh` does): `$PPIO_RELEASE_DIR`, else `release/VERSION` in the target dir this
/// test was built in. Its `image/` is the OCI image layout of both platforms.
fn release_dir() -> PathBuf {
    std::env::var_os("PPIO_RELEASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(tmp).join("release").join(VERSION)
        })
}

/// What the release step published to the node's registry; every later step installs and
/// runs it from there.
struct Published {
    /// The registry's `ip:port` and the path the release was given (`REGISTRY`).
    registry: String,
    /// The registry's CA certificate (helm `--ca-file`, `SSL_CERT_FILE`).
    ca: PathBuf,
}

static PUBLISHED: OnceLock<Published> = OnceLock::new();
/// The image index digest `tools/release.sh` pushed.
static INDEX_DIGEST: OnceLock<String> = OnceLock::new();

fn published() -> &'static Published {
    PUBLISHED
        .get()
        .expect("the release step published the image and the chart")
}

/// The released image, as pods and the chart name it.
fn image() -> String {
    format!("{}/ppio-operator:{VERSION}", published().registry)
}

/// The released chart, as `helm install` and `helm upgrade` take it.
fn chart_args() -> Vec<String> {
    let p = published();
    vec![
        format!("oci://{}/charts/ppio-operator", p.registry),
        "--version".into(),
        VERSION.into(),
        "--ca-file".into(),
        p.ca.display().to_string(),
    ]
}

/// A pinned program of `tools/build.sh` (crane, cosign), trusting the registry's CA.
fn tool(name: &str) -> Command {
    let mut c = Command::new(tools_dir().join(name));
    if let Some(p) = PUBLISHED.get() {
        c.env("SSL_CERT_FILE", &p.ca);
    }
    c
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command with `stdin`; its output.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what} runs: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("finishes")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Scene {
    node: Node,
    client: Client,
    /// The PpioInstances of the watched namespace.
    api: Api<PpioInstance>,
    /// The simulator's Service (ClusterIP:port).
    sim: Option<SocketAddr>,
    /// The registry the release step published to (stopped when the scene ends).
    registry: Option<Registry>,
}

impl Scene {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = self.node.kubectl();
        c.args(args);
        run(c, stdin)
    }

    fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        ok(self.kubectl(args, stdin), &format!("kubectl {args:?}"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a, None)).expect("kubectl prints JSON")
    }

    /// The real helm, with its config and cache in a folder of the test run.
    fn helm_command(&self, args: &[&str]) -> Command {
        static HOME: OnceLock<PathBuf> = OnceLock::new();
        let home = HOME.get_or_init(|| {
            let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-helm-home");
            std::fs::create_dir_all(&d).expect("helm home");
            d
        });
        let mut c = Command::new(tools_dir().join("helm"));
        c.args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", &self.node.kubeconfig);
        c
    }

    fn helm(&self, args: &[&str]) -> String {
        ok(
            run(self.helm_command(args), None),
            &format!("helm {args:?}"),
        )
    }

    /// Creates a namespace and waits for its `default` ServiceAccount (pods need it).
    async fn namespace(&self, name: &str) {
        let out = self.kubectl(&["create", "namespace", name], None);
        assert!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("exists"),
            "namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eventually(&format!("the default ServiceAccount of {name}"), 60, || {
            self.kubectl(&["get", "serviceaccount", "default", "-n", name], None)
                .status
                .success()
                .then_some(())
        })
        .await;
    }

    /// A pod's JSON.
    fn pod(&self, ns: &str, name: &str) -> Value {
        self.json(&["get", "pod", name, "-n", ns])
    }

    /// The release's Deployment.
    fn deployment(&self) -> Value {
        self.json(&["get", "deployment", RELEASE, "-n", RELEASE_NS])
    }

    /// Every pod of the release, terminating ones included.
    fn release_pods(&self) -> Vec<Value> {
        let list = self.json(&[
            "get",
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
        ]);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// The release's operator pods that are not terminating, by name.
    fn operator_pods(&self) -> Vec<Value> {
        let mut pods: Vec<Value> = self
            .release_pods()
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        pods.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string());
        pods
    }

    /// The operator's container log in a pod (from the kubelet's log files).
    fn operator_log(&self, pod: &str) -> String {
        self.node.container_log(RELEASE_NS, pod, "operator")
    }
}

/// Polls `check` every 250ms until it gives a value, or panics after `secs` (hang
/// protection, see [`Deadline`]).
async fn eventually<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Deadline::new(what, Duration::from_secs(secs));
    loop {
        if let Some(v) = check() {
            return v;
        }
        deadline.check(|| "");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sets the state of a simulated instance.
async fn sim_state(s: &Scene, id: &str, state: &str) {
    let (code, body) = http_request(
        s.sim.expect("the simulator runs"),
        "PATCH",
        &format!("/_sim/instances/{id}"),
        Some(&json!({"status": {"status": state}}).to_string()),
    )
    .await
    .expect("the simulator's control API answers");
    assert!(code < 300, "{code} {body}");
}

/// The token of the ServiceAccount `scraper` of the release namespace, which the chart binds
/// to its metrics-reader role (`metrics.readers`); set once the release is installed.
static SCRAPER_TOKEN: OnceLock<String> = OnceLock::new();

/// A GET of an operator's /metrics, with the scraper's token once there is one.
async fn scrape(addr: SocketAddr) -> Option<(u16, String)> {
    match SCRAPER_TOKEN.get() {
        Some(token) => http_get_bearer(addr, "/metrics", token).await,
        None => http_get(addr, "/metrics").await,
    }
}

/// The body of a 200 answer to [`scrape`].
async fn scrape_ok(addr: SocketAddr) -> String {
    match scrape(addr).await {
        Some((200, body)) => body,
        other => panic!("GET http://{addr}/metrics: {other:?}"),
    }
}

async fn http_ok(addr: SocketAddr, path: &str) -> String {
    match http_get(addr, path).await {
        Some((200, body)) => body,
        other => panic!("GET http://{addr}{path}: {other:?}"),
    }
}

/// The sum of a metric's samples (0 when absent); `name` without labels, e.g.
/// `ppio_status_writes_total`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether an object's status has condition `type_` with status True.
fn has_condition(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

fn ip_of(v: &Value) -> Ipv4Addr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an IPv4 address: {v}"))
}

/// A field of /proc/<pid>/status.
fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The release itself (no node needed).

/// A blob of an OCI image layout, by digest.
fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The crates of the shipped binary's normal dependency tree for `target`, as `name version`,
/// without the operator itself: `cargo tree -e normal,no-proc-macro`, the crates linked into
/// the binary. (A procedural macro's own dependencies are built for the build host, not
/// linked: with them, `pest_derive` would bring `stacker`, which the musl binary does not hold.)
fn normal_dependencies(target: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(REPO)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-e",
            "normal,no-proc-macro",
            "--target",
            target,
            "-p",
            "ppio-operator",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    let text = ok(out, "cargo tree");
    let deps: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.trim_start_matches('v');
            (name != "ppio-operator").then(|| format!("{name} {version}"))
        })
        .collect();
    assert!(deps.len() > 100, "cargo tree listed {} crates", deps.len());
    deps
}

/// The crates `THIRD-PARTY-LICENSES.txt` lists (its "Crates:" section), as `name version`.
fn licensed_crates(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip_while(|l| *l != "Crates:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.trim().split(':').next().map(str::to_string))
        .collect()
}

/// The components of a CycloneDX SBOM, as `name version`.
fn sbom_components(sbom: &Value) -> BTreeSet<String> {
    sbom["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| {
            Some(format!(
                "{} {}",
                c["name"].as_str()?,
                c["version"].as_str()?
            ))
        })
        .collect()
}

fn missing_from(want: &BTreeSet<String>, have: &BTreeSet<String>) -> Vec<String> {
    want.difference(have).cloned().collect()
}

const RUST_TARGETS: [(&str, &str); 2] = [
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];

#[test]
fn the_image_holds_both_platforms_with_only_the_binary_the_user_and_the_licences() {
    let release = release_dir();
    let layout = release.join("image");
    assert!(
        layout.join("index.json").is_file(),
        "{} is missing: build it with tools/release.sh {VERSION} --no-push (tools/test.sh does)",
        layout.display()
    );
    let top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index");
    let entry = &top["manifests"][0];
    assert_eq!(
        entry["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{top}"
    );
    let index: Value =
        serde_json::from_slice(&blob(&layout, entry["digest"].as_str().expect("digest")))
            .expect("index");
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["platform"]["os"].as_str().unwrap_or("").to_string(),
                m["platform"]["architecture"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("linux".into(), "amd64".into()),
            ("linux".into(), "arm64".into())
        ],
        "{index}"
    );
    for (m, (arch, target)) in index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .zip(RUST_TARGETS)
    {
        let manifest: Value =
            serde_json::from_slice(&blob(&layout, m["digest"].as_str().expect("digest")))
                .expect("manifest");
        let config: Value = serde_json::from_slice(&blob(
            &layout,
            manifest["config"]["digest"].as_str().expect("config"),
        ))
        .expect("config");
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/ppio-operator"])
        );
        assert_eq!(config["config"]["Cmd"], json!(["run"]));
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.licenses"],
            "Apache-2.0"
        );
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "one layer: {manifest}");
        let dir = tempfile::tempdir().expect("tmp");
        let layer = dir.path().join("layer.tar.gz");
        std::fs::write(
            &layer,
            blob(&layout, layers[0]["digest"].as_str().expect("digest")),
        )
        .expect("write layer");
        let listing = Command::new("tar")
            .arg("-tzf")
            .arg(&layer)
            .output()
            .expect("tar runs");
        let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(str::to_string)
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "etc/group",
                "etc/passwd",
                "usr/local/bin/ppio-operator",
                "usr/share/doc/ppio-operator/LICENSE",
                "usr/share/doc/ppio-operator/THIRD-PARTY-LICENSES.txt",
            ],
            "{arch}: nothing but the binary, the user and the licences (no shell, no CA bundle)"
        );
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        let x = Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&root)
            .status()
            .expect("tar runs");
        assert!(x.success());
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
        assert!(passwd.contains(":65532:65532:"), "{passwd}");
        let group = std::fs::read_to_string(root.join("etc/group")).expect("group");
        assert!(group.contains(":65532:"), "{group}");
        let license = std::fs::read_to_string(root.join("usr/share/doc/ppio-operator/LICENSE"))
            .expect("LICENSE");
        assert!(license.contains("Apache License"), "the project's licence");

        // The licence texts name every crate of this platform's normal dependency tree, and
        // hold the texts of the licences they use.
        let licences = std::fs::read_to_string(
            root.join("usr/share/doc/ppio-operator/THIRD-PARTY-LICENSES.txt"),
        )
        .expect("THIRD-PARTY-LICENSES.txt");
        let deps = normal_dependencies(target);
        let missing = missing_from(&deps, &licensed_crates(&licences));
        assert!(missing.is_empty(), "{arch}: no licence for {missing:?}");
        for text in [
            "Permission is hereby granted, free of charge",
            "Apache License",
            "Version 2.0, January 2004",
        ] {
            assert!(
                licences.contains(text),
                "{arch}: the licence texts hold {text:?}"
            );
        }
        // The release's SBOM of this platform lists the same crates.
        let sbom: Value = serde_json::from_slice(
            &std::fs::read(release.join(format!("sbom-linux-{arch}.cdx.json"))).expect("sbom"),
        )
        .expect("CycloneDX JSON");
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        let missing = missing_from(&deps, &sbom_components(&sbom));
        assert!(missing.is_empty(), "{arch}: the SBOM lacks {missing:?}");

        // Static, for this architecture, with its dependency list embedded (cargo auditable),
        // and it runs: natively, or the arm64 build under qemu-user.
        let binary = root.join("usr/local/bin/ppio-operator");
        let file = ok(
            Command::new("file")
                .arg(&binary)
                .output()
                .expect("file runs"),
            "file",
        );
        assert!(
            file.contains("statically linked") || file.contains("static-pie linked"),
            "{file}"
        );
        let machine = if arch == "amd64" {
            "x86-64"
        } else {
            "ARM aarch64"
        };
        assert!(file.contains(machine), "{arch}: {file}");
        let elf = std::fs::read(&binary).expect("binary");
        assert!(
            elf.windows(b".dep-v0".len()).any(|w| w == b".dep-v0"),
            "{arch}: the binary carries cargo auditable's .dep-v0 section"
        );
        let version = if arch == "amd64" {
            Command::new(&binary).arg("--version").output()
        } else {
            Command::new("qemu-aarch64-static")
                .arg(&binary)
                .arg("--version")
                .output()
        }
        .unwrap_or_else(|e| {
            panic!("{arch}: running the binary: {e} (qemu-user-static: tools/node-packages.sh)")
        });
        assert_eq!(
            ok(version, "ppio-operator --version").trim(),
            format!("ppio-operator {VERSION}"),
            "{arch}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// On the node.

#[ppio_test_macros::test(deadline = 1800, flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_the_chart_on_a_real_node() {
    assert!(
        is_root(),
        "the node tier needs root (it runs the kubelet and containerd): run it as root, or \
         leave it out with tools/test.sh --no-node"
    );
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-logs");
    let _ = std::fs::remove_dir_all(&logs);
    let options = NodeOptions {
        tools: tools_dir(),
        // Every image comes from the release step's registry, pulled by containerd.
        images: Vec::new(),
        logs: logs.clone(),
    };
    let node = match Node::up(&options).await {
        Ok(n) => n,
        Err(e @ NodeError::Missing(_)) => panic!("{e}"),
        Err(e) => panic!("the node did not come up: {e} (logs: {})", logs.display()),
    };
    eprintln!("node {} ({}) up in {:?}", node.name, node.ip, node.took);
    let client = node.client().await.expect("client");
    let mut scene = Scene {
        api: Api::namespaced(client.clone(), WATCHED_NS),
        client,
        node,
        sim: None,
        registry: None,
    };
    let mut timings = Vec::new();
    let mut memory = 0;
    let outcome = AssertUnwindSafe(async {
        for (name, step) in STEPS {
            let start = Instant::now();
            eprintln!("--- {name}");
            step(&mut scene).await;
            memory = memory.max(scene.node.resident_memory());
            timings.push((*name, start.elapsed()));
        }
    })
    .catch_unwind()
    .await;
    if outcome.is_err() {
        if let Err(e) = scene.node.check_alive() {
            eprintln!("a program of the node died: {e}");
        }
        // From the kubelet's log files: the API server may be gone too.
        for (pod, container, log) in scene.node.namespace_logs(RELEASE_NS) {
            eprintln!("--- log of {pod}/{container}:\n{log}");
        }
    }
    let teardown = scene.node.down();
    for (name, took) in &timings {
        eprintln!("{name}: {took:.1?}");
    }
    eprintln!(
        "teardown: {:.1?}; peak resident memory of the node: {} MiB; logs: {}",
        teardown.took,
        memory >> 20,
        logs.display()
    );
    if let Err(panic) = outcome {
        if !teardown.leftovers.is_empty() {
            eprintln!("left after teardown: {:#?}", teardown.leftovers);
        }
        std::panic::resume_unwind(panic);
    }
    assert!(
        teardown.leftovers.is_empty(),
        "the teardown left {:#?}\n{}",
        teardown.leftovers,
        teardown.output
    );
}

type Step = for<'a> fn(&'a mut Scene) -> BoxFuture<'a, ()>;

const STEPS: &[(&str, Step)] = &[
    (
        "tools/release.sh publishes to a registry on the node: both platforms, SBOMs, signatures",
        step_release,
    ),
    ("the image's binary starts in a container", step_binary),
    (
        "the simulator runs from the image behind a Service",
        step_simulator,
    ),
    ("helm install: the operator runs and observes", step_install),
    (
        "helm upgrade to a new tag, one replica (Recreate): never two writers",
        step_upgrade_recreate,
    ),
    (
        "two replicas: one writer, and a takeover",
        step_leader_election,
    ),
    (
        "the leader's container killed: restarted in its pod, one writer",
        step_kill_leader,
    ),
    (
        "helm upgrade to a new tag, two replicas (rolling): never two writers",
        step_upgrade_rolling,
    ),
    (
        "exports: a Pod reaches the instance through its Service, another reads its connection Secret",
        step_exports,
    ),
    (
        "helm uninstall keeps the CRD and the PpioInstances",
        step_uninstall,
    ),
    (
        "watchNamespace: Roles only, and only that namespace",
        step_namespaced,
    ),
];

fn step_release(s: &mut Scene) -> BoxFuture<'_, ()> {
    release(s).boxed()
}
fn step_binary(s: &mut Scene) -> BoxFuture<'_, ()> {
    binary_starts(s).boxed()
}
fn step_simulator(s: &mut Scene) -> BoxFuture<'_, ()> {
    simulator(s).boxed()
}
fn step_install(s: &mut Scene) -> BoxFuture<'_, ()> {
    install(s).boxed()
}
fn step_leader_election(s: &mut Scene) -> BoxFuture<'_, ()> {
    leader_election(s).boxed()
}
fn step_exports(s: &mut Scene) -> BoxFuture<'_, ()> {
    exports(s).boxed()
}
fn step_uninstall(s: &mut Scene) -> BoxFuture<'_, ()> {
    uninstall(s).boxed()
}
fn step_upgrade_recreate(s: &mut Scene) -> BoxFuture<'_, ()> {
    upgrade_recreate(s).boxed()
}
fn step_kill_leader(s: &mut Scene) -> BoxFuture<'_, ()> {
    kill_leader(s).boxed()
}
fn step_upgrade_rolling(s: &mut Scene) -> BoxFuture<'_, ()> {
    upgrade_rolling(s).boxed()
}
fn step_namespaced(s: &mut Scene) -> BoxFuture<'_, ()> {
    namespaced(s).boxed()
}

/// A pod of the image with a hardened security context and the given args (or command).
fn image_pod(ns: &str, name: &str, command: Option<&[&str]>, args: &[&str]) -> String {
    let mut container = json!({
        "name": name,
        "image": image(),
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}
        }
    });
    if let Some(c) = command {
        container["command"] = json!(c);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container]
        }
    })
    .to_string()
}

/// `KEY=value` lines of the release's `release.env`.
fn release_env(dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(dir.join("release.env")).expect("release.env");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `cosign verify` of `reference` with the public key `key`, offline (no transparency log).
fn cosign_verify(key: &Path, reference: &str) -> Output {
    let mut c = tool("cosign");
    c.arg("verify").arg("--key").arg(key).args([
        "--insecure-ignore-tlog=true",
        "--output",
        "json",
        reference,
    ]);
    run(c, None)
}

/// The release command run as a user runs it, against a real registry on the node (HTTPS,
/// a throwaway CA that containerd trusts through hosts.toml), with a signing key; then what a
/// platform team checks before installing: the index has both platforms, each platform's
/// SBOM is attached and lists every crate of the normal dependency tree, image and chart
/// signatures verify with the public key (not with another key, not for altered content), the
/// image digest is the one the earlier build of the same commit gave, and the chart archive
/// carries the commit's time.
async fn release(s: &mut Scene) {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-release");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let registry = Registry::start(&tools_dir(), s.node.ip, &work.join("registry"))
        .unwrap_or_else(|e| panic!("the registry: {e}"));
    s.node
        .trust_registry(&registry.host, &registry.ca)
        .expect("containerd trusts the registry");
    let target = format!("{}/ppio", registry.host);
    let _ = PUBLISHED.set(Published {
        registry: target.clone(),
        ca: registry.ca.clone(),
    });
    s.registry = Some(registry);
    let ca = published().ca.clone();

    // A key pair, as `cosign generate-key-pair` makes it (empty password).
    let keys = work.join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    let mut c = tool("cosign");
    c.current_dir(&keys)
        .arg("generate-key-pair")
        .env("COSIGN_PASSWORD", "");
    ok(run(c, None), "cosign generate-key-pair");
    let mut c = tool("cosign");
    std::fs::create_dir_all(keys.join("other")).expect("other");
    c.current_dir(keys.join("other"))
        .arg("generate-key-pair")
        .env("COSIGN_PASSWORD", "");
    ok(run(c, None), "cosign generate-key-pair (a stranger's)");

    // The release's tools as another machine installs them: at another path, cargo-auditable
    // a copy of its own (it names itself to cargo by its own path), the others linked. The
    // image must not change with where they are.
    let elsewhere = work.join("tools");
    std::fs::create_dir_all(&elsewhere).expect("tools dir");
    for entry in std::fs::read_dir(tools_dir()).expect("the tools") {
        let entry = entry.expect("a tool");
        let to = elsewhere.join(entry.file_name());
        if entry.file_name() == "cargo-auditable" {
            std::fs::copy(entry.path(), &to).expect("copy cargo-auditable");
        } else {
            let from = std::fs::canonicalize(entry.path()).expect("a tool's path");
            std::os::unix::fs::symlink(from, &to).expect("link a tool");
        }
    }

    let out_dir = work.join("out");
    let mut c = Command::new(Path::new(REPO).join("tools/release.sh"));
    c.args([VERSION, &target, "--key"])
        .arg(keys.join("cosign.key"))
        .arg("--ca-file")
        .arg(&ca)
        .arg("--out")
        .arg(&out_dir)
        .env("COSIGN_PASSWORD", "")
        .env("PPIO_TOOLS_BIN", &elsewhere);
    let start = Instant::now();
    let said = run(c, None);
    let stderr = String::from_utf8_lossy(&said.stderr).into_owned();
    ok(said, "tools/release.sh");
    eprintln!(
        "tools/release.sh {VERSION} {target}: {:.1?}",
        start.elapsed()
    );
    assert!(
        stderr.contains("cosign verify --key cosign.pub --insecure-ignore-tlog=true"),
        "the release says how to verify it: {stderr}"
    );
    let env = release_env(&out_dir);
    let index_digest = env["IMAGE_INDEX_DIGEST"].clone();
    let _ = INDEX_DIGEST.set(index_digest.clone());
    assert_eq!(env["SIGNED"], "true");

    // The same commit, built twice (here, with the tools elsewhere, and by tools/test.sh
    // before the tests), gives the same image digest.
    let before = release_dir();
    if before.join("release.env").is_file() {
        assert_eq!(
            release_env(&before)["IMAGE_INDEX_DIGEST"],
            index_digest,
            "two builds of the same commit, with the release's tools at two paths, give the same image index"
        );
        for arch in ["amd64", "arm64"] {
            let sbom = format!("sbom-linux-{arch}.cdx.json");
            let read = |dir: &Path| std::fs::read(dir.join(&sbom)).expect("the SBOM");
            assert!(
                read(&before) == read(&out_dir),
                "two builds of the same commit give the same {sbom} (time and serial number)"
            );
        }
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing: tools/test.sh builds the release before the tests",
            before.display()
        );
    }

    // The chart, like the image, carries the commit's time and not the time it was packaged:
    // the same commit gives the same chart archive.
    let commit_time = {
        let mut c = Command::new("git");
        c.current_dir(REPO).args(["log", "-1", "--format=%ct"]);
        ok(run(c, None), "git log").trim().to_string()
    };
    let mut c = Command::new("tar");
    c.args([
        "--list",
        "--verbose",
        "--numeric-owner",
        "--full-time",
        "-zf",
    ])
    .arg(out_dir.join(format!("ppio-operator-{VERSION}.tgz")))
    .env("TZ", "UTC");
    let listing = ok(run(c, None), "tar --list of the chart");
    let mut c = Command::new("date");
    c.args(["-u", "-d", &format!("@{commit_time}"), "+%Y-%m-%d %H:%M:%S"]);
    let stamp = ok(run(c, None), "date").trim().to_string();
    assert!(
        listing.lines().count() > 5
            && listing
                .lines()
                .all(|l| l.contains(&format!(" {stamp} ppio-operator/")) && l.contains(" 0/0 ")),
        "every entry of the chart archive is root's and dated {stamp} (the commit's time):\n{listing}"
    );

    // The registry serves the index, with both platforms.
    let mut c = tool("crane");
    c.args(["digest", &image()]);
    assert_eq!(ok(run(c, None), "crane digest").trim(), index_digest);
    let mut c = tool("crane");
    c.args(["manifest", &image()]);
    let index: Value = serde_json::from_str(&ok(run(c, None), "crane manifest")).expect("index");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let mut archs: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");

    // Each platform's SBOM, attached in the registry, lists its normal dependency tree.
    for (arch, rust_target) in RUST_TARGETS {
        let digest = env[&format!("IMAGE_DIGEST_LINUX_{}", arch.to_uppercase())].clone();
        let mut c = tool("cosign");
        c.args([
            "download",
            "sbom",
            &format!("{target}/ppio-operator@{digest}"),
        ]);
        let sbom: Value =
            serde_json::from_str(&ok(run(c, None), "cosign download sbom")).expect("SBOM JSON");
        let missing = missing_from(&normal_dependencies(rust_target), &sbom_components(&sbom));
        assert!(
            missing.is_empty(),
            "{arch}: the attached SBOM lacks {missing:?}"
        );
    }

    // Signatures: image and chart verify with the release's public key...
    let public = keys.join("cosign.pub");
    let chart_ref = format!("{target}/charts/ppio-operator:{VERSION}");
    for reference in [image(), chart_ref.clone()] {
        let out = cosign_verify(&public, &reference);
        ok(out, &format!("cosign verify {reference}"));
    }
    // ...not with another key...
    let out = cosign_verify(&keys.join("other/cosign.pub"), &image());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no matching signatures"),
        "a stranger's key is refused for its signature, not for another reason: {err}"
    );
    // ...and not once the content under the signed name changed: a copy with its signatures
    // verifies until its tag is pointed at other content (one platform's image alone).
    let copy = format!("{target}/mirror/ppio-operator:{VERSION}");
    let mut c = tool("cosign");
    c.args(["copy", "--force", &image(), &copy]);
    ok(run(c, None), "cosign copy");
    ok(cosign_verify(&public, &copy), "cosign verify of the copy");
    let mut c = tool("crane");
    c.args([
        "copy",
        &format!("{target}/ppio-operator@{}", env["IMAGE_DIGEST_LINUX_AMD64"]),
        &copy,
    ]);
    ok(run(c, None), "crane copy");
    let out = cosign_verify(&public, &copy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no signatures found"),
        "the tampered image is refused for want of a signature: {err}"
    );
    // The chart likewise: another chart pushed under the signed chart's name fails.
    let chart_copy = format!("{target}/mirror/charts/ppio-operator:{VERSION}");
    let mut c = tool("cosign");
    c.args(["copy", "--force", &chart_ref, &chart_copy]);
    ok(run(c, None), "cosign copy (chart)");
    ok(
        cosign_verify(&public, &chart_copy),
        "cosign verify of the chart copy",
    );
    let altered = work.join("altered");
    std::fs::create_dir_all(&altered).expect("altered");
    let tgz = out_file(&out_dir, &format!("ppio-operator-{VERSION}.tgz"));
    let x = Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&altered)
        .status()
        .expect("tar");
    assert!(x.success());
    let values = altered.join("ppio-operator/values.yaml");
    let text = std::fs::read_to_string(&values).expect("values");
    std::fs::write(&values, text.replace("replicaCount: 1", "replicaCount: 3")).expect("values");
    let packaged = s.helm(&[
        "package",
        altered.join("ppio-operator").to_str().expect("path"),
        "--destination",
        altered.to_str().expect("path"),
    ]);
    assert!(packaged.contains("Successfully packaged"), "{packaged}");
    s.helm(&[
        "push",
        altered
            .join(format!("ppio-operator-{VERSION}.tgz"))
            .to_str()
            .expect("path"),
        &format!("oci://{target}/mirror/charts"),
        "--ca-file",
        ca.to_str().expect("path"),
    ]);
    let out = cosign_verify(&public, &chart_copy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no signatures found"),
        "the tampered chart is refused for want of a signature: {err}"
    );

    // The chart from the registry names the registry's image.
    let mut args = vec!["show", "values"];
    let chart = chart_args();
    args.extend(chart.iter().map(String::as_str));
    let values = s.helm(&args);
    assert!(
        values.contains(&format!("repository: {target}/ppio-operator")),
        "{values}"
    );
}

fn out_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

async fn binary_starts(s: &mut Scene) {
    let ns = "node-image";
    s.namespace(ns).await;
    s.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&image_pod(ns, "version", None, &["--version"])),
    );
    s.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&image_pod(
            ns,
            "shell",
            Some(&["/bin/sh", "-c", "true"]),
            &[],
        )),
    );
    let phase = eventually("the version pod ends", 60, || {
        let p = s.pod(ns, "version");
        let phase = p["status"]["phase"].as_str().unwrap_or("").to_string();
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = s.node.container_log(ns, "version", "version");
    assert_eq!(phase, "Succeeded", "ppio-operator --version: {log}");
    assert_eq!(log.trim(), format!("ppio-operator {VERSION}"));
    // No shell in the image: a container that asks for one cannot start.
    let state = eventually("the shell pod fails", 60, || {
        let p = s.pod(ns, "shell");
        let st = &p["status"]["containerStatuses"][0]["state"];
        let reason = st["terminated"]["reason"]
            .as_str()
            .or(st["waiting"]["reason"].as_str())
            .unwrap_or("");
        (p["status"]["phase"] == "Failed"
            || matches!(
                reason,
                "StartError" | "RunContainerError" | "CreateContainerError"
            ))
        .then(|| st.clone())
    })
    .await;
    assert!(
        state.to_string().contains("/bin/sh"),
        "the error names the missing shell: {state}"
    );
    s.kubectl_ok(&["delete", "namespace", ns, "--wait=false"], None);
}

async fn simulator(s: &mut Scene) {
    s.namespace(SIM_NS).await;
    let mut pod: Value = serde_json::from_str(&image_pod(
        SIM_NS,
        "simulator",
        None,
        &[
            "simulate",
            "--addr",
            &format!("0.0.0.0:{SIM_PORT}"),
            "--api-key",
            KEY,
        ],
    ))
    .expect("json");
    pod["spec"]["restartPolicy"] = json!("Always");
    pod["spec"]["containers"][0]["ports"] = json!([{"name": "http", "containerPort": SIM_PORT}]);
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"tcpSocket": {"port": SIM_PORT}, "periodSeconds": 1});
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "simulator", "namespace": SIM_NS},
        "spec": {"selector": {"app": "simulator"}, "ports": [{"port": SIM_PORT, "targetPort": "http"}]}
    });
    s.kubectl_ok(&["apply", "-f", "-"], Some(&pod.to_string()));
    s.kubectl_ok(&["apply", "-f", "-"], Some(&service.to_string()));
    eventually("the simulator pod is Ready", 60, || {
        has_condition(&s.pod(SIM_NS, "simulator"), "Ready").then_some(())
    })
    .await;
    let svc = s.json(&["get", "service", "simulator", "-n", SIM_NS]);
    let addr = SocketAddr::from((ip_of(&svc["spec"]["clusterIP"]), SIM_PORT));
    // Through kube-proxy: the Service's ClusterIP from the host.
    let deadline = Deadline::new(format!("the simulator answers at {addr}"), WAIT);
    let counts = loop {
        if let Some((200, body)) = http_get(addr, "/_sim/requests").await {
            break body;
        }
        deadline.check(|| "");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(counts.contains("instances"), "{counts}");
    s.sim = Some(addr);
}

/// `helm install` of the released chart from the registry with the test's values (the
/// simulator, its key; the image is the chart's own, pulled from the registry) and `extra`
/// values.
fn helm_install(s: &Scene, release: &str, ns: &str, extra: &[(&str, &str)]) {
    let sim = s.sim.expect("the simulator runs");
    let values = json!({
        "image": {"pullPolicy": "IfNotPresent"},
        "apiKey": {"value": KEY},
        "ppio": {"baseUrl": format!("http://{sim}")},
        "defaultRefreshInterval": "10s",
        // The simulator speaks plain HTTP on the pod network.
        "extraEnv": [{"name": "PPIO_ALLOW_INSECURE_HTTP", "value": "true"}],
        // The tests' scraper may read /metrics.
        "metrics": {"readers": [{"kind": "ServiceAccount", "name": "scraper", "namespace": RELEASE_NS}]},
    });
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("values.yaml");
    std::fs::write(&file, values.to_string()).expect("values");
    let chart = chart_args();
    let mut args = vec!["install", release];
    args.extend(chart.iter().map(String::as_str));
    args.extend([
        "--namespace",
        ns,
        "--create-namespace",
        "--values",
        file.to_str().expect("path"),
    ]);
    let sets: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    s.helm(&args);
}

async fn install(s: &mut Scene) {
    helm_install(s, RELEASE, RELEASE_NS, &[]);
    eventually("the Deployment is Available", 120, || {
        has_condition(&s.deployment(), "Available").then_some(())
    })
    .await;
    let pods = s.operator_pods();
    assert_eq!(pods.len(), 1, "one replica");
    let pod = &pods[0];
    let pod_name = pod["metadata"]["name"].as_str().expect("name").to_string();
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true, "{status}");
    // The chart from the registry names the registry's image, which containerd pulled: the
    // runtime reports the index digest the release pushed.
    assert_eq!(status["image"], image(), "{status}");
    assert_eq!(
        status["imageID"],
        format!(
            "{}/ppio-operator@{}",
            published().registry,
            INDEX_DIGEST.get().expect("the release step ran")
        ),
        "{status}"
    );

    // The runtime, not only the spec: uid/gid 65532, no capabilities, no privilege
    // escalation, seccomp, and a read-only root filesystem.
    let pid = s
        .node
        .container_pid(status["containerID"].as_str().expect("container id"))
        .expect("the container's pid");
    assert_eq!(proc_status(pid, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(proc_status(pid, "Gid"), "65532\t65532\t65532\t65532");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    assert_eq!(proc_status(pid, "Seccomp"), "2", "a seccomp filter");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    let options = root.split(' ').nth(5).unwrap_or("");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the root filesystem is read-only: {root}"
    );

    // The probes' endpoints, from the node as the kubelet asks them.
    let pod_ip = ip_of(&pod["status"]["podIP"]);
    for path in ["/livez", "/readyz"] {
        http_ok(SocketAddr::from((pod_ip, 8081)), path).await;
    }

    // The service account and the chart's RBAC: enough to read and patch status, no more.
    let sa = format!("system:serviceaccount:{RELEASE_NS}:{RELEASE}");
    for (verb, resource, subresource, allowed) in [
        ("list", "ppioinstances.gpus.ppio.com", "", true),
        ("watch", "ppioinstances.gpus.ppio.com", "", true),
        ("patch", "ppioinstances.gpus.ppio.com", "status", true),
        ("update", "ppioinstances.gpus.ppio.com", "", false),
        ("patch", "ppioinstances.gpus.ppio.com", "", false),
        ("delete", "ppioinstances.gpus.ppio.com", "", false),
        ("get", "secrets", "", true),
        ("list", "secrets", "", false),
        ("create", "pods", "", false),
        // /metrics checks its scrapers' tokens (metrics.auth=kubernetes, the default).
        ("create", "tokenreviews.authentication.k8s.io", "", true),
        (
            "create",
            "subjectaccessreviews.authorization.k8s.io",
            "",
            true,
        ),
    ] {
        let subresource = format!("--subresource={subresource}");
        let out = s.kubectl(
            &[
                "auth",
                "can-i",
                verb,
                resource,
                &subresource,
                "--as",
                &sa,
                "-n",
                WATCHED_NS,
            ],
            None,
        );
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            answer,
            if allowed { "yes" } else { "no" },
            "{sa} {verb} {resource} {subresource}"
        );
    }

    // A PpioInstance of a running instance: status and Events written by the pod.
    s.namespace(WATCHED_NS).await;
    s.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&instance(WATCHED_NS, "trainer-a", "ca338f12f3")),
    );
    let obj = wait_for(&s.api, "trainer-a", "Ready", |o| {
        has(o, "Synced", "True", "Observed") && has(o, "Ready", "True", "Running")
    })
    .await;
    assert_eq!(
        obj.status.as_ref().and_then(|st| st.state.as_deref()),
        Some("running")
    );
    // The instance stops: the pod sees it on its next poll.
    sim_state(s, "ca338f12f3", "exited").await;
    let obj = wait_for(&s.api, "trainer-a", "NotRunning", |o| {
        has(o, "Ready", "False", "NotRunning")
    })
    .await;
    assert_eq!(
        obj.status.as_ref().and_then(|st| st.state.as_deref()),
        Some("exited")
    );
    let events = eventually("a StateChanged Event", 60, || {
        let e = events_of(s, WATCHED_NS, "trainer-a");
        e.iter().any(|e| e["reason"] == "StateChanged").then_some(e)
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| e["reportingInstance"] == pod_name.as_str()
                && e["reportingComponent"] == "ppio-operator"),
        "reported by ppio-operator in {pod_name}: {events:?}"
    );

    // /metrics through the chart's Service.
    let svc = s.json(&[
        "get",
        "service",
        &format!("{RELEASE}-metrics"),
        "-n",
        RELEASE_NS,
    ]);
    let metrics_addr = SocketAddr::from((ip_of(&svc["spec"]["clusterIP"]), 8080));
    // The chart's default guards it: no token, or one of a user not bound to the reader
    // role, is refused; the scraper bound through metrics.readers reads it.
    let (code, body) = http_get(metrics_addr, "/metrics").await.expect("an answer");
    assert_eq!(code, 401, "{body}");
    s.kubectl_ok(
        &["create", "serviceaccount", "scraper", "-n", RELEASE_NS],
        None,
    );
    s.kubectl_ok(
        &["create", "serviceaccount", "stranger", "-n", RELEASE_NS],
        None,
    );
    let token = |sa: &str| {
        s.kubectl_ok(
            &["create", "token", sa, "-n", RELEASE_NS, "--duration=2h"],
            None,
        )
        .trim()
        .to_string()
    };
    let stranger = token("stranger");
    let (code, body) = http_get_bearer(metrics_addr, "/metrics", &stranger)
        .await
        .expect("an answer");
    assert_eq!(code, 403, "{body}");
    let _ = SCRAPER_TOKEN.set(token("scraper"));
    let text = scrape_ok(metrics_addr).await;
    assert!(metric(&text, "ppio_status_writes_total") >= 2.0, "{text}");
    assert!(text.contains("trainer-a"), "per-instance metrics: {text}");

    // Probes kept passing (a failed liveness probe restarts the container).
    let pod = s.pod(RELEASE_NS, &pod_name);
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    let log = s.operator_log(&pod_name);
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "no RBAC error in the operator's log:\n{log}"
    );

    // `helm test`: the chart's test Pod (the operator's image, `ppio-operator check`) finds
    // the CRD served and the operator ready through its metrics Service.
    // (The Pod is deleted once it succeeded; it exits non-zero when either check fails.)
    let out = s.helm(&["test", RELEASE, "-n", RELEASE_NS]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("Phase:") && l.trim_end().ends_with("Succeeded")),
        "{out}"
    );

    built_in_roles_cover_ppio_instances(s).await;
}

/// A namespace user bound to the built-in `edit` ClusterRole creates, reads and deletes
/// PpioInstances and cannot write their status; one bound to `view` only reads them: the
/// chart's aggregated ClusterRoles, merged into the built-in roles by the real
/// kube-controller-manager.
async fn built_in_roles_cover_ppio_instances(s: &Scene) {
    let ns = "team-roles";
    s.namespace(ns).await;
    for (user, role) in [("alice", "edit"), ("bob", "view")] {
        s.kubectl_ok(
            &[
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                "--clusterrole",
                role,
                "--user",
                user,
                "-n",
                ns,
            ],
            None,
        );
    }
    let can = |user: &str, verb: &str, subresource: &str| {
        let sub = format!("--subresource={subresource}");
        let out = s.kubectl(
            &[
                "auth",
                "can-i",
                verb,
                "ppioinstances.gpus.ppio.com",
                &sub,
                "--as",
                user,
                "-n",
                ns,
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    // The aggregation controller merges the chart's roles into the built-in ones.
    eventually("edit and view cover PpioInstances", 120, || {
        (can("alice", "create", "") && can("bob", "list", "")).then_some(())
    })
    .await;
    for (user, verb, subresource, allowed) in [
        ("alice", "get", "", true),
        ("alice", "delete", "", true),
        ("alice", "patch", "status", false),
        ("alice", "update", "status", false),
        ("bob", "get", "", true),
        ("bob", "watch", "", true),
        ("bob", "create", "", false),
        ("bob", "patch", "status", false),
    ] {
        assert_eq!(
            can(user, verb, subresource),
            allowed,
            "{user} {verb} {subresource}"
        );
    }
    // As alice: create and read one; writing its status is refused.
    let as_alice = |args: &[&str], stdin: Option<&str>| {
        let mut a = args.to_vec();
        a.extend(["--as", "alice", "-n", ns]);
        s.kubectl(&a, stdin)
    };
    ok(
        as_alice(
            &["apply", "-f", "-"],
            Some(&instance(ns, "alices", "ca338f12f3")),
        ),
        "alice creates a PpioInstance",
    );
    ok(
        as_alice(&["get", "ppioinstance", "alices"], None),
        "alice reads it",
    );
    let out = as_alice(
        &[
            "patch",
            "ppioinstance",
            "alices",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"state":"forged"}}"#,
        ],
        None,
    );
    assert!(!out.status.success(), "alice wrote a status");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(
        as_alice(&["delete", "ppioinstance", "alices"], None),
        "alice deletes it",
    );
    s.kubectl_ok(&["delete", "namespace", ns, "--wait=false"], None);
}

fn instance(ns: &str, name: &str, id: &str) -> String {
    json!({
        "apiVersion": "gpus.ppio.com/v1alpha1",
        "kind": "PpioInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"instanceId": id, "refreshInterval": "10s"}
    })
    .to_string()
}

/// The Events about a PpioInstance in namespace `ns`.
fn events_of(s: &Scene, ns: &str, name: &str) -> Vec<Value> {
    let list = s.json(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("involvedObject.name={name}"),
    ]);
    list["items"].as_array().cloned().unwrap_or_default()
}

/// (pod name, pod IP) of the operator pods, once `n` are Ready.
async fn ready_operator_pods(s: &Scene, n: usize) -> Vec<(String, Ipv4Addr)> {
    eventually(&format!("{n} ready operator pods"), 120, || {
        let pods: Vec<(String, Ipv4Addr)> = s
            .operator_pods()
            .iter()
            .filter(|p| p["status"]["containerStatuses"][0]["ready"] == true)
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    ip_of(&p["status"]["podIP"]),
                )
            })
            .collect();
        (pods.len() == n).then_some(pods)
    })
    .await
}

fn lease_holder(s: &Scene) -> Option<String> {
    let out = s.kubectl(
        &[
            "get",
            "lease",
            RELEASE,
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

/// Of `pods` (name, IP), `leader` reports leading and has written status (its counter
/// follows the write it reports), and every other pod neither leads nor writes.
async fn assert_one_writer(pods: &[(String, Ipv4Addr)], leader: &str) {
    let deadline = Deadline::new(format!("a status write of the leader {leader}"), WAIT);
    loop {
        let mut texts = Vec::new();
        for (pod, ip) in pods {
            let text = scrape_ok(SocketAddr::from((*ip, 8080))).await;
            let leading = metric(&text, "ppio_leader");
            let writes = metric(&text, "ppio_status_writes_total");
            texts.push((pod.clone(), leading, writes, text));
        }
        let leader_wrote = texts
            .iter()
            .any(|(p, leading, writes, _)| p == leader && *leading == 1.0 && *writes >= 1.0);
        for (pod, leading, writes, text) in &texts {
            if pod != leader {
                assert!(
                    *leading == 0.0 && *writes == 0.0,
                    "standby {pod} leads or writes:\n{text}"
                );
            }
        }
        if leader_wrote {
            return;
        }
        deadline.check(|| {
            format!(
                "{:#?}",
                texts
                    .iter()
                    .map(|(p, l, w, _)| format!("{p}: leader {l}, writes {w}"))
                    .collect::<Vec<_>>()
            )
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `helm upgrade --reuse-values` of the release with these `--set` values.
fn upgrade_with(s: &Scene, sets: &[&str]) {
    let chart = chart_args();
    let mut args = vec!["upgrade", RELEASE];
    args.extend(chart.iter().map(String::as_str));
    args.extend(["--namespace", RELEASE_NS, "--reuse-values"]);
    for set in sets {
        args.extend(["--set", set]);
    }
    s.helm(&args);
}

/// Waits until the release's Deployment has rolled out: every replica updated and available.
async fn deployment_rolled_out(s: &Scene) {
    eventually("the Deployment rolled out", 180, || {
        let d = s.deployment();
        let want = d["spec"]["replicas"].as_u64();
        let st = &d["status"];
        (st["observedGeneration"].as_u64() >= d["metadata"]["generation"].as_u64()
            && st["updatedReplicas"].as_u64() == want
            && st["availableReplicas"].as_u64() == want
            && st["replicas"].as_u64() == want)
            .then_some(())
    })
    .await;
}

async fn leader_election(s: &mut Scene) {
    upgrade_with(
        s,
        &[
            "replicaCount=2",
            "leaderElection.enabled=true",
            &format!("leaderElection.leaseDuration={LEASE_SECONDS}s"),
        ],
    );
    deployment_rolled_out(s).await;
    let pods = ready_operator_pods(s, 2).await;
    // The pod from before (without leader election) may still run while it terminates: it
    // would write too. Wait until it is gone.
    eventually("the pod without leader election gone", 60, || {
        (s.release_pods().len() == 2).then_some(())
    })
    .await;
    let leader = eventually("a leader", 60, || {
        lease_holder(s).filter(|h| pods.iter().any(|(p, _)| p == h))
    })
    .await;

    // A new PpioInstance: only the leader reconciles and writes.
    s.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&instance(WATCHED_NS, "trainer-b", "b7e2c91d04")),
    );
    wait_for(&s.api, "trainer-b", "observed", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    assert_one_writer(&pods, &leader).await;

    // The leader goes away (deleted: it releases the Lease on SIGTERM): another replica
    // leads and writes. (How soon is not pinned: it goes through the kubelet, the pod's
    // shutdown and kubectl; the deadlines are hang protection.)
    let start = Instant::now();
    s.kubectl_ok(
        &["delete", "pod", &leader, "-n", RELEASE_NS, "--wait=false"],
        None,
    );
    let new_leader = eventually("a new leader", 120, || {
        lease_holder(s).filter(|h| *h != leader)
    })
    .await;
    s.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&instance(WATCHED_NS, "trainer-c", "c0ffee1234")),
    );
    wait_for(&s.api, "trainer-c", "observed", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    let took = start.elapsed();
    let standby = pods
        .iter()
        .find(|(p, _)| *p != leader)
        .map(|(p, _)| p.clone());
    eprintln!(
        "{leader} deleted; {new_leader} ({}) leads and wrote trainer-c after {took:.1?}",
        if standby.as_ref() == Some(&new_leader) {
            "the standby"
        } else {
            "the replacement pod"
        }
    );
    let pods = ready_operator_pods(s, 2).await;
    assert_one_writer(&pods, &new_leader).await;
    // Its Events name it: the instance starts.
    sim_state(s, "c0ffee1234", "running").await;
    let events = eventually("a StateChanged Event of trainer-c", 60, || {
        let e = events_of(s, WATCHED_NS, "trainer-c");
        e.iter().any(|e| e["reason"] == "StateChanged").then_some(e)
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| e["reportingInstance"] == new_leader.as_str()),
        "trainer-c reported by {new_leader} only: {events:?}"
    );
}

/// The namespace of the exports step.
const EXPORTS_NS: &str = "consumers";

/// Serves the instance's port on the node's address: every connection gets `200 instance`;
/// counts them.
async fn instance_port(ip: Ipv4Addr) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(AtomicU32::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\ninstance")
                    .await;
            });
        }
    });
    (port, hits)
}

/// Runs a Pod of the image to its end; its phase and log.
async fn run_pod(s: &Scene, ns: &str, pod: &Value) -> (String, String) {
    let name = pod["metadata"]["name"].as_str().expect("name").to_string();
    s.kubectl_ok(&["apply", "-f", "-"], Some(&pod.to_string()));
    let phase = eventually(&format!("the pod {name} ends"), 120, || {
        let p = s.pod(ns, &name);
        let phase = p["status"]["phase"].as_str().unwrap_or("").to_string();
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    (phase, s.node.container_log(ns, &name, &name))
}

async fn exports(s: &mut Scene) {
    use std::sync::atomic::Ordering;
    let ns = EXPORTS_NS;
    s.namespace(ns).await;
    let sim = s.sim.expect("the simulator runs");
    // The instance's port 8080, at an endpoint on the node's address.
    let (port, hits) = instance_port(s.node.ip).await;
    let mut instance = ppio_operator::simulator::Simulator::samples().remove(0);
    instance["id"] = json!("exp0000001");
    instance["ports"] = json!([{"port": 8080, "protocol": "tcp", "endpoint": format!("http://{}:{port}", s.node.ip)}]);
    let put = http_request(
        sim,
        "PUT",
        "/_sim/instances/exp0000001",
        Some(&instance.to_string()),
    )
    .await;
    assert_eq!(
        put.map(|(code, _)| code),
        Some(204),
        "the simulator took the instance"
    );

    // The chart with both exports on: the operator's RBAC is the chart's.
    upgrade_with(
        s,
        &[
            "exports.connectionSecrets.enabled=true",
            "exports.services.enabled=true",
        ],
    );
    deployment_rolled_out(s).await;
    let manifest = json!({
        "apiVersion": "gpus.ppio.com/v1alpha1",
        "kind": "PpioInstance",
        "metadata": {"name": "notebook", "namespace": ns},
        "spec": {
            "instanceId": "exp0000001",
            "refreshInterval": "10s",
            "connectionSecret": {"name": "notebook-connection"},
            "service": {}
        }
    });
    s.kubectl_ok(&["apply", "-f", "-"], Some(&manifest.to_string()));
    let api: Api<PpioInstance> = Api::namespaced(s.client.clone(), ns);
    let deadline = Deadline::new("notebook: Exported=True", Duration::from_secs(120));
    loop {
        let o = api.get_opt("notebook").await.ok().flatten();
        if o.as_ref()
            .is_some_and(|o| has(o, "Exported", "True", "Exported"))
        {
            break;
        }
        deadline.check(|| format!("{:#?}", o.and_then(|o| o.status)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The image's `check` reads PpioInstances (the CRD check) and GETs a URL: a reader
    // ServiceAccount may list them here.
    let rbac = json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": ns}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "reader", "namespace": ns},
             "rules": [{"apiGroups": ["gpus.ppio.com"], "resources": ["ppioinstances"], "verbs": ["get", "list"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "reader", "namespace": ns},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
             "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]}
        ]
    });
    s.kubectl_ok(&["apply", "-f", "-"], Some(&rbac.to_string()));
    let reader_pod = |name: &str, args: &[&str]| {
        let mut pod: Value = serde_json::from_str(&image_pod(ns, name, None, args)).expect("json");
        pod["spec"]["serviceAccountName"] = json!("reader");
        pod["spec"]["automountServiceAccountToken"] = json!(true);
        pod
    };

    // A Pod reaches the instance's port through the Service's ClusterIP (kube-proxy to the
    // EndpointSlice's address).
    let svc = s.json(&["get", "service", "notebook", "-n", ns]);
    let cluster_ip = ip_of(&svc["spec"]["clusterIP"]);
    let before = hits.load(Ordering::SeqCst);
    let url = format!("http://{cluster_ip}:8080/");
    let (phase, log) = run_pod(
        s,
        ns,
        &reader_pod(
            "via-service",
            &["check", "--namespace", ns, "--readyz-url", &url],
        ),
    )
    .await;
    assert_eq!(phase, "Succeeded", "{url} from a Pod: {log}");
    assert!(
        hits.load(Ordering::SeqCst) > before,
        "the instance's port was reached"
    );

    // A Pod with the connection Secret: its keys as environment variables (a missing key
    // fails the container) and mounted as files; it reaches the port's endpoint from the
    // Secret.
    let mut pod = reader_pod(
        "with-secret",
        &[
            "check",
            "--namespace",
            ns,
            "--readyz-url",
            "$(PORT_ENDPOINT)",
        ],
    );
    let key = |env: &str, key: &str| json!({"name": env, "valueFrom": {"secretKeyRef": {"name": "notebook-connection", "key": key}}});
    pod["spec"]["containers"][0]["env"] = json!([
        key("PORT_ENDPOINT", "port-8080-endpoint"),
        key("SSH_HOST", "ssh-host"),
        key("SSH_PORT", "ssh-port"),
        key("SSH_PASSWORD", "ssh-password"),
    ]);
    let items: Vec<Value> = [
        "ssh-command",
        "ssh-host",
        "ssh-port",
        "ssh-username",
        "ssh-password",
        "web-terminal-endpoint",
        "web-terminal-username",
        "web-terminal-password",
        "jupyter-endpoint",
        "port-8080-endpoint",
    ]
    .iter()
    .map(|k| json!({"key": k, "path": k}))
    .collect();
    pod["spec"]["volumes"] = json!([{"name": "connection", "secret": {"secretName": "notebook-connection", "items": items}}]);
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "connection", "mountPath": "/connection", "readOnly": true}]);
    let before = hits.load(Ordering::SeqCst);
    let (phase, log) = run_pod(s, ns, &pod).await;
    assert_eq!(
        phase, "Succeeded",
        "the connection Secret's endpoint from a Pod: {log}"
    );
    assert!(
        hits.load(Ordering::SeqCst) > before,
        "the endpoint from the Secret was reached"
    );

    // Deleted with the PpioInstance: the garbage collector follows the ownerReferences.
    s.kubectl_ok(&["delete", "ppioinstance", "notebook", "-n", ns], None);
    eventually("the exports are garbage-collected", 120, || {
        let gone = |kind: &str, name: &str| {
            !s.kubectl(&["get", kind, name, "-n", ns], None)
                .status
                .success()
        };
        (gone("secret", "notebook-connection")
            && gone("service", "notebook")
            && gone("endpointslice", "notebook"))
        .then_some(())
    })
    .await;
}

async fn uninstall(s: &mut Scene) {
    s.helm(&["uninstall", RELEASE, "--namespace", RELEASE_NS]);
    eventually("the operator pods are gone", 60, || {
        s.operator_pods().is_empty().then_some(())
    })
    .await;
    let out = s.kubectl(&["get", "deployment", RELEASE, "-n", RELEASE_NS], None);
    assert!(!out.status.success(), "the Deployment is gone");
    s.kubectl_ok(&["get", "crd", "ppioinstances.gpus.ppio.com"], None);
    let list = s.json(&["get", "ppioinstances", "-n", WATCHED_NS]);
    let mut names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["trainer-a", "trainer-b", "trainer-c"]);
    assert!(
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| !i["status"]["conditions"].is_null()),
        "their status stays"
    );
}

// ---------------------------------------------------------------------------------------
// Who writes while the operator's pods change.

fn selector(release: &str) -> String {
    format!("app.kubernetes.io/instance={release}")
}

/// A release's operator pods, terminating ones included (they may still write).
async fn pods_of(s: &Scene, ns: &str, release: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(s.client.clone(), ns)
        .list(&ListParams::default().labels(&selector(release)))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// One read of an operator process's /metrics.
#[derive(Clone, Copy, Debug)]
struct Sample {
    leading: bool,
    writes: f64,
}

/// Who writes while the operator's pods change (a rollout, a killed container). Every round
/// reads each operator pod's /metrics (the leader gauge and the status-write counter, all
/// pods at once, terminating ones included), and once a second changes trainer-a's spec so the
/// leader has something to write (a new generation is polled and written at once; the refresh
/// annotation is held back for 10 s). Every round checks: with leader election at most one
/// pod leads; without it at most one operator process answers (the Recreate strategy);
/// between two rounds at most one pod wrote, and with leader election only a pod that led at
/// one of the two.
struct Writers {
    leader_election: bool,
    /// The last read of every pod that answered, by pod name (kept while a pod does not
    /// answer; a counter lower than before is a restarted container, counting from 0).
    last: BTreeMap<String, Sample>,
    rounds: u32,
    /// (round, pod) of every write seen.
    writes: Vec<(u32, String)>,
    bumped: Option<Instant>,
    started: Instant,
}

impl Writers {
    async fn start(s: &Scene, leader_election: bool) -> Writers {
        let mut w = Writers {
            leader_election,
            last: BTreeMap::new(),
            rounds: 0,
            writes: Vec::new(),
            bumped: None,
            started: Instant::now(),
        };
        w.last = w.read(s).await;
        w
    }

    /// Every running operator pod's leader gauge and status writes, read at once.
    async fn read(&self, s: &Scene) -> BTreeMap<String, Sample> {
        let pods = pods_of(s, RELEASE_NS, RELEASE).await;
        let reads = pods.iter().filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let ip: Ipv4Addr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let addr = SocketAddr::from((ip, 8080));
            Some(async move {
                let answer = tokio::time::timeout(Duration::from_millis(500), scrape(addr)).await;
                (name, answer.ok().flatten())
            })
        });
        futures::future::join_all(reads)
            .await
            .into_iter()
            .filter_map(|(name, answer)| match answer {
                Some((200, text)) => Some((
                    name,
                    Sample {
                        leading: metric(&text, "ppio_leader") == 1.0,
                        writes: metric(&text, "ppio_status_writes_total"),
                    },
                )),
                _ => None,
            })
            .collect()
    }

    /// Changes trainer-a's refresh interval (10s <-> 11s): a new generation, which the leader
    /// polls and writes at once. Its generation.
    async fn bump(&mut self, s: &Scene) -> i64 {
        let now = s.api.get("trainer-a").await.expect("trainer-a");
        let interval = match now.spec.refresh_interval.as_deref() {
            Some("10s") => "11s",
            _ => "10s",
        };
        let patch = json!({"spec": {"refreshInterval": interval}});
        let obj = s
            .api
            .patch("trainer-a", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch trainer-a");
        self.bumped = Some(Instant::now());
        obj.metadata.generation.expect("a generation")
    }

    /// One round: the spec change when a second has passed, the read, its checks.
    async fn round(&mut self, s: &Scene) {
        if self
            .bumped
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.bump(s).await;
        }
        let now = self.read(s).await;
        self.rounds += 1;
        let (n, at) = (self.rounds, self.started.elapsed());
        let leaders = now.values().filter(|x| x.leading).count();
        assert!(leaders <= 1, "round {n} at {at:.1?}: two leaders: {now:?}");
        if !self.leader_election {
            assert!(
                now.len() <= 1,
                "round {n} at {at:.1?}: two operator processes without leader election: {now:?}"
            );
        }
        let mut wrote = Vec::new();
        for (pod, x) in &now {
            let before = self.last.get(pod);
            let delta = match before {
                Some(b) if x.writes >= b.writes => x.writes - b.writes,
                _ => x.writes,
            };
            if delta > 0.0 {
                assert!(
                    !self.leader_election || x.leading || before.is_some_and(|b| b.leading),
                    "round {n} at {at:.1?}: {pod} wrote as a standby: before {before:?}, now {x:?}"
                );
                wrote.push(pod.clone());
            }
        }
        assert!(
            wrote.len() <= 1,
            "round {n} at {at:.1?}: {wrote:?} all wrote since the round before: before {:?}, now {now:?}",
            self.last
        );
        self.writes.extend(wrote.into_iter().map(|p| (n, p)));
        self.last.extend(now);
    }

    /// The pods that wrote after round `since`.
    fn writers_since(&self, since: u32) -> BTreeSet<String> {
        self.writes
            .iter()
            .filter(|(r, _)| *r > since)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Rounds until trainer-a's status answers generation `generation` and the write is seen
    /// in the writer's counter; the pods that wrote since then. Panics after `secs` (hang
    /// protection).
    async fn until_written(&mut self, s: &Scene, generation: i64, secs: u64) -> BTreeSet<String> {
        let since = self.rounds;
        let deadline = Deadline::new(
            format!("generation {generation} of trainer-a written"),
            Duration::from_secs(secs),
        );
        loop {
            self.round(s).await;
            let observed = s
                .api
                .get("trainer-a")
                .await
                .ok()
                .and_then(|o| o.status)
                .and_then(|st| st.observed_generation);
            if observed >= Some(generation) && !self.writers_since(since).is_empty() {
                return self.writers_since(since);
            }
            deadline.check(|| format!("observed {observed:?}; {}", self.summary()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The rounds and who wrote, in order, e.g. "52 rounds in 11.2s; writes: a x3, b x5".
    fn summary(&self) -> String {
        let mut runs: Vec<(String, u32)> = Vec::new();
        for (_, p) in &self.writes {
            match runs.last_mut() {
                Some((last, n)) if last == p => *n += 1,
                _ => runs.push((p.clone(), 1)),
            }
        }
        let runs: Vec<String> = runs.iter().map(|(p, n)| format!("{p} x{n}")).collect();
        format!(
            "{} rounds in {:.1?}, never two leaders or two writers; rounds with a write, by pod in order: {}",
            self.rounds,
            self.started.elapsed(),
            if runs.is_empty() {
                "none".to_string()
            } else {
                runs.join(", ")
            }
        )
    }
}

/// Once the release's Deployment has rolled out to `image`: its pods (none terminating, all
/// running `image` and Ready), by (name, IP).
async fn rolled_out(s: &Scene, image: &str) -> Option<Vec<(String, Ipv4Addr)>> {
    let d = Api::<Deployment>::namespaced(s.client.clone(), RELEASE_NS)
        .get(RELEASE)
        .await
        .ok()?;
    let want = d.spec.replicas?;
    let st = d.status.as_ref()?;
    let done = st.observed_generation >= d.metadata.generation
        && st.updated_replicas == Some(want)
        && st.available_replicas == Some(want)
        && st.replicas == Some(want);
    let pods = pods_of(s, RELEASE_NS, RELEASE).await;
    let mut ready: Vec<(String, Ipv4Addr)> = pods
        .iter()
        .filter_map(|p| {
            let spec_image = p.spec.as_ref()?.containers.first()?.image.clone()?;
            let status = p.status.as_ref()?;
            let ready = status.container_statuses.as_ref()?.first()?.ready;
            if p.metadata.deletion_timestamp.is_some() || spec_image != image || !ready {
                return None;
            }
            Some((
                p.metadata.name.clone()?,
                status.pod_ip.as_ref()?.parse().ok()?,
            ))
        })
        .collect();
    ready.sort();
    (done && pods.len() == want as usize && ready.len() == want as usize).then_some(ready)
}

/// The released image under another tag in the registry (a new version, as a user would
/// push it): `crane tag`.
fn tag_image(_s: &Scene, tag: &str) -> String {
    let mut c = tool("crane");
    c.args(["tag", &image(), tag]);
    ok(run(c, None), "crane tag");
    format!("{}/ppio-operator:{tag}", published().registry)
}

/// `helm upgrade --reuse-values --set image.tag=<tag>` while [`Writers`] watches, until the
/// rollout is complete; then a change is written by the one leader (the one pod without
/// leader election), and only by it.
async fn upgrade_to(s: &Scene, tag: &str, leader_election: bool) {
    let image = tag_image(s, tag);
    let d = s.deployment();
    let strategy = d["spec"]["strategy"]["type"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        strategy,
        if leader_election {
            "RollingUpdate"
        } else {
            "Recreate"
        },
        "the chart's strategy with leaderElection.enabled={leader_election}"
    );
    let before: BTreeSet<String> = s
        .operator_pods()
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut w = Writers::start(s, leader_election).await;
    let set = format!("image.tag={tag}");
    let chart = chart_args();
    let mut args = vec!["upgrade", RELEASE];
    args.extend(chart.iter().map(String::as_str));
    args.extend(["--namespace", RELEASE_NS, "--reuse-values", "--set", &set]);
    let mut helm = s
        .helm_command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("helm runs");
    let start = Instant::now();
    let deadline = Deadline::new(format!("the rollout to {image}"), Duration::from_secs(180));
    let mut helm_done = false;
    let pods = loop {
        w.round(s).await;
        if !helm_done && let Some(status) = helm.try_wait().expect("helm") {
            let mut err = String::new();
            if let Some(mut e) = helm.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "helm upgrade --set {set}: {err}");
            helm_done = true;
        }
        if helm_done && let Some(pods) = rolled_out(s, &image).await {
            break pods;
        }
        deadline.check(|| w.summary());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rollout = start.elapsed();
    assert!(
        pods.iter().all(|(p, _)| !before.contains(p)),
        "every pod replaced: before {before:?}, after {pods:?}"
    );
    // Sampling goes on after the rollout until a change made now is written.
    let generation = w.bump(s).await;
    let writers = w.until_written(s, generation, 120).await;
    let leader = if leader_election {
        eventually("a leader", 60, || {
            lease_holder(s).filter(|h| pods.iter().any(|(p, _)| p == h))
        })
        .await
    } else {
        pods[0].0.clone()
    };
    assert_eq!(
        writers,
        BTreeSet::from([leader.clone()]),
        "after the upgrade only {leader} writes"
    );
    if leader_election {
        assert_one_writer(&pods, &leader).await;
    }
    // The new tag names the same image (one digest, two tags): the pods' spec names the new
    // tag (checked above); the runtime reports the image by one of its names.
    let images: Vec<String> = pods
        .iter()
        .map(|(p, _)| {
            s.pod(RELEASE_NS, p)["status"]["containerStatuses"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    eprintln!(
        "helm upgrade to {image} ({strategy}): rolled out in {rollout:.1?} to {:?} (the runtime reports {images:?}); {leader} writes; {}",
        pods.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        w.summary()
    );
}

async fn upgrade_recreate(s: &mut Scene) {
    upgrade_to(s, "upgrade-1", false).await;
}

async fn upgrade_rolling(s: &mut Scene) {
    upgrade_to(s, "upgrade-2", true).await;
}

/// The leader's container is killed (SIGKILL from the host: no shutdown, no Lease release):
/// the pod stays, the kubelet restarts the container, and a replica leads and writes again,
/// never two at once.
async fn kill_leader(s: &mut Scene) {
    let pods = ready_operator_pods(s, 2).await;
    let leader = eventually("a leader", 60, || {
        lease_holder(s).filter(|h| pods.iter().any(|(p, _)| p == h))
    })
    .await;
    let pod = s.pod(RELEASE_NS, &leader);
    let status = &pod["status"]["containerStatuses"][0];
    let restarts = status["restartCount"].as_u64().expect("restartCount");
    let pid = s
        .node
        .container_pid(status["containerID"].as_str().expect("container id"))
        .expect("the leader's pid");
    let mut w = Writers::start(s, true).await;
    let mut kill = Command::new("kill");
    kill.args(["-KILL", &pid.to_string()]);
    let killed = Instant::now();
    ok(run(kill, None), "kill -KILL");
    let generation = w.bump(s).await;
    // A replica writes again, once the killed leader's lease expired (not released: the
    // process was killed) or its container restarted; never two at once (each round checks).
    let writers = w.until_written(s, generation, 180).await;
    let took = killed.elapsed();
    let writer = writers.iter().next().cloned().unwrap_or_default();
    assert_eq!(writers.len(), 1, "one writer: {writers:?}");
    let after = eventually("the killed container restarted and Ready", 60, || {
        let p = s.pod(RELEASE_NS, &leader);
        let st = &p["status"]["containerStatuses"][0];
        (st["restartCount"].as_u64() == Some(restarts + 1) && st["ready"] == true).then_some(p)
    })
    .await;
    assert_eq!(
        after["metadata"]["uid"], pod["metadata"]["uid"],
        "the same pod"
    );
    assert_eq!(
        after["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "killed by SIGKILL: {}",
        after["status"]["containerStatuses"][0]
    );
    let now = ready_operator_pods(s, 2).await;
    assert_eq!(now, pods, "the same two pods, none replaced");
    let holder = lease_holder(s).expect("a leader");
    assert_eq!(holder, writer, "the writer holds the Lease");
    assert_one_writer(&now, &holder).await;
    eprintln!(
        "{leader}'s container killed (pid {pid}, SIGKILL): {writer} ({}) wrote a change made after the kill {took:.1?} later; {leader} restarted in the same pod (restartCount {}); {}",
        if writer == leader {
            "the restarted container"
        } else {
            "the standby"
        },
        restarts + 1,
        w.summary()
    );
}

// ---------------------------------------------------------------------------------------
// A namespaced install.

const TEAM_RELEASE: &str = "ppio-team";
const TEAM_RELEASE_NS: &str = "team-ops";
const TEAM_NS: &str = "team";

/// `helm install` with `watchNamespace`: no cluster-wide RBAC, and the operator works in that
/// namespace (the default key, a Secret of the namespace, Events, its leader Lease) and
/// nowhere else.
async fn namespaced(s: &mut Scene) {
    s.namespace(TEAM_NS).await;
    // Created before the install: an operator that could see every namespace would observe
    // trainer-d together with the first two.
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "team-key", "namespace": TEAM_NS,
                     "labels": {"gpus.ppio.com/credentials": "true"}},
        "stringData": {"apiKey": KEY}
    });
    s.kubectl_ok(&["apply", "-f", "-"], Some(&secret.to_string()));
    let mut with_secret: Value =
        serde_json::from_str(&instance(TEAM_NS, "team-b", "b7e2c91d04")).expect("json");
    with_secret["spec"]["credentialsSecretRef"] = json!({"name": "team-key"});
    let mut missing: Value =
        serde_json::from_str(&instance(TEAM_NS, "team-c", "c0ffee1234")).expect("json");
    missing["spec"]["credentialsSecretRef"] = json!({"name": "no-such-secret"});
    for manifest in [
        instance(TEAM_NS, "team-a", "ca338f12f3"),
        with_secret.to_string(),
        missing.to_string(),
        instance(WATCHED_NS, "trainer-d", "ca338f12f3"),
    ] {
        s.kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    }
    helm_install(
        s,
        TEAM_RELEASE,
        TEAM_RELEASE_NS,
        &[
            ("watchNamespace", TEAM_NS),
            // The CRD belongs to the first release (and stays after its uninstall).
            ("crds.install", "false"),
            ("leaderElection.enabled", "true"),
            ("leaderElection.leaseDuration", "10s"),
            // /metrics open (behind the NetworkPolicy a team would add): nothing cluster-wide.
            ("metrics.auth", "none"),
        ],
    );
    let sel = selector(TEAM_RELEASE);
    let cluster = s.json(&["get", "clusterroles,clusterrolebindings", "-l", &sel]);
    assert_eq!(
        cluster["items"],
        json!([]),
        "no cluster-wide RBAC of the release"
    );
    let roles = s.json(&["get", "roles,rolebindings", "-A", "-l", &sel]);
    let mut roles: Vec<String> = roles["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            format!(
                "{} {}/{}",
                r["kind"].as_str().unwrap_or(""),
                r["metadata"]["namespace"].as_str().unwrap_or(""),
                r["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    roles.sort();
    let name = format!("{TEAM_RELEASE}-ppio-operator");
    let mut want = vec![
        format!("Role {TEAM_NS}/{name}"),
        format!("Role {TEAM_RELEASE_NS}/{name}-leader-election"),
        format!("RoleBinding {TEAM_NS}/{name}"),
        format!("RoleBinding {TEAM_RELEASE_NS}/{name}-leader-election"),
    ];
    want.sort();
    assert_eq!(roles, want);
    let sa = format!("system:serviceaccount:{TEAM_RELEASE_NS}:{name}");
    for (ns, allowed) in [(TEAM_NS, "yes"), (WATCHED_NS, "no")] {
        let out = s.kubectl(
            &[
                "auth",
                "can-i",
                "list",
                "ppioinstances.gpus.ppio.com",
                "--as",
                &sa,
                "-n",
                ns,
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            allowed,
            "{sa} lists PpioInstances in {ns}"
        );
    }
    let pod = eventually("the namespaced operator is Ready", 120, || {
        let list = s.json(&["get", "pods", "-n", TEAM_RELEASE_NS, "-l", &sel]);
        list["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|p| has_condition(p, "Ready"))
                .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        })
    })
    .await;
    let team: Api<PpioInstance> = Api::namespaced(s.client.clone(), TEAM_NS);
    for name in ["team-a", "team-b"] {
        wait_for(&team, name, "observed", |o| {
            has(o, "Synced", "True", "Observed")
        })
        .await;
    }
    wait_for(&team, "team-c", "CredentialsMissing", |o| {
        has(o, "Synced", "False", "CredentialsMissing")
    })
    .await;
    let events = eventually("a CredentialsMissing Event of team-c", 60, || {
        let e = events_of(s, TEAM_NS, "team-c");
        e.iter()
            .any(|e| e["reason"] == "CredentialsMissing")
            .then_some(e)
    })
    .await;
    assert!(
        events
            .iter()
            .all(|e| e["reportingInstance"] == pod.as_str()),
        "reported by {pod}: {events:?}"
    );
    let holder = s.kubectl_ok(
        &[
            "get",
            "lease",
            &name,
            "-n",
            TEAM_RELEASE_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(holder.trim(), pod, "its leader Lease");
    // Outside the watched namespace: no status written (the CRD's default status only), no
    // field of the operator's field manager, no Event.
    let other = s.json(&[
        "get",
        "ppioinstance",
        "trainer-d",
        "-n",
        WATCHED_NS,
        "--show-managed-fields",
    ]);
    assert_eq!(
        other["status"],
        json!({"observedGeneration": 0}),
        "a PpioInstance outside the watched namespace is not touched: {other}"
    );
    let managers: Vec<&str> = other["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|f| f["manager"].as_str())
        .collect();
    assert!(!managers.contains(&"ppio-operator"), "{managers:?}");
    assert_eq!(events_of(s, WATCHED_NS, "trainer-d"), Vec::<Value>::new());
    let log = s.node.container_log(TEAM_RELEASE_NS, &pod, "operator");
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "no RBAC error in the namespaced operator's log:\n{log}"
    );
    eprintln!(
        "watchNamespace={TEAM_NS}: only {roles:?}; {pod} observed team-a (default key) and team-b (a Secret of {TEAM_NS}), reported team-c's missing Secret in an Event, holds its Lease, and left {WATCHED_NS}/trainer-d without status"
    );
}
