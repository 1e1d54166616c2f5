//! Whatever PPIO sends: the response decoders and `compute_status` never panic, the status
//! stays within its size bound, and no secret of the instance object reaches it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppio_operator::ppio::{Instance, InstancePage};
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

fn check(body: &[u8], previous: Option<&ppio_operator::crd::PpioInstanceStatus>) {
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

fuzz_target!(|data: &[u8]| {
    check(data, None);
    // The same input as a JSON object with secrets planted in it.
    if let Ok(mut v) = serde_json::from_slice::<Value>(data) {
        plant(&mut v);
        if let Ok(bytes) = serde_json::to_vec(&v) {
            check(&bytes, None);
        }
    }
});
