//! The `/_sim/...` control API: list, read, add, patch and remove instances, set the
//! products catalogue, the bills and the balance, set and clear faults, read and reset the
//! request counters, rotate the accepted keys. It has no authentication.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::{Counts, Fault, Simulator};
use crate::lock;

/// `GET /_sim/instances`: the instance ids.
pub(super) async fn instances_list(State(sim): State<Simulator>) -> Json<Vec<String>> {
    Json(lock(&sim.state).instances.keys().cloned().collect())
}

/// `GET /_sim/instances/{id}`.
pub(super) async fn instance_get(State(sim): State<Simulator>, Path(id): Path<String>) -> Response {
    match lock(&sim.state).instances.get(&id) {
        Some(i) => Json(i.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `PUT /_sim/instances/{id}`: adds or replaces an instance (a JSON object).
pub(super) async fn instance_put(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    if !body.is_object() {
        return StatusCode::BAD_REQUEST;
    }
    sim.put_instance(&id, body);
    StatusCode::NO_CONTENT
}

/// `PATCH /_sim/instances/{id}`: a JSON merge patch.
pub(super) async fn instance_patch(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    if sim.patch_instance(&id, &body) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `DELETE /_sim/instances/{id}`.
pub(super) async fn instance_delete(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
) -> StatusCode {
    if sim.remove_instance(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `PUT /_sim/faults/{id}` (`*`: every instance).
pub(super) async fn fault_put(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(fault): Json<Fault>,
) -> StatusCode {
    sim.set_fault(&id, fault);
    StatusCode::NO_CONTENT
}

/// `DELETE /_sim/faults/{id}`.
pub(super) async fn fault_delete(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
) -> StatusCode {
    sim.clear_fault(&id);
    StatusCode::NO_CONTENT
}

/// `GET /_sim/requests`: the request counters.
pub(super) async fn requests_get(State(sim): State<Simulator>) -> Json<Counts> {
    Json(sim.counts())
}

/// `DELETE /_sim/requests`: resets the counters.
pub(super) async fn requests_delete(State(sim): State<Simulator>) -> StatusCode {
    sim.reset_counts();
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/keys`: replaces the accepted keys.
pub(super) async fn keys_put(
    State(sim): State<Simulator>,
    Json(keys): Json<Vec<String>>,
) -> StatusCode {
    sim.set_keys(keys);
    StatusCode::NO_CONTENT
}

/// `GET /_sim/products`: the products catalogue.
pub(super) async fn products_get(State(sim): State<Simulator>) -> Json<Vec<Value>> {
    Json(sim.products())
}

/// `PUT /_sim/products`: replaces the catalogue (a JSON array of product objects).
pub(super) async fn products_put(
    State(sim): State<Simulator>,
    Json(products): Json<Vec<Value>>,
) -> StatusCode {
    if !products.iter().all(Value::is_object) {
        return StatusCode::BAD_REQUEST;
    }
    sim.set_products(products);
    StatusCode::NO_CONTENT
}

/// The body of `PUT /_sim/bills` and `PUT /_sim/monthly-bills`: `{"bills": [...]}`.
#[derive(Debug, Deserialize)]
pub(super) struct BillsBody {
    bills: Vec<Value>,
}

/// `PUT /_sim/bills`: serves exactly these pay-as-you-go rows from now on.
pub(super) async fn bills_put(
    State(sim): State<Simulator>,
    Json(body): Json<BillsBody>,
) -> StatusCode {
    if !body.bills.iter().all(Value::is_object) {
        return StatusCode::BAD_REQUEST;
    }
    sim.set_bills(Some(body.bills));
    StatusCode::NO_CONTENT
}

/// `DELETE /_sim/bills`: pay-as-you-go rows are generated from the instances again.
pub(super) async fn bills_delete(State(sim): State<Simulator>) -> StatusCode {
    sim.set_bills(None);
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/monthly-bills`: replaces the prepaid rows.
pub(super) async fn monthly_bills_put(
    State(sim): State<Simulator>,
    Json(body): Json<BillsBody>,
) -> StatusCode {
    if !body.bills.iter().all(Value::is_object) {
        return StatusCode::BAD_REQUEST;
    }
    sim.set_monthly_bills(body.bills);
    StatusCode::NO_CONTENT
}

/// `DELETE /_sim/monthly-bills`: no prepaid rows.
pub(super) async fn monthly_bills_delete(State(sim): State<Simulator>) -> StatusCode {
    sim.set_monthly_bills(Vec::new());
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/balance`: the balance detail (a JSON object), served as given.
pub(super) async fn balance_put(
    State(sim): State<Simulator>,
    Json(balance): Json<Value>,
) -> StatusCode {
    if !balance.is_object() {
        return StatusCode::BAD_REQUEST;
    }
    sim.set_balance(Some(balance));
    StatusCode::NO_CONTENT
}

/// `DELETE /_sim/balance`: the balance call answers 404 (not served here).
pub(super) async fn balance_delete(State(sim): State<Simulator>) -> StatusCode {
    sim.set_balance(None);
    StatusCode::NO_CONTENT
}
