//! ppio-operator: mirrors PPIO GPU instances into `PpioInstance` resources.
//!
//! Layout: [`crd`] (the API types), [`ppio`] (the vendor client), [`status`] (the pure
//! observation-to-status function), [`controller`] (the loop and its timing policies),
//! [`operator`] (start-up), [`simulator`] (a local PPIO API for tests and demos),
//! [`cli`] and [`telemetry`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod interval;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod ppio;
pub mod server;
pub mod simulator;
pub mod status;
pub mod telemetry;
pub mod testenv;

/// Locks a mutex, recovering the data of a poisoned one: a panic elsewhere must not stop the
/// operator from reconciling.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
