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

pub use controlplane::{
    ApiServerOptions, ControlPlane, EnvError, Guarded, client_for, free_port, install_crds,
};

use std::path::PathBuf;

/// Where the pinned upstream programs are (kube-apiserver, etcd, kubectl, helm):
/// `$PPIO_TOOLS_BIN`, else the repository's `.tools/bin` (see `tools/build.sh`).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("PPIO_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.tools/bin")))
}
