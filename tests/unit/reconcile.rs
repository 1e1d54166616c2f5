//! Reconcile tests: the real PPIO HTTP client against the simulator on 127.0.0.1, and a
//! mocked Kubernetes API server (tower-test) that records every status write.

use std::sync::Arc;
use std::time::Duration;

use crate::support::mock::*;
use kube::core::DeserializeGuard;
use ppio_operator::controller::{Budget, CachedInstance, History, poll, reconcile};
use ppio_operator::crd::SecretKeyRef;
use ppio_operator::simulator::{BodyFault, Fault};
use serde_json::json;

#[ppio_test_macros::test]
async fn new_observation_writes_once_and_unchanged_writes_nothing() {
    let h = harness(Some(KEY)).await;
    let first = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(first.requested && first.wrote);
    assert_eq!(h.api.patches().len(), 1);
    let status = h.api.last_status();
    assert_eq!(status.state.as_deref(), Some("running"));
    assert_eq!(
        condition(&status, "Ready"),
        ("True".into(), "Running".into())
    );
    assert_eq!(
        condition(&status, "Synced"),
        ("True".into(), "Observed".into())
    );
    let patch = &h.api.patches()[0];
    assert_eq!(patch["apiVersion"], "gpus.ppio.com/v1alpha1");
    assert_eq!(patch["kind"], "PpioInstance");

    // The next poll sees the same instance: a request, but no write.
    let second = poll(&instance("a", Some(status)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(second.requested);
    assert!(!second.wrote);
    assert_eq!(
        h.api.patches().len(),
        1,
        "an unchanged observation must not write"
    );
    assert_eq!(h.sim.requests_for("ca338f12f3"), 2);
}

#[ppio_test_macros::test]
async fn a_state_change_flips_ready() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let running = h.api.last_status();
    h.sim
        .patch_instance("ca338f12f3", &json!({"status": {"status": "exited"}}));
    let p = poll(&instance("a", Some(running)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.wrote);
    let exited = h.api.last_status();
    assert_eq!(exited.state.as_deref(), Some("exited"));
    assert_eq!(
        condition(&exited, "Ready"),
        ("False".into(), "NotRunning".into())
    );
    // A transitional state polls at least every 10s.
    h.sim
        .patch_instance("ca338f12f3", &json!({"status": {"status": "starting"}}));
    let p = poll(&instance("a", Some(exited)), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.next.expect("requeue") <= Duration::from_secs(11));
}

#[ppio_test_macros::test]
async fn api_errors_keep_the_last_good_data_and_repeat_without_writes() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    let faults: [(Fault, &str); 6] = [
        (Fault::status(503), "ApiUnavailable"),
        (Fault::status(500), "ApiUnavailable"),
        (Fault::status(401), "Unauthorized"),
        (Fault::status(403), "Forbidden"),
        (Fault::body(BodyFault::Malformed), "InvalidResponse"),
        (Fault::body(BodyFault::Oversized), "InvalidResponse"),
    ];
    for (fault, reason) in faults {
        h.sim.set_fault("ca338f12f3", fault.clone());
        let before = h.api.patches().len();
        let p = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, 0)
            .await
            .expect("poll");
        assert!(p.wrote, "{fault:?}");
        assert_eq!(p.failures, 1);
        let failed = h.api.last_status();
        assert_eq!(
            condition(&failed, "Synced"),
            ("False".into(), reason.into()),
            "{fault:?}"
        );
        assert_eq!(
            condition(&failed, "Ready"),
            ("True".into(), "Running".into()),
            "Ready keeps its last value"
        );
        assert_eq!(failed.region, good.region);
        assert_eq!(failed.pricing, good.pricing);
        assert_eq!(failed.endpoints, good.endpoints);
        // The same fault again (the simulator's request id differs): no write.
        let again = poll(&instance("a", Some(failed)), &h.ctx, REFRESH, 1)
            .await
            .expect("poll");
        assert!(!again.wrote, "{fault:?}");
        assert_eq!(again.failures, 2);
        assert!(again.next.expect("backoff") > p.next.expect("backoff") / 2);
        assert_eq!(h.api.patches().len(), before + 1);
    }
    h.sim.clear_fault("ca338f12f3");
    let recovered = poll(
        &instance("a", Some(h.api.last_status())),
        &h.ctx,
        REFRESH,
        2,
    )
    .await
    .expect("poll");
    assert_eq!(recovered.failures, 0);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
}

