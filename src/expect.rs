//! `spec.expect`: the state a GitOps repository expects an instance in. With it, `Ready` means
//! "the observed state is the expected one"; a stable state other than the expected one that
//! lasts past the grace period is drift (`Stalled=True UnexpectedState`), and before that the
//! operator is still waiting for it (`Reconciling=True AwaitingExpectedState`). Without it,
//! nothing changes (`Ready` means "running").
//!
//! Pure, like the rest of the status: the conditions follow from the observation, the spec,
//! the stored conditions and the time; the caller computes the status again when the grace
//! period ends (the returned instant).

use std::time::Duration;

use jiff::Timestamp;

use crate::conditions::make_condition;
use crate::crd::{Expectation, PpioInstanceStatus};
use crate::duration::parse_duration_within;
use crate::vocabulary::{condition, reason, state, status as cstatus};

/// The grace period when `spec.expect.gracePeriod` is omitted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// The longest grace period.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The expected state and the grace period of an expectation.
pub fn expected(expect: &Expectation) -> (String, Duration) {
    let state = expect
        .state
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| state::RUNNING.to_string());
    let grace = expect
        .grace_period
        .as_deref()
        .and_then(|g| parse_duration_within(g, Duration::ZERO, MAX_GRACE).ok())
        .unwrap_or(DEFAULT_GRACE);
    (state, grace)
}

/// Sets `Ready`, `Reconciling` and `Stalled` of a current observation (`Synced=True`) by the
/// expectation; returns when the grace period of an unexpected state ends, if it has not.
/// Anything else (no expectation, a failed poll, the instance gone) is left as computed.
pub fn apply_expectation(
    status: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    expect: Option<&Expectation>,
    now: Timestamp,
) -> Option<Timestamp> {
    let expect = expect?;
    let current = status
        .condition(condition::SYNCED)
        .is_some_and(|c| c.status == cstatus::TRUE);
    let observed = status.state.clone()?;
    if !current || observed == state::NOT_FOUND {
        return None;
    }
    let (want, grace) = expected(expect);
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let prior = status.conditions.clone();
    let old = |t: &str| {
        previous
            .and_then(|p| p.condition(t))
            .or_else(|| prior.iter().find(|c| c.type_ == t))
            .cloned()
    };
    let generation = status.observed_generation;
    let set = |status: &mut PpioInstanceStatus, type_: &str, st: &str, why: &str, message: &str| {
        let c = make_condition(
            old(type_).as_ref(),
            type_,
            st,
            why,
            message,
            generation,
            now,
        );
        status.conditions.retain(|c| c.type_ != type_);
        status.conditions.push(c);
    };
    if observed == want {
        if want != state::RUNNING {
            set(
                status,
                condition::READY,
                cstatus::TRUE,
                reason::EXPECTED_STATE,
                &format!("The instance is {observed}, as spec.expect.state says."),
            );
        }
        return None;
    }
    if want != state::RUNNING {
        set(
            status,
            condition::READY,
            cstatus::FALSE,
            reason::UNEXPECTED_STATE,
            &format!("The instance is {observed}; spec.expect.state is {want}."),
        );
    }
    if state::is_transitional(&observed) {
        // In transition: Reconciling=True Transitioning, as computed.
        return None;
    }
    // A stable state other than the expected one: drift once it lasted the grace period.
    drift(status, &set, &observed, &want, grace, now)
}

/// How a condition is set: type, status, reason, message.
type SetCondition<'a> = dyn Fn(&mut PpioInstanceStatus, &str, &str, &str, &str) + 'a;

