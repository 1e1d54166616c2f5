//! ppio-operator: mirrors PPIO GPU instances into `PpioInstance` resources.
//!
//! The product, module by module:
//! - [`cli`]: the command line; each subcommand's arguments become a checked configuration,
//!   which is then run.
//! - [`duration`]: the one duration grammar of flags and `spec.refreshInterval`.
//! - [`crd`]: the API types; the CRD is generated from them.
//! - [`vocabulary`]: every word users match on (conditions, reasons, Events, PPIO states).
//! - [`outcome`]: the one classification of a poll's outcome and the policies it drives.
//! - [`ppio`]: the vendor client: the trait, the HTTP implementation, the wire types.
//! - [`status`]: the whole status as a pure function of (spec, observation, previous status).
//! - [`controller`]: the reconcile loop: credentials, request budget, poll, write, Events.
//! - [`operator`]: `run`: CRD check, HTTP servers, leader election, the controller.
//! - [`leader`]: leader election through a Lease.
//! - [`server`]: `/metrics`, `/livez`, `/readyz`.
//! - [`metrics`]: Prometheus metrics by subsystem.
//! - [`telemetry`]: logging, as text or JSON.
//! - [`signal`]: SIGTERM and SIGINT.
//! - [`simulator`]: `simulate`, a local PPIO API for demos and offline tests.
//! - [`import`]: `import`, PpioInstance manifests for every instance of an account.
//! - [`check`]: `check`, what the chart's `helm test` runs.
//!
//! Test and demo tooling lives in the `ppio-testenv` crate (`crates/testenv`), never here.
#![forbid(unsafe_code)]

pub mod args;
pub mod check;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod expect;
pub mod export;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod money;
pub mod operator;
pub mod outcome;
pub mod ppio;
pub mod server;
pub mod signal;
pub mod simulator;
pub mod status;
pub mod telemetry;
pub mod vocabulary;

/// Locks a mutex, recovering the data of a poisoned one: a panic elsewhere must not stop the
/// operator from reconciling.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