#[ppio_test_macros::test]
async fn a_gone_instance_reports_not_found_and_polls_slowly() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    h.sim.remove_instance("ca338f12f3");
    // A first "not found" is only a suspicion: nothing is written, a second poll comes soon.
    let first = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(first.requested && first.gone_suspected && !first.wrote);
    assert!(first.next.expect("requeue") <= Duration::from_secs(6));
    assert_eq!(h.api.last_status(), good);
    // The second answer confirms it.
    let history = History {
        gone_suspected: true,
        ..History::default()
    };
    let p = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, history)
        .await
        .expect("poll");
    let gone = h.api.last_status();
    assert_eq!(gone.state.as_deref(), Some("NotFound"));
    assert_eq!(
        condition(&gone, "Ready"),
        ("False".into(), "InstanceNotFound".into())
    );
    assert_eq!(
        condition(&gone, "Synced"),
        ("False".into(), "InstanceNotFound".into())
    );
    assert_eq!(
        gone.region, good.region,
        "the rest of the last observation stays"
    );
    assert!(p.next.expect("requeue") >= Duration::from_secs(270));

    // 400 with RESOURCE_NOT_FOUND means gone too.
    h.sim.set_not_found_status(400);
    let p = poll(&instance("a", Some(gone.clone())), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!p.wrote, "the same condition from a 400 is the same status");
}

#[ppio_test_macros::test]
async fn a_brief_not_found_is_never_reported() {
    let h = harness(Some(KEY)).await;
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    let writes = h.api.patches().len();
    h.sim.set_fault("ca338f12f3", Fault::status(404));
    let first = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(first.gone_suspected);
    h.sim.clear_fault("ca338f12f3");
    let history = History {
        gone_suspected: true,
        ..History::default()
    };
    let p = poll(&instance("a", Some(good.clone())), &h.ctx, REFRESH, history)
        .await
        .expect("poll");
    assert!(!p.gone_suspected && !p.wrote);
    assert_eq!(
        h.api.patches().len(),
        writes,
        "no NotFound was ever written"
    );
}

#[ppio_test_macros::test]
async fn retry_after_pauses_every_object_using_the_key() {
    let h = harness(Some(KEY)).await;
    h.sim
        .set_fault("*", Fault::status(429).with_retry_after("30"));
    let p = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(p.requested);
    assert!(p.next.expect("requeue") >= Duration::from_secs(30), "{p:?}");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "RateLimited".into())
    );
    h.sim.clear_fault("*");
    let before = h.sim.counts().keys.get("key0").copied().unwrap_or(0);
    // Another object with the same key, reconciled through the controller entry point: no
    // request is sent while the key is paused.
    let other = Arc::new(DeserializeGuard(Ok(CachedInstance::new(instance(
        "b", None,
    ))
    .expect("cached"))));
    let action = reconcile(other.clone(), h.ctx.clone())
        .await
        .expect("reconcile");
    let again = reconcile(other, h.ctx.clone()).await.expect("reconcile");
    assert_eq!(
        h.sim.counts().keys.get("key0").copied().unwrap_or(0),
        before,
        "no request during Retry-After"
    );
    let secs = |a: &kube::runtime::controller::Action| {
        let d = format!("{a:?}");
        d.contains("requeue_after: Some")
    };
    assert!(secs(&action) && secs(&again));
}

