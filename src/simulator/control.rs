//! The `/_sim/...` control API: list, read, add, patch and remove instances, set and clear
//! faults, read and reset the request counters, rotate the accepted keys. It has no
//! authentication.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
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
