//! Status as a pure function: the seed's example response against a hand-reviewed golden
//! status, the decoding variants PPIO is known to send, and the condition rules.

use jiff::Timestamp;
use ppio_operator::crd::PpioInstanceStatus;
use ppio_operator::ppio::{DecodeError, Instance, PpioError};
use ppio_operator::status::{Failure, Observation, compute_status};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../fixtures/get-instance.json");
const GOLDEN: &str = include_str!("../golden/get-instance.status.yaml");

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("valid time")
}

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("fixture is JSON")
}

fn decode(v: &Value) -> Instance {
    Instance::from_slice(&serde_json::to_vec(v).expect("serializes")).expect("decodes")
}

fn observe(v: &Value, previous: Option<&PpioInstanceStatus>, now: i64) -> PpioInstanceStatus {
    compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Instance(&decode(v)),
        previous,
        t(now),
    )
}

fn fail(e: &PpioError, previous: Option<&PpioInstanceStatus>, now: i64) -> PpioInstanceStatus {
    compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Failed(&Failure::from(e)),
        previous,
        t(now),
    )
}

fn yaml(s: &PpioInstanceStatus) -> String {
    serde_yaml::to_string(s).expect("serializes")
}

fn cond<'a>(
    s: &'a PpioInstanceStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    s.condition(t).expect("condition present")
}

#[test]
fn seed_example_gives_the_golden_status() {
    // A pending refresh request (the gpus.ppio.com/refresh annotation) is part of the
    // status the poll writes.
    let status = compute_status(
        "ca338f12f3",
        Some(1),
        Some("2024-05-01T10:00:00Z"),
        Observation::Instance(&decode(&fixture())),
        None,
        t(1_750_000_000),
    );
    let got = yaml(&status);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/golden/get-instance.status.yaml"
            ),
            &got,
        )
        .expect("write golden");
    }
    assert_eq!(
        got, GOLDEN,
        "status differs from tests/golden/get-instance.status.yaml"
    );
}

#[test]
fn numbers_as_strings_and_unknown_fields_change_nothing() {
    fn stringify(v: &Value) -> Value {
        match v {
            Value::Number(n) => Value::String(n.to_string()),
            Value::Array(a) => Value::Array(a.iter().map(stringify).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), stringify(v))).collect())
            }
            other => other.clone(),
        }
    }
    let base = observe(&fixture(), None, 1_750_000_000);
    assert_eq!(observe(&stringify(&fixture()), None, 1_750_000_000), base);

    let mut extra = fixture();
    extra["brand_new_field"] = json!({"nested": [1, 2, 3]});
    extra["status"]["new_flag"] = json!(true);
    extra["resource_specs"]["gpu_model"] = json!("H100");
    assert_eq!(observe(&extra, None, 1_750_000_000), base);
}

#[test]
fn missing_blocks_are_omitted_not_errors() {
    let base = observe(&fixture(), None, 1_750_000_000);

    let mut v = fixture();
    v.as_object_mut().expect("object").remove("pricing");
    let s = observe(&v, None, 1_750_000_000);
    assert_eq!(s.pricing, None);
    assert_eq!(
        PpioInstanceStatus {
            pricing: base.pricing.clone(),
            ..s
        },
        base
    );

    let mut v = fixture();
    v["tools"] = Value::Null;
    let s = observe(&v, None, 1_750_000_000);
    let endpoints = s.endpoints.clone().expect("ports remain");
    assert_eq!(endpoints.ports.len(), 1);
    assert!(
        endpoints.jupyter.is_none()
            && endpoints.ssh.is_none()
            && endpoints.web_terminal.is_none()
            && endpoints.log.is_none()
    );

    let mut v = fixture();
    v["billing"] = json!({"mode": "postpaid"});
    let s = observe(&v, None, 1_750_000_000);
    let billing = s.billing.expect("billing");
    assert_eq!(billing.mode.as_deref(), Some("postpaid"));
    assert_eq!(billing.prepaid, None);

    let mut v = fixture();
    for k in ["network", "volumes", "auto_migrate", "resource_specs"] {
        v.as_object_mut().expect("object").remove(k);
    }
    let s = observe(&v, None, 1_750_000_000);
    assert!(
        s.network.is_none()
            && s.volumes.is_empty()
            && s.auto_migrate.is_none()
            && s.resources.is_none()
    );
}

