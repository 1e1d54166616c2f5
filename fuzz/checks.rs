//! What each fuzz target checks, on one input. The fuzz targets (fuzz/fuzz_targets/, built by
//! `cargo fuzz`) call these; the unit tier replays every input kept in fuzz/corpus/ and
//! fuzz/regressions/ through them (tests/unit/fuzz_corpus.rs), so a found crash stays fixed
//! without the nightly toolchain.

// Each fuzz target uses one of these.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use ppio_operator::duration::{
    Human, MAX_REFRESH, MIN_REFRESH, parse_duration, parse_refresh_interval,
};
use ppio_operator::ppio::{Instance, InstancePage, MAX_RETRY_AFTER, parse_retry_after};
use ppio_operator::status::{MAX_STATUS_BYTES, Observation, compute_status};
use serde_json::Value;

/// Planted into every field that holds a secret; must never come out.
const MARKER: &str = "FUZZ-SECRET-MARKER";

/// Plants the marker where PPIO carries secrets: passwords, env values, command, entrypoint.
fn plant(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("command".into(), Value::from(MARKER));
        o.insert("entrypoint".into(), Value::from(MARKER));
        o.insert(
            "envs".into(),
            serde_json::json!([{"key": "TOKEN", "value": MARKER}]),
        );
        let tools = o
            .entry("tools")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(t) = tools.as_object_mut() {
            for k in ["ssh", "web_terminal"] {
                let entry = t
                    .entry(k)
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(e) = entry.as_object_mut() {
                    e.insert("password".into(), Value::from(MARKER));
                }
            }
        }
    }
}

fn check_status(body: &[u8], previous: Option<&ppio_operator::crd::PpioInstanceStatus>) {
    let _ = InstancePage::from_slice(body);
    let Ok(instance) = Instance::from_slice(body) else {
        return;
    };
    let now = jiff::Timestamp::from_second(1_750_000_000).expect("time");
    let status = compute_status(
        "fuzz",
        Some(1),
        Some("refresh"),
        Observation::Instance(&instance),
        previous,
        now,
    );
    let out = serde_json::to_string(&status).expect("a status serializes");
    // The observation is bounded; conditions and identifiers add a little.
    assert!(
        out.len() <= MAX_STATUS_BYTES + 8 * 1024,
        "status of {} bytes",
        out.len()
    );
    assert!(!out.contains(MARKER), "a secret reached the status");
    // The same observation gives the same status.
    let again = compute_status(
        "fuzz",
        Some(1),
        Some("refresh"),
        Observation::Instance(&instance),
        previous,
        now,
    );
    assert_eq!(status, again);
}

/// Whatever PPIO sends: the response decoders and `compute_status` never panic, the status
/// stays within its size bound, and no secret of the instance object reaches it.
pub fn decode_status(data: &[u8]) {
    check_status(data, None);
    // The same input as a JSON object with secrets planted in it.
    if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
        plant(&mut v);
        if let Ok(bytes) = serde_json::to_vec(&v) {
            check_status(&bytes, None);
        }
    }
}

/// `Retry-After` (delay-seconds or an HTTP date, judged against the response's `Date`) never
/// panics and never asks for more than the cap.
pub fn retry_after(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (value, date) = match text.split_once('\n') {
        Some((v, d)) => (v, Some(d)),
        None => (text.as_ref(), None),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    if let Some(d) = parse_retry_after(value, date, now) {
        assert!(d <= MAX_RETRY_AFTER);
    }
}

/// The duration grammar of flags and `spec.refreshInterval` never panics, and a refresh
/// interval it accepts is within 10s..24h and prints back to a duration of the same length.
pub fn duration(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let plain = parse_duration(&text);
    if let Ok(d) = parse_refresh_interval(&text) {
        assert!((MIN_REFRESH..=MAX_REFRESH).contains(&d));
        assert_eq!(plain, Ok(d));
        assert_eq!(parse_duration(&Human(d).to_string()), Ok(d));
    }
}