#[ppio_test_macros::test]
async fn retry_after_is_floored_at_the_backoff_and_a_key_pause_is_capped() {
    let h = harness(Some(KEY)).await;
    // Retry-After: 0 (or a date in the past) waits at least the error backoff, and grows.
    h.sim
        .set_fault("*", Fault::status(429).with_retry_after("0"));
    let p1 = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(
        p1.next.expect("requeue") >= Duration::from_millis(4500),
        "{p1:?}"
    );
    // The fourth consecutive failure (on a key not paused yet) waits the fourth backoff.
    let h = harness(Some(KEY)).await;
    h.sim
        .set_fault("*", Fault::status(429).with_retry_after("0"));
    let p4 = poll(&instance("a", None), &h.ctx, REFRESH, 3)
        .await
        .expect("poll");
    assert!(
        p4.next.expect("requeue") >= Duration::from_secs(36),
        "{p4:?}"
    );
    // An hour-long Retry-After pauses the key (every namespace using it) for 5 minutes at most.
    let h = harness(Some(KEY)).await;
    h.sim
        .set_fault("*", Fault::status(429).with_retry_after("3600"));
    let p = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let next = p.next.expect("requeue");
    assert!(
        next >= Duration::from_secs(300) && next <= Duration::from_secs(302),
        "{next:?}"
    );
}

#[ppio_test_macros::test]
async fn credentials_come_from_the_secret_and_changes_apply_at_the_next_poll() {
    let h = harness(None).await;
    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: None,
    });
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested, "no key, no request");
    let s = h.api.last_status();
    assert_eq!(
        condition(&s, "Synced"),
        ("False".into(), "CredentialsMissing".into())
    );
    assert_eq!(
        condition(&s, "Ready"),
        ("Unknown".into(), "NotObserved".into())
    );

    // A wrong key: Unauthorized.
    h.api.put_secret("ml", "ppio", "apiKey", "wrong-key");
    i.status = Some(s);
    poll(&i, &h.ctx, REFRESH, 1).await.expect("poll");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "Unauthorized".into())
    );

    // Rotated to the right key: observed, without a restart.
    h.api
        .put_secret("ml", "ppio", "apiKey", &format!("{KEY}\n"));
    i.status = Some(h.api.last_status());
    poll(&i, &h.ctx, REFRESH, 2).await.expect("poll");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );

    // A key name that the Secret lacks.
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "ppio".into(),
        key: Some("token".into()),
    });
    i.status = Some(h.api.last_status());
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let s = h.api.last_status();
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Synced")
        .expect("synced");
    assert_eq!(c.reason, "CredentialsMissing");
    assert!(c.message.contains("token"), "{}", c.message);
    assert!(
        c.message.contains("gpus.ppio.com/credentials"),
        "{}",
        c.message
    );
}

#[ppio_test_macros::test]
async fn only_a_marked_secret_serves_as_credentials_and_every_refusal_reads_the_same() {
    let h = harness(None).await;
    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "db".into(),
        key: Some("password".into()),
    });
    let message = |h: &Harness| {
        let s = h.api.last_status();
        let c = s.condition("Synced").expect("synced").clone();
        assert_eq!(c.reason, "CredentialsMissing");
        c.message
    };
    // Absent.
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let absent = message(&h);
    // Present, with the key, but not marked: never sent to PPIO.
    h.api.put_secret_marked("ml", "db", "password", KEY, false);
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested, "an unmarked Secret's value is never sent");
    assert_eq!(h.sim.counts().keys.values().sum::<u64>(), 0);
    let unmarked = message(&h);
    assert_eq!(
        h.api.secret_reads(),
        0,
        "an absent or unmarked Secret is read as metadata only, never its data"
    );
    assert_eq!(h.api.secret_metadata_reads(), 2);
    // Marked, but without the key.
    h.api.put_secret("ml", "db", "other", KEY);
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    let no_key = message(&h);
    assert_eq!(
        absent, unmarked,
        "the message reveals whether the Secret exists"
    );
    assert_eq!(absent, no_key, "the message reveals whether the key exists");
    assert!(
        absent.contains("gpus.ppio.com/credentials: \"true\""),
        "{absent}"
    );
    // Marked, with the key: used.
    h.api.put_secret("ml", "db", "password", KEY);
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(p.requested);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
}