#[test]
fn zero_timestamps_are_omitted() {
    let mut v = fixture();
    v["created_at"] = json!(0);
    v["last_started_at"] = json!("0");
    v["billing"]["prepaid"]["end_time"] = json!(0);
    v["pricing"]["spot"]["spot_reclaim_time"] = json!(0);
    let s = observe(&v, None, 1_750_000_000);
    assert_eq!(s.created_at, None);
    assert_eq!(s.last_started_at, None);
    assert_eq!(s.last_stopped_at, None);
    assert_eq!(
        s.billing.and_then(|b| b.prepaid).and_then(|p| p.end_time),
        None
    );
    assert_eq!(
        s.pricing.and_then(|p| p.spot).and_then(|s| s.reclaim_time),
        None
    );
}

#[test]
fn unknown_state_is_shown_verbatim_and_not_ready() {
    let mut v = fixture();
    v["status"] = json!({"status": "hibernating", "error": "disk quota", "message": "waiting"});
    let s = observe(&v, None, 1_750_000_000);
    assert_eq!(s.state.as_deref(), Some("hibernating"));
    assert_eq!(s.state_error.as_deref(), Some("disk quota"));
    assert_eq!(s.state_message.as_deref(), Some("waiting"));
    let ready = cond(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NotRunning")
    );
    assert!(ready.message.contains("hibernating"));
    assert_eq!(cond(&s, "Synced").status, "True");
}

#[test]
fn never_observed_failure_reports_ready_unknown() {
    let s = fail(&PpioError::Server { status: 503 }, None, 1_750_000_000);
    let ready = cond(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("Unknown", "NotObserved")
    );
    assert_eq!(s.state, None);
    assert_eq!(s.instance_id.as_deref(), Some("ca338f12f3"));
    assert_eq!(s.observed_generation, Some(1));
}

#[test]
fn every_error_class_maps_to_its_reason_and_repeats_byte_identically() {
    let good = observe(&fixture(), None, 1_750_000_000);
    let cases = [
        (PpioError::Connect, "ApiUnavailable"),
        (PpioError::Timeout, "ApiUnavailable"),
        (PpioError::Server { status: 500 }, "ApiUnavailable"),
        (PpioError::Server { status: 503 }, "ApiUnavailable"),
        (PpioError::Unauthorized, "Unauthorized"),
        (PpioError::Forbidden, "Forbidden"),
        (PpioError::NotFound { status: 404 }, "InstanceNotFound"),
        (PpioError::NotFound { status: 400 }, "InstanceNotFound"),
        (
            PpioError::RateLimited {
                retry_after: Some(std::time::Duration::from_secs(30)),
            },
            "RateLimited",
        ),
        (PpioError::RateLimited { retry_after: None }, "RateLimited"),
        (
            PpioError::Rejected {
                status: 400,
                code: Some("INVALID_PARAMS".into()),
            },
            "RequestRejected",
        ),
        (PpioError::TooLarge { limit: 1 << 20 }, "InvalidResponse"),
        (
            PpioError::Decode(DecodeError::NotAnObject),
            "InvalidResponse",
        ),
        (
            PpioError::UnexpectedStatus { status: 302 },
            "InvalidResponse",
        ),
    ];
    for (e, reason) in cases {
        let first = fail(&e, Some(&good), 1_750_000_100);
        let synced = cond(&first, "Synced");
        assert_eq!(
            (synced.status.as_str(), synced.reason.as_str()),
            ("False", reason),
            "{e:?}"
        );
        assert!(synced.message.chars().count() <= 256);
        // The same failure later: the very same bytes, so no write.
        let again = fail(&e, Some(&first), 1_750_000_900);
        assert_eq!(yaml(&again), yaml(&first), "{e:?}");
        // A retry-after of another length is the same failure too.
        if let PpioError::RateLimited { .. } = e {
            let other = fail(
                &PpioError::RateLimited {
                    retry_after: Some(std::time::Duration::from_secs(5)),
                },
                Some(&first),
                1_750_000_950,
            );
            assert_eq!(yaml(&other), yaml(&first));
        }
    }
}

