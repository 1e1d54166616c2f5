//! The tooling around ppio-operator that is not the product: what the tests and the demo
//! run, never shipped in the operator's binary or image.
//!
//! - [`controlplane`]: a throw-away etcd + kube-apiserver on 127.0.0.1 (like envtest), and
//!   child processes that die with the test run.
//! - [`cluster`]: one shared control plane per test binary, kubectl, namespaces, Secrets, the
//!   simulator on a runtime of its own, and waiting on PpioInstances.
//! - [`mock`]: a mocked Kubernetes API (tower-test) that checks every status write's field
//!   manager and `force`, and a reconcile harness around it.
//! - [`demo`]: the local demo (`ppio-demo`, run by `tools/demo.sh`).
//! - [`node`]: a real single-node Kubernetes (kubelet, containerd, kube-proxy, CNI) on this
//!   machine, for end-to-end tests of the image and the Helm chart; needs root.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod controlplane;
pub mod demo;
pub mod mock;
pub mod node;
pub mod registry;

pub use controlplane::{
    ApiServerOptions, ControlPlane, EnvError, Guarded, client_for, free_port, install_crds,
};

use std::path::PathBuf;

/// Where the pinned upstream programs are (kube-apiserver, etcd, kubectl, helm):
/// `$PPIO_TOOLS_BIN`, else `$XDG_CACHE_HOME/ppio-operator/bin`, else
/// `~/.cache/ppio-operator/bin` (see `tools/build.sh`).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PPIO_TOOLS_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("ppio-operator").join("bin")
}

/// `PPIO_TEST_DEADLINE_SCALE` (a whole number, default 1): multiplies every deadline of the
/// tests ([`within`]) and of their waits ([`cluster::Deadline`]), for slow machines.
pub fn deadline_scale() -> u32 {
    std::env::var("PPIO_TEST_DEADLINE_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

/// Runs a test's body, and panics naming the test when it has not finished within `deadline`
/// of real time (times `PPIO_TEST_DEADLINE_SCALE`, a whole number, default 1). The clock is a
/// thread of its own, not tokio's timer, so a test on tokio's paused clock is held to real time
/// too. What `#[ppio_test_macros::test]` wraps every test body in.
pub async fn within<F: std::future::Future>(
    deadline: std::time::Duration,
    name: &str,
    body: F,
) -> F::Output {
    let deadline = deadline * deadline_scale();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        // Woken early when the test ends (the sender is dropped).
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(deadline) {
            let _ = tx.send(());
        }
    });
    let body = std::pin::pin!(body);
    let out = tokio::select! {
        biased;
        out = body => out,
        Ok(()) = rx => panic!("{name}: still running after its deadline of {deadline:?} (real time)"),
    };
    drop(done_tx);
    out
}