#[ppio_test_macros::test]
async fn the_default_key_serves_only_the_namespaces_it_is_given_to() {
    let h = harness(Some(KEY)).await;
    let mut settings = h.ctx.settings.clone();
    settings.default_key_namespaces = Some(["team-a".to_string()].into());
    let ctx = ppio_operator::controller::Context::new(
        h.api.client(),
        h.ctx.ppio.clone(),
        settings,
        h.ctx.metrics.clone(),
    );
    // instance() lives in namespace "ml": not given the default key.
    let p = poll(&instance("a", None), &ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!p.requested);
    let s = h.api.last_status();
    assert_eq!(
        condition(&s, "Synced"),
        ("False".into(), "CredentialsMissing".into())
    );
    assert!(
        s.condition("Synced")
            .is_some_and(|c| c.message.contains("--default-key-namespaces")),
        "{s:?}"
    );
    let mut other = instance("b", None);
    other.metadata.namespace = Some("team-a".into());
    let p = poll(&other, &ctx, REFRESH, 0).await.expect("poll");
    assert!(p.requested, "team-a may use the default key");
}

#[ppio_test_macros::test]
async fn no_default_key_reports_credentials_missing() {
    let h = harness(None).await;
    let p = poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!p.requested);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "CredentialsMissing".into())
    );
}

#[ppio_test_macros::test]
async fn suspend_makes_no_request() {
    let h = harness(Some(KEY)).await;
    let mut i = instance("a", None);
    i.spec.suspend = Some(true);
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested && p.next.is_none());
    assert_eq!(h.sim.requests_for("ca338f12f3"), 0);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "Suspended".into())
    );
}

#[ppio_test_macros::test]
async fn a_malformed_object_does_not_stop_the_others() {
    let h = harness(Some(KEY)).await;
    let list: Vec<DeserializeGuard<CachedInstance>> = serde_json::from_value(json!([
        {"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance", "metadata": {"name": "bad", "namespace": "ml"}, "spec": {"instanceId": 42, "suspend": "maybe"}},
        {"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance", "metadata": {"name": "good", "namespace": "ml", "generation": 1}, "spec": {"instanceId": "ca338f12f3"}},
    ]))
    .expect("a list with a malformed item still decodes");
    assert!(list[0].0.is_err() && list[1].0.is_ok());
    for obj in list {
        reconcile(Arc::new(obj), h.ctx.clone())
            .await
            .expect("reconcile never fails on bad input");
    }
    assert_eq!(h.api.patches().len(), 1, "only the good object is written");
    assert_eq!(h.sim.requests_for("ca338f12f3"), 1);
}