/// An instance in a stable state (`observed`) other than the one expected (`want`): drift
/// (`Stalled=True`) once that lasted `grace`, else `Reconciling=True` until then (returned).
fn drift(
    status: &mut PpioInstanceStatus,
    set: &SetCondition<'_>,
    observed: &str,
    want: &str,
    grace: Duration,
    now: Timestamp,
) -> Option<Timestamp> {
    let since = status
        .condition(condition::READY)
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    let grace_text = crate::duration::Human(grace).to_string();
    let ends = since
        .checked_add(jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if now >= ends {
        let message = format!(
            "The instance is {observed}; spec.expect.state is {want}, and the {grace_text} grace period has passed."
        );
        set(
            status,
            condition::RECONCILING,
            cstatus::FALSE,
            reason::UNEXPECTED_STATE,
            "The operator waits for the instance, or spec.expect, to change.",
        );
        set(
            status,
            condition::STALLED,
            cstatus::TRUE,
            reason::UNEXPECTED_STATE,
            &message,
        );
        None
    } else {
        set(
            status,
            condition::RECONCILING,
            cstatus::TRUE,
            reason::AWAITING_EXPECTED_STATE,
            &format!(
                "The instance is {observed}; spec.expect.state is {want}: drift once this lasts the {grace_text} grace period."
            ),
        );
        Some(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Observation, compute_status};

    fn observed(
        state_: &str,
        previous: Option<&PpioInstanceStatus>,
        now: Timestamp,
    ) -> PpioInstanceStatus {
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/get-instance.json")).unwrap();
        v["status"]["status"] = state_.into();
        let i = crate::ppio::Instance::from_slice(v.to_string().as_bytes()).unwrap();
        compute_status(
            "ca338f12f3",
            Some(1),
            None,
            Observation::Instance(&i),
            previous,
            now,
        )
    }

    fn cond(s: &PpioInstanceStatus, t: &str) -> (String, String) {
        let c = s.condition(t).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    #[test]
    fn an_expected_parked_instance_is_ready_and_drift_stalls_after_the_grace_period() {
        let parked = Expectation {
            state: Some("exited".into()),
            grace_period: None,
        };
        let t0 = at("2026-12-05T10:00:00Z");
        let mut s = observed("exited", None, t0);
        assert_eq!(apply_expectation(&mut s, None, Some(&parked), t0), None);
        assert_eq!(cond(&s, "Ready"), ("True".into(), "ExpectedState".into()));
        assert_eq!(cond(&s, "Stalled").0, "False");

        // Started against the repository's wish: waiting, then drift after 10 minutes.
        let t1 = at("2026-12-05T10:01:00Z");
        let mut r = observed("running", Some(&s), t1);
        let ends = apply_expectation(&mut r, Some(&s), Some(&parked), t1);
        assert_eq!(ends, Some(at("2026-12-05T10:11:00Z")));
        assert_eq!(
            cond(&r, "Ready"),
            ("False".into(), "UnexpectedState".into())
        );
        assert_eq!(
            cond(&r, "Reconciling"),
            ("True".into(), "AwaitingExpectedState".into())
        );
        let t2 = at("2026-12-05T10:11:00Z");
        let mut later = observed("running", Some(&r), t2);
        assert_eq!(
            apply_expectation(&mut later, Some(&r), Some(&parked), t2),
            None
        );
        assert_eq!(
            cond(&later, "Stalled"),
            ("True".into(), "UnexpectedState".into())
        );
        assert_eq!(cond(&later, "Reconciling").0, "False");
        // The same observation again: the same status (no write).
        let mut again = observed("running", Some(&later), t2);
        apply_expectation(&mut again, Some(&later), Some(&parked), t2);
        assert_eq!(again, later);
    }

    #[test]
    fn without_an_expectation_or_with_running_nothing_changes() {
        let t0 = at("2026-12-05T10:00:00Z");
        let plain = observed("exited", None, t0);
        let mut s = plain.clone();
        assert_eq!(apply_expectation(&mut s, None, None, t0), None);
        assert_eq!(s, plain);
        let running = Expectation::default();
        let mut r = observed("running", None, t0);
        let before = r.clone();
        apply_expectation(&mut r, None, Some(&running), t0);
        assert_eq!(r, before);
        // A transition keeps Reconciling=True Transitioning.
        let mut starting = observed("starting", None, t0);
        apply_expectation(&mut starting, None, Some(&running), t0);
        assert_eq!(
            cond(&starting, "Reconciling"),
            ("True".into(), "Transitioning".into())
        );
    }
}
