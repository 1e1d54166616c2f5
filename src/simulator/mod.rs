//! A local PPIO v2 API for tests, demos and offline GitOps checks.
//!
//! It serves, with bearer key checking:
//!
//! - `GET /gpus/v2/instances/{id}` and the paged `GET /gpus/v2/instances`, from a fixtures
//!   file (or built-in samples);
//! - the read-only money calls: the products catalogue
//!   `GET /gpus/v2/products?type=gpu&category=instance`, pay-as-you-go bills
//!   `GET /openapi/v1/billing/bill/list` (explicit rows, or generated from the running
//!   postpaid and spot instances), prepaid bills `GET /openapi/v1/billing/bill/monthly/list`
//!   and the balance `GET /openapi/v1/billing/balance/detail`;
//!
//! and a small control API under `/_sim/` to add, change and remove instances, set the
//! catalogue, the bills and the balance, rotate the accepted keys, inject faults per instance
//! or per call (`_list`, `_products`, `_bills`, `_monthly_bills`, `_balance`) and read
//! request counts. The control API has no authentication: bind the simulator to a loopback
//! address.
//!
//! This module holds the [`Simulator`] and its shared state, the routes and the
//! `ppio-operator simulate` command; the vendor API, the money calls, the control API,
//! faults and fixtures live in submodules.

mod api;
mod control;
mod faults;
mod fixtures;
mod money;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::lock;

pub use api::{LIST_FAULT, lean_item};
pub use faults::{BodyFault, Endless, Fault};
pub use fixtures::{FixtureError, SAMPLES, merge_patch, parse_fixtures};
pub use money::{
    BALANCE_FAULT, BILLS_FAULT, DEFAULT_PRODUCT_ID, MONTHLY_BILLS_FAULT, PRODUCTS_FAULT,
    default_balance, default_products,
};

/// The largest request body the simulator reads (control API uploads such as thousands of
/// bill rows).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Options of `ppio-operator simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, env = "PPIO_SIMULATOR_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// A JSON file with the instances to serve: an array of instance objects, or
    /// {"instances": [...]} (default: three built-in samples).
    #[arg(long, env = "PPIO_SIMULATOR_FIXTURES")]
    pub fixtures: Option<PathBuf>,
    /// An API key the simulator accepts as `Authorization: Bearer <key>` (repeatable).
    #[arg(
        long = "api-key",
        env = "PPIO_SIMULATOR_API_KEYS",
        value_delimiter = ',',
        required = true
    )]
    pub api_keys: Vec<String>,
    /// The HTTP status for an unknown instance: 404, or 400 with reason RESOURCE_NOT_FOUND.
    #[arg(long, default_value_t = 404, value_parser = parse_not_found_status)]
    pub not_found_status: u16,
}

fn parse_not_found_status(s: &str) -> Result<u16, String> {
    match s {
        "404" => Ok(404),
        "400" => Ok(400),
        _ => Err(format!("'{s}' must be 404 or 400")),
    }
}

/// Request counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// GET requests per instance id.
    pub instances: BTreeMap<String, u64>,
    /// LIST requests.
    pub list: u64,
    /// Requests per presented key: `key0`, `key1`... by position in the accepted keys, or
    /// `invalid`.
    pub keys: BTreeMap<String, u64>,
    /// Requests per money call: `products`, `bills`, `monthly_bills`, `balance`.
    #[serde(default)]
    pub calls: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct SimState {
    instances: BTreeMap<String, Value>,
    faults: BTreeMap<String, Fault>,
    keys: Vec<String>,
    counts: Counts,
    not_found_status: u16,
    request_seq: u64,
    /// The products catalogue.
    products: Vec<Value>,
    /// Explicit pay-as-you-go bill rows; `None`: generated from the instances.
    bills: Option<Vec<Value>>,
    /// Prepaid bill rows.
    monthly_bills: Vec<Value>,
    /// The balance detail; `None`: not served (404).
    balance: Option<Value>,
}

/// A simulator's state, shared by its server and by in-process tests.
#[derive(Debug, Clone)]
pub struct Simulator {
    state: Arc<Mutex<SimState>>,
}

impl Simulator {
    /// A simulator serving `instances` to clients presenting one of `keys`.
    pub fn new(instances: Vec<Value>, keys: Vec<String>) -> Simulator {
        let sim = Simulator {
            state: Arc::new(Mutex::new(SimState {
                not_found_status: 404,
                products: default_products(),
                balance: Some(default_balance()),
                ..Default::default()
            })),
        };
        for i in instances {
            if let Some(id) = i.get("id").and_then(Value::as_str).map(str::to_string) {
                sim.put_instance(&id, i);
            }
        }
        sim.set_keys(keys);
        sim
    }

    /// Adds or replaces an instance (its `id` is set to `id`).
    pub fn put_instance(&self, id: &str, mut instance: Value) {
        if let Some(o) = instance.as_object_mut() {
            o.insert("id".into(), Value::String(id.to_string()));
        }
        lock(&self.state).instances.insert(id.to_string(), instance);
    }