#[ppio_test_macros::test]
async fn instances_sharing_a_key_share_its_request_budget() {
    // One request per second, no burst.
    let budget = ppio_operator::controller::Budget {
        per_second: Some(1.0),
        burst: 1,
    };
    let h = harness_with_budget(Some(KEY), budget).await;
    // Four polls: one sends its GET now; the others are queued in the key's line, which
    // sends them at the budget's pace (none waits inside its reconcile).
    let first = poll(&instance("i0", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(first.requested && !first.queued);
    let started = tokio::time::Instant::now();
    for n in 1..4u32 {
        let p = poll(&instance(&format!("i{n}"), None), &h.ctx, REFRESH, 0)
            .await
            .expect("poll");
        assert!(!p.requested && p.queued, "i{n} went past the budget");
        assert!(p.next.is_some_and(|n| n > Duration::ZERO), "{p:?}");
    }
    // Asked again while it waits, a GET keeps its place: nothing more is sent.
    let again = poll(&instance("i1", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    assert!(!again.requested && again.queued);
    assert!(h.sim.requests_for("ca338f12f3") <= 2);
    // The line sends the three, one a second.
    while h.sim.requests_for("ca338f12f3") < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the line sent them"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    // Each PpioInstance, polled again, takes its answer: no request of its own.
    for n in 1..4u32 {
        let p = poll(&instance(&format!("i{n}"), None), &h.ctx, REFRESH, 0)
            .await
            .expect("poll");
        assert!(p.requested && !p.queued && p.wrote, "i{n}: {p:?}");
    }
    assert_eq!(h.sim.requests_for("ca338f12f3"), 4);
}

#[ppio_test_macros::test]
async fn the_refresh_annotation_polls_an_object_at_most_every_ten_seconds() {
    let h = harness(Some(KEY)).await;
    let with_refresh = |value: &str, status| {
        let mut i = instance("a", status);
        i.metadata.annotations = Some([("gpus.ppio.com/refresh".to_string(), value.into())].into());
        Arc::new(DeserializeGuard(
            Ok(CachedInstance::new(i).expect("cached")),
        ))
    };
    reconcile(with_refresh("r1", None), h.ctx.clone())
        .await
        .expect("reconcile");
    assert_eq!(h.sim.requests_for("ca338f12f3"), 1);
    let answered = h.api.last_status();
    assert_eq!(answered.last_handled_refresh.as_deref(), Some("r1"));
    // A burst of new values right after: none polls now.
    for n in 2..20 {
        let action = reconcile(
            with_refresh(&format!("r{n}"), Some(answered.clone())),
            h.ctx.clone(),
        )
        .await
        .expect("reconcile");
        let text = format!("{action:?}");
        assert!(text.contains("requeue_after: Some"), "{text}");
    }
    assert_eq!(
        h.sim.requests_for("ca338f12f3"),
        1,
        "refresh spam must not spend the key's budget"
    );
}

#[ppio_test_macros::test]
async fn instance_metrics_follow_only_what_was_written() {
    let h = harness(Some(KEY)).await;
    h.api.fail_status_writes(true);
    let result = poll(&instance("a", None), &h.ctx, REFRESH, 0).await;
    assert!(result.is_err(), "the failed write is an error to retry");
    let series = "namespace=\"ml\",name=\"a\"";
    assert!(
        !h.ctx.metrics.encode().contains(series),
        "metrics report an observation that was never stored"
    );
    h.api.fail_status_writes(false);
    poll(&instance("a", None), &h.ctx, REFRESH, 0)
        .await
        .expect("poll");
    let text = h.ctx.metrics.encode();
    assert!(
        text.contains(&format!("ppio_instance_synced{{{series}}} 1")),
        "{text}"
    );
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_api_that_never_answers_does_not_hang_the_reconcile() {
    let h = harness(Some(KEY)).await;
    let recorder = kube::runtime::events::Recorder::new(
        h.api.client(),
        kube::runtime::events::Reporter {
            controller: "ppio-operator".into(),
            instance: Some("test".into()),
        },
    );
    let ctx = ppio_operator::controller::Context::new(
        h.api.client(),
        h.ctx.ppio.clone(),
        h.ctx.settings.clone(),
        h.ctx.metrics.clone(),
    )
    .with_recorder(recorder);
    poll(&instance("a", None), &ctx, REFRESH, 0)
        .await
        .expect("poll");
    let good = h.api.last_status();
    // The next poll fails: a Warning Event is due, and the Event API hangs.
    h.api.hang_events(true);
    h.sim.set_fault("ca338f12f3", Fault::status(503));
    let polled = tokio::time::timeout(
        Duration::from_secs(60),
        poll(&instance("a", Some(good)), &ctx, REFRESH, 0),
    )
    .await
    .expect("the reconcile finishes although the Event API never answers");
    assert!(polled.expect("poll").wrote);
    assert!(h.api.events().is_empty());
}

#[ppio_test_macros::test]
async fn secret_reads_do_not_grow_with_the_instances_that_use_the_secret() {
    let h = harness(None).await;
    h.api.put_secret("ml", "shared", "apiKey", KEY);
    let mut settings = h.ctx.settings.clone();
    settings.budget = ppio_operator::controller::Budget {
        per_second: None,
        burst: 1,
    };
    // The default Secret cache (the harness's own reads Secrets every time).
    let ctx = ppio_operator::controller::Context::new(
        h.api.client(),
        h.ctx.ppio.clone(),
        settings,
        h.ctx.metrics.clone(),
    );
    // 50 PpioInstances polled at once (a bulk apply, a restart): one read serves them all.
    let polls = (0..50).map(|n| {
        let mut i = instance(&format!("i{n}"), None);
        i.spec.credentials_secret_ref = Some(SecretKeyRef {
            name: "shared".into(),
            key: None,
        });
        let ctx = &ctx;
        async move { poll(&i, ctx, REFRESH, 0).await.expect("poll").requested }
    });
    let requested = futures::future::join_all(polls).await;
    assert!(requested.iter().all(|r| *r));
    assert_eq!(
        (h.api.secret_metadata_reads(), h.api.secret_reads()),
        (1, 1),
        "one read serves every PpioInstance"
    );
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
    // Rotated to a key PPIO refuses: the 401 makes the operator read the Secret again at once.
    h.api.put_secret("ml", "shared", "apiKey", "sk-revoked");
    let mut i = instance("i0", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "shared".into(),
        key: None,
    });
    h.sim.set_keys(vec!["sk-rotated".into()]);
    let p = poll(&i, &ctx, REFRESH, 0).await.expect("poll");
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("False".into(), "Unauthorized".into())
    );
    assert_eq!(
        h.api.secret_reads(),
        2,
        "the 401 made the Secret be read again"
    );
    assert!(
        p.next.expect("requeue") <= Duration::from_secs(60),
        "a refused key from a Secret is tried again within a minute"
    );
    // The Secret is rotated to the key PPIO accepts: the next poll's 401 (with the key still
    // cached) reads it again and retries at once with the new key.
    h.api.put_secret("ml", "shared", "apiKey", "sk-rotated");
    poll(&i, &ctx, REFRESH, 1).await.expect("poll");
    assert_eq!(h.api.secret_reads(), 3);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
}

#[ppio_test_macros::test]
async fn secrets_outside_the_credentials_namespaces_are_never_read() {
    let h = harness(None).await;
    h.api.put_secret("ml", "creds", "apiKey", KEY);
    let mut settings = h.ctx.settings.clone();
    settings.credentials_namespaces = Some(["team-b".to_string()].into());
    let ctx = ppio_operator::controller::Context::new(
        h.api.client(),
        h.ctx.ppio.clone(),
        settings,
        h.ctx.metrics.clone(),
    );
    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "creds".into(),
        key: None,
    });
    let p = poll(&i, &ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested, "nothing sent to PPIO");
    assert_eq!(
        (h.api.secret_metadata_reads(), h.api.secret_reads()),
        (0, 0)
    );
    let status = h.api.last_status();
    let synced = status.condition("Synced").expect("synced");
    assert_eq!(synced.reason, "CredentialsMissing");
    assert!(
        synced.message.contains("--credentials-namespaces"),
        "{}",
        synced.message
    );
}

#[ppio_test_macros::test]
async fn a_failing_secret_read_is_not_repeated_by_every_ppioinstance_waiting_for_it() {
    let h = harness(None).await;
    h.api.put_secret("ml", "shared", "apiKey", KEY);
    h.api.fail_secret_reads(true);
    let polls = (0..20).map(|n| {
        let mut i = instance(&format!("i{n}"), None);
        i.spec.credentials_secret_ref = Some(SecretKeyRef {
            name: "shared".into(),
            key: None,
        });
        let ctx = &h.ctx;
        async move { poll(&i, ctx, REFRESH, 0).await.is_err() }
    });
    let failed = futures::future::join_all(polls).await;
    assert!(
        failed.iter().all(|f| *f),
        "every poll fails and is retried later"
    );
    assert_eq!(
        h.api.secret_metadata_reads(),
        1,
        "one read for the 20 waiting"
    );
    // Read again once the failure is old enough, and used.
    h.api.fail_secret_reads(false);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut i = instance("i0", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "shared".into(),
        key: None,
    });
    assert!(poll(&i, &h.ctx, REFRESH, 0).await.expect("poll").requested);
    assert_eq!(h.api.secret_metadata_reads(), 2);
}