#[test]
fn errors_keep_the_last_good_observation() {
    let good = observe(&fixture(), None, 1_750_000_000);
    let failed = fail(
        &PpioError::Server { status: 502 },
        Some(&good),
        1_750_000_100,
    );
    let strip = |s: &PpioInstanceStatus| PpioInstanceStatus {
        conditions: vec![],
        ..s.clone()
    };
    assert_eq!(strip(&failed), strip(&good));
    assert_eq!(
        cond(&failed, "Ready"),
        cond(&good, "Ready"),
        "Ready keeps its last observed value"
    );
    let synced = cond(&failed, "Synced");
    assert_eq!(synced.last_transition_time.0, t(1_750_000_100));

    let gone = fail(
        &PpioError::NotFound { status: 404 },
        Some(&good),
        1_750_000_200,
    );
    assert_eq!(gone.state.as_deref(), Some("NotFound"));
    assert_eq!(gone.region, good.region);
    assert_eq!(gone.endpoints, good.endpoints);
    let ready = cond(&gone, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InstanceNotFound")
    );
}

#[test]
fn last_transition_time_moves_only_on_status_change() {
    let first = observe(&fixture(), None, 1_750_000_000);
    let same = observe(&fixture(), Some(&first), 1_750_000_500);
    assert_eq!(
        same, first,
        "an unchanged instance gives an identical status"
    );

    // Running -> exited flips Ready at the new time; Synced stays True with its old time.
    let mut v = fixture();
    v["status"]["status"] = json!("exited");
    let exited = observe(&v, Some(&same), 1_750_001_000);
    assert_eq!(cond(&exited, "Ready").status, "False");
    assert_eq!(
        cond(&exited, "Ready").last_transition_time.0,
        t(1_750_001_000)
    );
    assert_eq!(
        cond(&exited, "Synced").last_transition_time.0,
        t(1_750_000_000)
    );

    // exited -> starting: Ready stays False, so its time does not move although the reason text does.
    let mut v2 = fixture();
    v2["status"]["status"] = json!("starting");
    let starting = observe(&v2, Some(&exited), 1_750_002_000);
    assert_eq!(
        cond(&starting, "Ready").last_transition_time.0,
        t(1_750_001_000)
    );
    assert!(cond(&starting, "Ready").message.contains("starting"));
}

#[test]
fn suspended_keeps_the_observation() {
    let good = observe(&fixture(), None, 1_750_000_000);
    let s = compute_status(
        "ca338f12f3",
        Some(2),
        None,
        Observation::Suspended,
        Some(&good),
        t(1_750_000_100),
    );
    let synced = cond(&s, "Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "Suspended")
    );
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(s.state.as_deref(), Some("running"));
    assert_eq!(cond(&s, "Ready").status, "True");
}

#[test]
fn credentials_missing_is_its_own_reason() {
    let f = Failure::credentials_missing("Secret \"x\" was not found in namespace \"ml\".");
    let s = compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Failed(&f),
        None,
        t(1_750_000_000),
    );
    let synced = cond(&s, "Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "CredentialsMissing")
    );
}

#[test]
fn long_messages_are_bounded() {
    let mut v = fixture();
    v["status"]["status"] = json!("x".repeat(1000));
    let s = observe(&v, None, 1_750_000_000);
    assert_eq!(cond(&s, "Ready").message.chars().count(), 256);
}

#[test]
fn any_poll_answers_a_refresh_request_and_suspension_does_not() {
    let first = observe(&fixture(), None, 1_750_000_000);
    assert_eq!(first.last_handled_refresh, None);
    let observed = compute_status(
        "ca338f12f3",
        Some(1),
        Some("r1"),
        Observation::Instance(&decode(&fixture())),
        Some(&first),
        t(1_750_000_060),
    );
    assert_eq!(observed.last_handled_refresh.as_deref(), Some("r1"));
    let failed = compute_status(
        "ca338f12f3",
        Some(1),
        Some("r2"),
        Observation::Failed(&Failure::from(&PpioError::Timeout)),
        Some(&observed),
        t(1_750_000_120),
    );
    assert_eq!(failed.last_handled_refresh.as_deref(), Some("r2"));
    // A suspended instance is not polled: the request stays unanswered, the last answer stays.
    let suspended = compute_status(
        "ca338f12f3",
        Some(1),
        Some("r3"),
        Observation::Suspended,
        Some(&failed),
        t(1_750_000_180),
    );
    assert_eq!(suspended.last_handled_refresh.as_deref(), Some("r2"));
    // Without a request the last answer is kept, byte for byte.
    let again = compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Instance(&decode(&fixture())),
        Some(&observed),
        t(1_750_000_240),
    );
    assert_eq!(yaml(&again), yaml(&observed));
}