    /// Applies a JSON merge patch (RFC 7396) to an instance; false if it does not exist.
    pub fn patch_instance(&self, id: &str, patch: &Value) -> bool {
        let mut st = lock(&self.state);
        match st.instances.get_mut(id) {
            Some(target) => {
                merge_patch(target, patch);
                true
            }
            None => false,
        }
    }

    /// Removes an instance; false if it did not exist.
    pub fn remove_instance(&self, id: &str) -> bool {
        lock(&self.state).instances.remove(id).is_some()
    }

    /// Sets the fault for an instance (`*`: every instance).
    pub fn set_fault(&self, id: &str, fault: Fault) {
        lock(&self.state).faults.insert(id.to_string(), fault);
    }

    /// Clears the fault of an instance.
    pub fn clear_fault(&self, id: &str) {
        lock(&self.state).faults.remove(id);
    }

    /// Replaces the accepted keys.
    pub fn set_keys(&self, keys: Vec<String>) {
        lock(&self.state).keys = keys;
    }

    /// How unknown instances are answered: 404, or 400 with RESOURCE_NOT_FOUND.
    pub fn set_not_found_status(&self, status: u16) {
        lock(&self.state).not_found_status = status;
    }

    /// The request counters.
    pub fn counts(&self) -> Counts {
        lock(&self.state).counts.clone()
    }

    /// GET requests for one instance so far.
    pub fn requests_for(&self, id: &str) -> u64 {
        lock(&self.state)
            .counts
            .instances
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Resets the counters.
    pub fn reset_counts(&self) {
        lock(&self.state).counts = Counts::default();
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/gpus/v2/instances", get(api::list_instances))
            .route("/gpus/v2/instances/{id}", get(api::get_instance))
            .route("/gpus/v2/products", get(money::products))
            .route("/openapi/v1/billing/bill/list", get(money::bills))
            .route(
                "/openapi/v1/billing/bill/monthly/list",
                get(money::monthly_bills),
            )
            .route("/openapi/v1/billing/balance/detail", get(money::balance))
            .route("/_sim/instances", get(control::instances_list))
            .route(
                "/_sim/instances/{id}",
                get(control::instance_get)
                    .put(control::instance_put)
                    .patch(control::instance_patch)
                    .delete(control::instance_delete),
            )
            .route(
                "/_sim/faults/{id}",
                put(control::fault_put).delete(control::fault_delete),
            )
            .route(
                "/_sim/requests",
                get(control::requests_get).delete(control::requests_delete),
            )
            .route("/_sim/keys", put(control::keys_put))
            .route(
                "/_sim/products",
                get(control::products_get).put(control::products_put),
            )
            .route(
                "/_sim/bills",
                put(control::bills_put).delete(control::bills_delete),
            )
            .route(
                "/_sim/monthly-bills",
                put(control::monthly_bills_put).delete(control::monthly_bills_delete),
            )
            .route(
                "/_sim/balance",
                put(control::balance_put).delete(control::balance_delete),
            )
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// Serves on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Binds `addr` and serves in a background task; returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(self.clone().serve(listener));
        Ok(bound)
    }
}

/// The checked configuration of `simulate`.
#[derive(Debug)]
pub struct SimulatorConfig {
    pub addr: SocketAddr,
    pub instances: Vec<Value>,
    pub keys: Vec<String>,
    pub not_found_status: u16,
}

impl SimulateArgs {
    /// Reads the fixtures and checks the keys; starts nothing.
    pub fn config(self) -> Result<SimulatorConfig, crate::args::ConfigError> {
        let instances = match &self.fixtures {
            None => Simulator::samples(),
            Some(path) => fixtures::read_fixtures(path).map_err(|e| crate::args::ConfigError {
                flag: "--fixtures",
                message: e.to_string(),
            })?,
        };
        let keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            return Err(crate::args::ConfigError {
                flag: "--api-key",
                message: "give at least one non-empty key".into(),
            });
        }
        Ok(SimulatorConfig {
            addr: self.addr,
            instances,
            keys,
            not_found_status: self.not_found_status,
        })
    }
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("--addr: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// `ppio-operator simulate`: serves until SIGTERM or SIGINT.
pub async fn run(config: SimulatorConfig) -> Result<(), SimulatorError> {
    crate::telemetry::init(
        crate::telemetry::LogFormat::Text,
        crate::telemetry::LogLevel::Info,
    );
    let sim = Simulator::new(config.instances, config.keys);
    sim.set_not_found_status(config.not_found_status);
    let listener =
        TcpListener::bind(config.addr)
            .await
            .map_err(|source| SimulatorError::Listen {
                addr: config.addr,
                source,
            })?;
    let n = lock(&sim.state).instances.len();
    let bound = listener.local_addr().unwrap_or(config.addr);
    tracing::info!(addr = %bound, instances = n, "PPIO simulator listening");
    tokio::select! {
        r = sim.serve(listener) => r.map_err(SimulatorError::Serve),
        _ = crate::signal::shutdown_signal() => Ok(()),
    }
}