#[ppio_test_macros::test]
async fn a_secrets_data_is_read_again_only_when_it_changed() {
    // The harness looks at Secrets at every poll: each poll reads its metadata.
    let h = harness(None).await;
    h.api.put_secret("ml", "creds", "apiKey", KEY);
    let mut i = instance("a", None);
    i.spec.credentials_secret_ref = Some(SecretKeyRef {
        name: "creds".into(),
        key: None,
    });
    for _ in 0..3 {
        assert!(poll(&i, &h.ctx, REFRESH, 0).await.expect("poll").requested);
    }
    assert_eq!(
        (h.api.secret_metadata_reads(), h.api.secret_reads()),
        (3, 1),
        "the data is read once while the Secret is unchanged"
    );
    // Changed (a new resourceVersion): read again, and its new key used.
    h.api.put_secret("ml", "creds", "apiKey", "sk-other");
    h.sim.set_keys(vec!["sk-other".into()]);
    poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert_eq!(h.api.secret_reads(), 2);
    assert_eq!(
        condition(&h.api.last_status(), "Synced"),
        ("True".into(), "Observed".into())
    );
    // Unmarked since: refused, without reading its data.
    h.api
        .put_secret_marked("ml", "creds", "apiKey", "sk-other", false);
    let p = poll(&i, &h.ctx, REFRESH, 0).await.expect("poll");
    assert!(!p.requested);
    assert_eq!(h.api.secret_reads(), 2);
}