/// (status, reason) of a condition.
fn sr(s: &PpioInstanceStatus, t: &str) -> (String, String) {
    let c = cond(s, t);
    (c.status.clone(), c.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

#[test]
fn reconciling_and_stalled_follow_the_kstatus_table() {
    let running = observe(&fixture(), None, 1_750_000_000);
    assert_eq!(sr(&running, "Reconciling"), pair("False", "Observed"));
    assert_eq!(sr(&running, "Stalled"), pair("False", "Observed"));

    let mut starting = fixture();
    starting["status"]["status"] = json!("starting");
    let starting = observe(&starting, None, 1_750_000_000);
    assert_eq!(sr(&starting, "Reconciling"), pair("True", "Transitioning"));
    assert_eq!(sr(&starting, "Stalled"), pair("False", "Observed"));

    let mut exited = fixture();
    exited["status"]["status"] = json!("exited");
    let exited = observe(&exited, None, 1_750_000_000);
    assert_eq!(sr(&exited, "Reconciling"), pair("False", "Observed"));
    assert_eq!(sr(&exited, "Ready"), pair("False", "NotRunning"));

    // Transient failures: the operator retries; the last observation (Ready) stays.
    for (e, reason) in [
        (PpioError::Server { status: 503 }, "ApiUnavailable"),
        (PpioError::Timeout, "ApiUnavailable"),
        (PpioError::RateLimited { retry_after: None }, "RateLimited"),
    ] {
        let s = fail(&e, Some(&running), 1_750_000_060);
        assert_eq!(sr(&s, "Reconciling"), pair("True", reason), "{e:?}");
        assert_eq!(cond(&s, "Reconciling").message, e.to_string());
        assert_eq!(sr(&s, "Stalled"), pair("False", reason), "{e:?}");
        assert_eq!(sr(&s, "Ready"), pair("True", "Running"), "{e:?}");
    }
    // Failures that need a person: Stalled, with Synced's reason and message.
    for (e, reason) in [
        (PpioError::NotFound { status: 404 }, "InstanceNotFound"),
        (PpioError::Unauthorized, "Unauthorized"),
        (PpioError::Forbidden, "Forbidden"),
        (PpioError::Decode(DecodeError::NoState), "InvalidResponse"),
        (
            PpioError::Rejected {
                status: 422,
                code: None,
            },
            "RequestRejected",
        ),
    ] {
        let s = fail(&e, Some(&running), 1_750_000_060);
        assert_eq!(sr(&s, "Stalled"), pair("True", reason), "{e:?}");
        assert_eq!(cond(&s, "Stalled").message, cond(&s, "Synced").message);
        assert_eq!(sr(&s, "Reconciling"), pair("False", reason), "{e:?}");
    }
    let missing = compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Failed(&Failure::credentials_missing("no key")),
        None,
        t(1_750_000_000),
    );
    assert_eq!(sr(&missing, "Stalled"), pair("True", "CredentialsMissing"));
    assert_eq!(sr(&missing, "Ready"), pair("Unknown", "NotObserved"));

    // Never observed and PPIO failing: still working on it.
    let first = fail(&PpioError::Connect, None, 1_750_000_000);
    assert_eq!(sr(&first, "Reconciling"), pair("True", "ApiUnavailable"));

    let suspended = compute_status(
        "ca338f12f3",
        Some(2),
        None,
        Observation::Suspended,
        Some(&starting),
        t(1_750_000_060),
    );
    assert_eq!(sr(&suspended, "Reconciling"), pair("False", "Suspended"));
    assert_eq!(sr(&suspended, "Stalled"), pair("False", "Suspended"));

    // Repeats are byte-identical, and the condition types stay in one order.
    let again = fail(
        &PpioError::Timeout,
        Some(&fail(&PpioError::Timeout, Some(&running), 1)),
        2,
    );
    assert_eq!(
        yaml(&again),
        yaml(&fail(&PpioError::Timeout, Some(&again), 3))
    );
    let types: Vec<&str> = again.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Synced", "Reconciling", "Stalled"]);
}

#[test]
fn an_observation_too_large_to_mirror_keeps_the_last_good_one() {
    let good = observe(&fixture(), None, 1_750_000_000);
    // More ports than a status holds.
    let mut many = fixture();
    many["ports"] = json!(
        (0..300)
            .map(|p| json!({"port": p, "protocol": "tcp"}))
            .collect::<Vec<_>>()
    );
    let s = observe(&many, Some(&good), 1_750_000_060);
    assert_eq!(
        (
            cond(&s, "Synced").status.as_str(),
            cond(&s, "Synced").reason.as_str()
        ),
        ("False", "InvalidResponse")
    );
    assert!(cond(&s, "Synced").message.contains("256 ports"), "{s:?}");
    assert_eq!(cond(&s, "Stalled").status, "True");
    assert_eq!(
        s.endpoints, good.endpoints,
        "the last good observation stays"
    );
    assert_eq!(cond(&s, "Ready").reason, "Running");
    // Every field within its cap, but the whole over 256 KiB.
    let mut big = fixture();
    let long = "x".repeat(1024);
    big["volumes"] = json!(
        (0..250)
            .map(|_| json!({"type": long, "id": long, "mount_point": long}))
            .collect::<Vec<_>>()
    );
    let s = observe(&big, Some(&good), 1_750_000_060);
    assert_eq!(cond(&s, "Synced").reason, "InvalidResponse");
    assert!(cond(&s, "Synced").message.contains("256 KiB"), "{s:?}");
    assert!(serde_json::to_vec(&s).expect("json").len() < 64 * 1024);
}

#[test]
fn vendor_text_loses_control_characters_and_is_bounded() {
    let mut v = fixture();
    v["name"] = json!("a\u{1b}[31mred\u{7}\nname");
    v["status"]["message"] = json!("m".repeat(5000));
    v["status"]["status"] = json!("weird\"\nstate");
    let s = observe(&v, None, 1_750_000_000);
    assert_eq!(s.name.as_deref(), Some("a[31mredname"));
    assert_eq!(s.state_message.as_deref().map(str::len), Some(1024));
    assert_eq!(s.state.as_deref(), Some("weird\"state"));
    assert!(cond(&s, "Ready").message.chars().count() <= 256);
    // Numbers in exponent form are integers like any other.
    let mut e = fixture();
    e["resource_specs"]["gpu_num"] = json!(1e1);
    let s = observe(&e, None, 1_750_000_000);
    assert_eq!(s.resources.and_then(|r| r.gpu_num), Some(10));
}

#[test]
fn the_refresh_answer_is_bounded() {
    let huge = "r".repeat(200_000);
    let s = compute_status(
        "ca338f12f3",
        Some(1),
        Some(&huge),
        Observation::Instance(&decode(&fixture())),
        None,
        t(1_750_000_000),
    );
    assert_eq!(s.last_handled_refresh.map(|r| r.len()), Some(128));
}

fn listed(v: &Value, previous: Option<&PpioInstanceStatus>, now: i64) -> PpioInstanceStatus {
    compute_status(
        "ca338f12f3",
        Some(1),
        None,
        Observation::Listed(&decode(v)),
        previous,
        t(now),
    )
}

#[test]
fn a_list_item_changes_only_the_fields_it_carries() {
    let mut failing = fixture();
    failing["status"]["error"] = "disk full".into();
    failing["status"]["message"] = "retrying".into();
    let fetched = observe(&failing, None, 100);
    assert_eq!(fetched.state_error.as_deref(), Some("disk full"));
    // A lean item: no tools, pricing, billing.prepaid, network or status message.
    let mut item = failing.clone();
    let o = item.as_object_mut().expect("object");
    for field in ["tools", "pricing", "network"] {
        o.remove(field);
    }
    item["billing"]
        .as_object_mut()
        .expect("billing")
        .remove("prepaid");
    item["status"]
        .as_object_mut()
        .expect("status")
        .remove("message");
    let from_item = listed(&item, Some(&fetched), 200);
    assert_eq!(
        from_item, fetched,
        "an item that lacks fields changes nothing"
    );
    // What the item carries changes the status: here the state, and an error it clears.
    item["status"]["status"] = "exited".into();
    item["status"]["error"] = "".into();
    let changed = listed(&item, Some(&fetched), 300);
    assert_eq!(changed.state.as_deref(), Some("exited"));
    assert_eq!(changed.state_error, None, "carried empty: cleared");
    assert_eq!(
        changed.state_message.as_deref(),
        Some("retrying"),
        "left out: kept"
    );
    assert_eq!(changed.network, fetched.network);
    assert_eq!(changed.pricing, fetched.pricing);
    assert_eq!(
        changed.billing.as_ref().and_then(|b| b.prepaid.clone()),
        fetched.billing.as_ref().and_then(|b| b.prepaid.clone())
    );
}
