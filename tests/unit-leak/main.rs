//! Secrets never leak: passwords, env values, command lines and API keys are absent from
//! status writes, error messages and the log of a reconcile (captured at trace level). A
//! binary of its own, so the global log subscriber sees every event.

#[path = "../support/mod.rs"]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use ppio_operator::controller::poll;
use ppio_operator::crd::SecretKeyRef;
use ppio_operator::ppio::{ApiKey, PpioError};
use ppio_operator::simulator::{BodyFault, Fault};
use serde_json::{Value, json};
use support::mock::*;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[ppio_test_macros::test]
async fn secrets_never_reach_status_errors_or_logs() {
    let markers = [
        "LEAK-ssh-pw",
        "LEAK-web-pw",
        "LEAK-env-value",
        "LEAK-command",
        "LEAK-entrypoint",
        "LEAK-api-key",
    ];
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let h = harness(None).await;
    let mut fixture: Value = serde_json::from_str(FIXTURE).expect("fixture");
    fixture["tools"]["ssh"]["password"] = json!("LEAK-ssh-pw");
    fixture["tools"]["web_terminal"]["password"] = json!("LEAK-web-pw");
    fixture["envs"] = json!([{"key": "TOKEN", "value": "LEAK-env-value"}]);
    fixture["command"] = json!("run --token LEAK-command");
    fixture["entrypoint"] = json!("LEAK-entrypoint");
    h.sim.put_instance("ca338f12f3", fixture.clone());
    h.sim.set_keys(vec!["LEAK-api-key".into()]);
    h.api.put_secret("ml", "ppio", "apiKey", "LEAK-api-key");

    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: None,
    });
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let mut statuses = vec![h.api.last_status()];
    for fault in [
        Fault::status(401),
        Fault::status(500),
        Fault::body(BodyFault::Truncated),
    ] {
        h.sim.set_fault("ca338f12f3", fault);
        i.status = statuses.last().cloned();
        poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
        statuses.push(h.api.last_status());
    }
    // A key rejected by PPIO, and a vendor error body that echoes the secrets.
    h.sim.set_keys(vec!["another".into()]);
    i.status = statuses.last().cloned();
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    statuses.push(h.api.last_status());
    let echo = br#"{"reason":"LEAK-api-key","message":"LEAK-ssh-pw LEAK-env-value"}"#;
    let errors: Vec<String> = [400u16, 401, 403, 404, 409, 422, 429, 500, 503, 302]
        .iter()
        .map(|s| {
            PpioError::from_response(*s, Some("30"), echo, std::time::SystemTime::now()).to_string()
        })
        .collect();
    let key_debug = format!("{:?}", ApiKey::new("LEAK-api-key"));

    // LIST mode: a bulk of PpioInstances observed through the key's walks (items carry the
    // env values and the command too), then their GETs.
    let ids: Vec<String> = (0..5).map(|n| format!("leak{n}")).collect();
    for id in &ids {
        let mut leaky = fixture.clone();
        leaky["id"] = json!(id);
        h.sim.put_instance(id, leaky);
    }
    h.sim.set_keys(vec!["LEAK-api-key".into()]);
    statuses.extend(list_mode(&h, &ids).await);

    let logs = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("instance state changed") && logs.contains("sync failing"),
        "logs were captured: {logs}"
    );
    assert!(
        h.sim.counts().list >= 3,
        "the PpioInstances were walked: {} LIST pages",
        h.sim.counts().list
    );
    let patches = serde_json::to_string(&h.api.patches()).expect("json");
    for m in markers {
        assert!(!patches.contains(m), "{m} in a status patch");
        assert!(!logs.contains(m), "{m} in the log");
        for e in &errors {
            assert!(!e.contains(m), "{m} in error {e}");
        }
        assert!(!key_debug.contains(m));
        for s in &statuses {
            assert!(
                !serde_json::to_string(s).expect("json").contains(m),
                "{m} in status"
            );
        }
    }
    use base64::Engine as _;
    let encoded_key = base64::engine::general_purpose::STANDARD.encode("LEAK-api-key");
    assert!(
        !logs.contains(&encoded_key),
        "the Secret's encoded key in the log"
    );
    assert!(
        patches.contains("root@proxy"),
        "the ssh command (not its password) is shown"
    );
}

/// Reconciles PpioInstances of `ids` (one Secret-held key) in LIST mode, together, for a few
/// seconds; their last statuses.
async fn list_mode(h: &Harness, ids: &[String]) -> Vec<ppio_operator::crd::PpioInstanceStatus> {
    use kube::core::DeserializeGuard;
    use ppio_operator::controller::{CachedInstance, Context, Observe, Settings, reconcile};
    let ctx = Arc::new(Context::new(
        h.api.client(),
        h.ctx.ppio.clone(),
        Settings {
            observe: Observe::List {
                page_size: 2,
                full_refresh_intervals: 30,
            },
            ..h.ctx.settings.clone()
        },
        Arc::new(ppio_operator::metrics::Metrics::new()),
    ));
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    let tasks = ids.iter().enumerate().map(|(n, id)| {
        let ctx = ctx.clone();
        let mut object = instance(&format!("list-{n}"), None);
        object.spec.instance_id = id.clone();
        object.spec.credentials_secret_ref = Some(SecretKeyRef {
            name: "ppio".into(),
            key: None,
        });
        let key = format!("ml/list-{n}");
        async move {
            while tokio::time::Instant::now() < until {
                if let Some((_, status)) = h.api.writes_of(&key).pop() {
                    object.status = Some(status);
                }
                let cached = CachedInstance::new(object.clone()).expect("cached");
                let _ = reconcile(Arc::new(DeserializeGuard(Ok(cached))), ctx.clone()).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            object.status
        }
    });
    let last: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(last.len(), ids.len(), "every one observed");
    last
}