/// PpioInstances `q0`, `q1`... each naming an instance of its own, whose GETs answer faster
/// the later the PpioInstance: q0 after 250 ms, q4 after 50 ms.
fn slower_first(h: &Harness, n: usize) -> Vec<Arc<DeserializeGuard<CachedInstance>>> {
    let fixture: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture");
    (0..n)
        .map(|i| {
            let id = format!("q{i}");
            let mut item = fixture.clone();
            item["id"] = json!(id);
            h.sim.put_instance(&id, item);
            h.sim.set_fault(
                &id,
                Fault::latency(Duration::from_millis(50 * (n - i) as u64)),
            );
            let mut o = instance(&id, None);
            o.spec.instance_id = id;
            Arc::new(DeserializeGuard(
                Ok(CachedInstance::new(o).expect("cached")),
            ))
        })
        .collect()
}

/// Reconciles of [`slower_first`]'s `n` PpioInstances, each asked for (and waiting for its
/// turn) before the next.
async fn reconcile_in_turn(
    h: &Harness,
    n: usize,
) -> Vec<
    tokio::task::JoinHandle<
        Result<kube::runtime::controller::Action, ppio_operator::controller::Error>,
    >,
> {
    let mut tasks = Vec::new();
    for obj in slower_first(h, n) {
        tasks.push(tokio::spawn(reconcile(obj, h.ctx.clone())));
        tokio::task::yield_now().await;
    }
    tasks
}

#[ppio_test_macros::test]
async fn with_a_concurrency_limit_reconciles_start_in_the_order_asked() {
    let h = harness_with(Some(KEY), Budget::default(), |ctx| ctx.with_concurrency(1)).await;
    let tasks = reconcile_in_turn(&h, 5).await;
    for t in tasks {
        t.await.expect("task").expect("reconcile");
    }
    // The later ones answer faster: had they not waited their turn, they would be first.
    let written: Vec<tokio::time::Instant> = (0..5)
        .map(|i| {
            let w = h.api.writes_of(&format!("ml/q{i}"));
            assert_eq!(w.len(), 1, "q{i} written once");
            w[0].0
        })
        .collect();
    assert!(
        written.windows(2).all(|w| w[0] < w[1]),
        "written in the order asked: {written:?}"
    );
}

#[ppio_test_macros::test]
async fn stopping_ends_the_reconciles_that_wait_for_their_turn() {
    let h = harness_with(Some(KEY), Budget::default(), |ctx| ctx.with_concurrency(1)).await;
    let tasks = reconcile_in_turn(&h, 3).await;
    h.ctx.stop_reconciling();
    for t in tasks {
        t.await.expect("task").expect("reconcile");
    }
    // The one at work finished; the two waiting sent nothing.
    assert_eq!(h.sim.requests_for("q0"), 1);
    assert_eq!(h.sim.requests_for("q1") + h.sim.requests_for("q2"), 0);
    assert_eq!(h.api.patches().len(), 1);
}
