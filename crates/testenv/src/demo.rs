//! The demo (`ppio-demo`, run by `tools/demo.sh`): a local control plane, the PPIO simulator with sample instances and
//! the operator, all on 127.0.0.1, until Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::ListParams;

use ppio_operator::controller::Settings;
use ppio_operator::crd::PpioInstance;
use ppio_operator::operator::{RunConfig, run_with};
use ppio_operator::ppio::{ApiKey, HttpClient, HttpClientConfig};
use ppio_operator::signal::shutdown_signal;
use ppio_operator::simulator::Simulator;

use crate::{ControlPlane, free_port};

/// The sample manifests the demo applies.
pub const DEMO_MANIFESTS: &str = include_str!("../../../examples/demo.yaml");
/// The API key of the demo's simulator.
pub const DEMO_KEY: &str = "demo-key";

/// The demo: a throw-away control plane (etcd + kube-apiserver), the PPIO simulator with
/// sample instances and the operator, all on 127.0.0.1, until Ctrl-C.
#[derive(Debug, clap::Parser)]
#[command(name = "ppio-demo", version, about)]
pub struct DemoArgs {
    /// Where kube-apiserver, etcd and kubectl are (built by tools/build.sh).
    #[arg(long, env = "PPIO_TOOLS_BIN", default_value_os_t = crate::tools_dir())]
    pub tools_dir: PathBuf,
    /// Where to keep the control plane's state and the kubeconfig (removed on exit): a
    /// folder of this user's only (mode 0700, refused otherwise). Default:
    /// `$TMPDIR/ppio-operator-demo-<uid>` (`/tmp/ppio-operator-demo-<uid>`).
    #[arg(long, default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,
    /// Stop after the sample status is printed instead of waiting for Ctrl-C.
    #[arg(long)]
    pub once: bool,
}

pub async fn main(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Marks a state folder as the demo's own, so only such a folder is ever emptied.
const STATE_MARKER: &str = ".ppio-operator-demo";

/// This process's effective user id: from the `Uid:` line of `/proc/self/status`, else the
/// owner of a file it creates (no libc).
pub fn current_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                // real, effective, saved, filesystem: files are owned by the effective one.
                .and_then(|ids| ids.split_whitespace().nth(1))
                .and_then(|uid| uid.parse().ok())
        });
    match from_proc {
        Some(uid) => Ok(uid),
        None => Ok(tempfile::tempfile()?.metadata()?.uid()),
    }
}

/// The default state folder, one per user: `ppio-operator-demo-<uid>` in the temporary folder.
pub fn default_state_dir() -> PathBuf {
    let user = current_uid().map_or_else(|_| "unknown".to_string(), |uid| uid.to_string());
    std::env::temp_dir().join(format!("ppio-operator-demo-{user}"))
}

/// Fails unless `dir` is a real folder (not a symbolic link) owned by `uid`.
fn check_owned_dir(dir: &std::path::Path, uid: u32) -> Result<std::fs::Metadata, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect --state-dir {}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(format!(
            "--state-dir {} is not a folder (or is a symbolic link); choose another folder",
            dir.display()
        ));
    }
    if meta.uid() != uid {
        return Err(format!(
            "--state-dir {} belongs to another user (uid {}, you are {uid}); choose another folder",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(meta)
}

/// Fails unless `dir` is a folder owned by `uid` (see [`check_owned_dir`]) that no other
/// user may read, write or enter (no group or other permission bits).
fn check_private_dir(dir: &std::path::Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mode = check_owned_dir(dir, uid)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "--state-dir {} is open to other users (mode {mode:03o}); it will hold the cluster's admin kubeconfig: chmod 700 it or choose another folder",
            dir.display()
        ));
    }
    Ok(())
}

/// Creates `dir` as a new folder of this user's only (0700); a folder that appears there in
/// the meantime is not taken over.
fn create_private_dir(dir: &std::path::Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
    check_private_dir(dir, uid)
}

/// Readies the state folder: creates it for this user only (0700), or empties the folder of
/// an earlier demo. Refused, never changed: a folder (or link) not owned by the current user,
/// one that other users may access (another user could have made it to read the admin
/// kubeconfig, or swap files in it), and one that is not empty and was not made by the demo.
pub fn prepare_state_dir(dir: &std::path::Path) -> Result<(), String> {
    let uid = current_uid().map_err(|e| format!("cannot tell the current user: {e}"))?;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(dir, uid)?,
        Err(e) => return Err(format!("cannot inspect --state-dir {}: {e}", dir.display())),
        Ok(_) => {
            check_owned_dir(dir, uid)?;
            let not_empty = std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if not_empty && !dir.join(STATE_MARKER).exists() {
                return Err(format!(
                    "--state-dir {} is not empty and was not made by the demo; choose another folder",
                    dir.display()
                ));
            }
            check_private_dir(dir, uid)?;
            if not_empty {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
                create_private_dir(dir, uid)?;
            }
        }
    }
    crate::controlplane::write_private(&dir.join(STATE_MARKER), b"")
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))
}

