//! The words the operator writes, in one place: condition types, statuses and reasons, Event
//! reasons and actions, and the PPIO state names it treats specially. Users, dashboards and
//! GitOps tools match on these strings (see the contract in the README): change none.

/// Condition types.
pub mod condition {
    /// Whether the last poll of the PPIO API succeeded.
    pub const SYNCED: &str = "Synced";
    /// Whether the instance is running.
    pub const READY: &str = "Ready";
    /// kstatus: the operator is still working towards a current observation.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: nothing improves without a person.
    pub const STALLED: &str = "Stalled";
    /// A spot reclaim is announced, or a prepaid term without auto-renew ends soon.
    pub const EXPIRING: &str = "Expiring";
    /// Whether every export the PpioInstance asks for (connection Secret, Service) is written
    /// and current; absent when it asks for none.
    pub const EXPORTED: &str = "Exported";
    /// The condition types this operator owns, in the order they are written.
    pub const OWN: [&str; 6] = [READY, SYNCED, RECONCILING, STALLED, EXPIRING, EXPORTED];
}

/// Condition statuses (`metav1.Condition.status`).
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition reasons.
pub mod reason {
    /// `Synced=True`: the last poll succeeded.
    pub const OBSERVED: &str = "Observed";
    /// `Synced=False` and `Ready=False`: PPIO no longer knows the instance.
    pub const INSTANCE_NOT_FOUND: &str = "InstanceNotFound";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const API_UNAVAILABLE: &str = "ApiUnavailable";
    pub const INVALID_RESPONSE: &str = "InvalidResponse";
    pub const REQUEST_REJECTED: &str = "RequestRejected";
    pub const CREDENTIALS_MISSING: &str = "CredentialsMissing";
    pub const SUSPENDED: &str = "Suspended";
    /// `Ready=True`.
    pub const RUNNING: &str = "Running";
    /// `Ready=False`: observed in another state.
    pub const NOT_RUNNING: &str = "NotRunning";
    /// `Ready=Unknown`: never observed yet.
    pub const NOT_OBSERVED: &str = "NotObserved";
    /// `Reconciling=True`: the instance is in a transitional state, followed closely.
    pub const TRANSITIONING: &str = "Transitioning";
    /// `Reconciling=True`: the status was built from a LIST item alone; the instance's first
    /// full GET (endpoints, pricing) is still to come.
    pub const FETCHING_DETAILS: &str = "FetchingDetails";
    /// `Expiring=True`: a spot reclaim is announced (`pricing.spot`).
    pub const SPOT_RECLAIM_SCHEDULED: &str = "SpotReclaimScheduled";
    /// `Expiring=True`: a prepaid term without auto-renew ends within the horizon.
    pub const PREPAID_ENDING: &str = "PrepaidEnding";
    /// `Expiring=False`.
    pub const NOT_EXPIRING: &str = "NotExpiring";
    /// `Stalled=True` (and `Ready=False`): a stable state other than `spec.expect.state`, past
    /// the grace period.
    pub const UNEXPECTED_STATE: &str = "UnexpectedState";
    /// `Ready=True`: the observed state is `spec.expect.state` (other than running).
    pub const EXPECTED_STATE: &str = "ExpectedState";
    /// `Reconciling=True`: a state other than `spec.expect.state`, within the grace period.
    pub const AWAITING_EXPECTED_STATE: &str = "AwaitingExpectedState";
    /// `Exported=True`: every requested export is written and current.
    pub const EXPORTED: &str = "Exported";
    /// `Exported=False`: a Secret of the connection Secret's name exists and is not ours.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// `Exported=False`: a Service or EndpointSlice of that name exists and is not ours.
    pub const SERVICE_CONFLICT: &str = "ServiceConflict";
    /// `Exported=False`: an endpoint address the operator does not publish.
    pub const ADDRESS_REFUSED: &str = "AddressRefused";
    /// `Exported=False`: the operator runs without the permission for that export.
    pub const EXPORTS_DISABLED: &str = "ExportsDisabled";
}

/// Event reasons (besides the `Synced=False` condition reasons, which Events reuse) and
/// actions.
pub mod event {
    /// The PPIO state changed.
    pub const STATE_CHANGED: &str = "StateChanged";
    /// Polls succeed again after failing.
    pub const SYNCED: &str = "Synced";
    /// The action of a state change: the operator observed it.
    pub const ACTION_OBSERVE: &str = "Observe";
    /// The action of a sync change: the operator polled.
    pub const ACTION_POLL: &str = "Poll";
    /// The action of an export that could not be written: the operator exported.
    pub const ACTION_EXPORT: &str = "Export";
}

/// PPIO instance states (an open set: these are the ones the operator treats specially).
pub mod state {
    /// The state in which `Ready` is True.
    pub const RUNNING: &str = "running";
    pub const EXITED: &str = "exited";
    pub const REMOVED: &str = "removed";
    /// States in which an instance stays until someone acts; any other state is a transition.
    pub const STABLE: [&str; 3] = [RUNNING, EXITED, REMOVED];
    /// The `status.state` shown once PPIO no longer knows the instance; never a PPIO value.
    pub const NOT_FOUND: &str = "NotFound";

    /// Whether an observed PPIO state is a transition (anything but a stable state).
    pub fn is_transitional(state: &str) -> bool {
        state != NOT_FOUND && !STABLE.contains(&state)
    }
}
