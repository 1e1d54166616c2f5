//! Throughput and memory of the hot path, printed as figures:
//!
//!   cargo bench --bench reconcile
//!
//! 0. the peak memory of decoding 1 MiB responses of many tiny values;
//! 1. decoding a PPIO response and computing the status (pure, no I/O);
//! 2. full polls (Secret-less key, real HTTP to the simulator on 127.0.0.1, a mocked
//!    Kubernetes API) for many PpioInstances at once, with unchanged instances (no writes).

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use ppio_operator::controller::{Budget, poll};
use ppio_operator::ppio::Instance;
use ppio_operator::status::{Observation, compute_status};
use ppio_testenv::mock::*;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Peak memory of decoding 1 MiB responses made of many tiny values (the worst case for a
/// JSON tree), measured first, while the process is still small.
fn decode_memory() {
    let tiny_numbers = {
        let mut body =
            String::from(r#"{"status":{"status":"running"},"resource_specs":{"gpu_ids":["#);
        while body.len() < 1024 * 1024 - 16 {
            body.push_str("1,");
        }
        body.push_str("1]}}");
        body
    };
    let tiny_objects = {
        let mut body = String::from(r#"{"status":{"status":"running"},"ports":["#);
        while body.len() < 1024 * 1024 - 32 {
            body.push_str(r#"{"port":1},"#);
        }
        body.push_str(r#"{"port":1}]}"#);
        body
    };
    for (what, body) in [
        ("tiny numbers", tiny_numbers),
        ("tiny objects", tiny_objects),
    ] {
        let before = peak_rss_kib();
        let decoded = Instance::from_slice(body.as_bytes()).expect("decodes");
        let after = peak_rss_kib();
        drop(decoded);
        println!(
            "decode a {} KiB body of {what}: peak resident memory +{} KiB",
            body.len() / 1024,
            after.saturating_sub(before)
        );
    }
}

fn pure_path() {
    let body = FIXTURE.as_bytes();
    let n = 50_000u32;
    let start = Instant::now();
    let mut status = None;
    for i in 0..n {
        let instance = Instance::from_slice(body).expect("decodes");
        let now = jiff::Timestamp::from_second(1_750_000_000 + i as i64).expect("time");
        status = Some(compute_status(
            "ca338f12f3",
            Some(1),
            None,
            Observation::Instance(&instance),
            status.as_ref(),
            now,
        ));
    }
    let per = start.elapsed() / n;
    println!(
        "decode + compute status: {:>8.1} µs/op  ({:.0} ops/s)",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
}

async fn polls(instances: usize, concurrency: usize) {
    let h = harness_with_budget(
        Some(KEY),
        Budget {
            per_second: None,
            burst: 1,
        },
    )
    .await;
    // The first round writes each status once; measure the second, unchanged round.
    let mut objects: Vec<_> = (0..instances)
        .map(|i| instance(&format!("i{i}"), None))
        .collect();
    futures::stream::iter(objects.iter())
        .for_each_concurrent(concurrency, |o| {
            let ctx = h.ctx.clone();
            async move {
                poll(o, &ctx, REFRESH, 0).await.expect("poll");
            }
        })
        .await;
    let status = h.api.last_status();
    for o in &mut objects {
        o.status = Some(status.clone());
    }
    let writes_before = h.api.patches().len();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(instances)));
    let start = Instant::now();
    futures::stream::iter(objects.iter())
        .for_each_concurrent(concurrency, |o| {
            let ctx = h.ctx.clone();
            let latencies = latencies.clone();
            async move {
                let t = Instant::now();
                let p = poll(o, &ctx, REFRESH, 0).await.expect("poll");
                assert!(p.requested && !p.wrote);
                latencies.lock().expect("lock").push(t.elapsed());
            }
        })
        .await;
    let elapsed = start.elapsed();
    let mut l = latencies.lock().expect("lock").clone();
    l.sort();
    let pct = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize];
    println!(
        "unchanged polls: {instances} instances, {concurrency} at once: {:>7.0} polls/s, p50 {:>6.2} ms, p99 {:>6.2} ms, writes {}",
        instances as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        h.api.patches().len() - writes_before,
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: stay quick then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    decode_memory();
    pure_path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(polls(2_000, 16));
    rt.block_on(polls(2_000, 64));
    println!("peak resident memory: {} MiB", peak_rss_kib() / 1024);
}