async fn demo(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    prepare_state_dir(&args.state_dir)?;
    let crds = args.state_dir.join("crds");
    std::fs::create_dir_all(&crds)?;
    std::fs::write(
        crds.join("ppioinstances.gpus.ppio.com.yaml"),
        ppio_operator::crd::crd_yaml()?,
    )?;

    step("starting etcd and kube-apiserver on 127.0.0.1");
    let mut cp = ControlPlane::start(&args.tools_dir, Some(&args.state_dir), Some(&crds)).await?;
    let client = cp.client().await?;
    // Logging starts once the control plane answers, so start-up polling stays quiet.
    ppio_operator::telemetry::init(
        ppio_operator::telemetry::LogFormat::Text,
        ppio_operator::telemetry::LogLevel::Info,
    );

    step("starting the PPIO simulator with 3 sample instances");
    let sim = Simulator::new(Simulator::samples(), vec![DEMO_KEY.to_string()]);
    let sim_addr = sim
        .spawn(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await?;

    step("starting the operator");
    let http_port = free_port()?;
    let ppio = HttpClient::new(&HttpClientConfig {
        base_url: format!("http://{sim_addr}"),
        ..Default::default()
    })?;
    let config = RunConfig {
        namespace: None,
        leader: None,
        identity: "demo".into(),
        settings: Settings {
            default_refresh: Duration::from_secs(30),
            default_key: ApiKey::new(DEMO_KEY),
            default_key_namespaces: None,
            credentials_namespaces: None,
            budget: ppio_operator::controller::Budget::default(),
            observe: ppio_operator::controller::Observe::default(),
            // The simulator plays PPIO's own host, which bills in CNY.
            money: ppio_operator::controller::MoneySettings {
                currency: Some("CNY".into()),
                ..Default::default()
            },
            // The demo's cluster is its own: every export may be tried.
            exports: ppio_operator::export::ExportSettings {
                connection_secrets: true,
                services: true,
                deny: Vec::new(),
            },
        },
        ppio: Arc::new(ppio),
        concurrency: 8,
        http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
        health_addr: None,
        metrics_auth: ppio_operator::server::MetricsAuth::None,
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let operator = tokio::spawn(run_with(client.clone(), config, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    step("applying examples/demo.yaml with kubectl");
    let manifests = args.state_dir.join("demo.yaml");
    std::fs::write(&manifests, DEMO_MANIFESTS)?;
    let out = cp
        .kubectl()
        .args(["apply", "-f"])
        .arg(&manifests)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let api: Api<PpioInstance> = Api::namespaced(client, "demo");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let list = api.list(&ListParams::default()).await?;
        if !list.items.is_empty()
            && list
                .items
                .iter()
                .all(|i| i.status.as_ref().is_some_and(|s| !s.conditions.is_empty()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = cp
        .kubectl()
        .args(["get", "ppioinstances", "-n", "demo", "-o", "wide"])
        .output()?;
    println!();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));

    let kubectl = cp.tools.join("kubectl");
    println!(
        "
The demo runs until Ctrl-C. In another terminal:
  export KUBECONFIG={kc}
  alias kubectl={kubectl}
  kubectl get ppioinstances -A -o wide --watch
  kubectl describe ppioinstance -n demo trainer-b
  curl -s localhost:{http_port}/metrics | grep ppio_instance_state
Change an instance in the simulator and watch the status follow:
  curl -X PATCH -H 'content-type: application/json' -d '{{\"status\":{{\"status\":\"running\"}}}}' http://{sim_addr}/_sim/instances/b7e2c91d04
  curl -X PUT -H 'content-type: application/json' -d '{{\"status\":503}}' http://{sim_addr}/_sim/faults/ca338f12f3
",
        kc = cp.kubeconfig.display(),
        kubectl = kubectl.display(),
    );
    if !args.once {
        shutdown_signal().await;
    }
    step("stopping");
    let _ = stop_tx.send(true);
    let _ = operator.await;
    cp.stop();
    let _ = std::fs::remove_dir_all(&args.state_dir);
    Ok(())
}
