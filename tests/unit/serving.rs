//! The HTTP server under slow and many scrapers: the operator's `server::serve` on loopback
//! with a metrics text of several MB, and clients that ask for /metrics and never read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use ppio_operator::metrics::Metrics;
use ppio_operator::server::{self, Health, Limits, Routes, SCRAPES, Serving};

use crate::support::{WAIT, http_get, wait_until};

/// One series per PpioInstance for 40,000 of them: a metrics text of several MB.
fn large_metrics() -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    for i in 0..40_000 {
        metrics
            .instances
            .observed_at("team-a", &format!("instance-{i:05}"), SystemTime::now());
    }
    metrics
}

/// The operator's server with `serving` on a port of 127.0.0.1, until the test ends.
async fn serve(serving: Serving, routes: Routes) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        routes,
        serving,
        std::future::pending(),
    ));
    addr
}

/// A client that asks for /metrics with a tiny receive buffer and then reads nothing.
async fn stalled_scraper(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\n\r\n")
        .await
        .expect("request");
    stream
}

/// The value of `ppio_metrics_scrapes_total{result=...}`.
fn scrapes(metrics: &Metrics, result: &str) -> u64 {
    let prefix = format!("ppio_metrics_scrapes_total{{result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

#[ppio_test_macros::test]
async fn scrapers_that_never_read_hold_no_slot_for_long_and_never_delay_the_probes() {
    let metrics = large_metrics();
    let size = metrics.encode().len();
    assert!(size > 3_000_000, "a large metrics text ({size} bytes)");
    let health = Arc::new(Health::default());
    health.ready.store(true, Ordering::Relaxed);
    let mut serving = Serving::open(health, metrics.clone());
    // Longer than a scrape waits for a slot, so the first SCRAPES hold theirs throughout.
    serving.limits = Limits {
        write_stall: Duration::from_secs(8),
        // All 40 come from 127.0.0.1.
        per_peer: 64,
        ..Limits::default()
    };
    let addr = serve(serving, Routes::All).await;

    // 40 scrapers that never read: SCRAPES of them are sent the text, the others wait for a
    // slot and are told to come back.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        stalled.push(stalled_scraper(addr).await);
    }
    // The probes answer meanwhile, on the same port.
    let (code, body) = http_get(addr, "/readyz").await.expect("/readyz answers");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    wait_until(
        "the scrapes beyond the slots told to come back",
        WAIT,
        async || (scrapes(&metrics, "busy") == 40 - SCRAPES as u64).then_some(()),
    )
    .await;
    assert_eq!(scrapes(&metrics, "served"), SCRAPES as u64);

    // A scraper that stops reading loses its connection once its write stalls, and a
    // reading scraper is then served the whole text.
    let text = wait_until("a reading scraper served", WAIT, async || {
        http_get(addr, "/metrics")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await
    .1;
    assert!(text.ends_with("# EOF\n"), "the whole text");
    assert!(text.contains("instance-39999"));
    // What the stalled ones got: the text cut short and the connection closed, or a 503
    // (on a connection kept open for another request).
    let reads = stalled.into_iter().map(|mut s| async move {
        let mut got = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got))
            .await
            .is_ok();
        (ended, String::from_utf8_lossy(&got).into_owned())
    });
    let mut cut = 0;
    for (ended, text) in futures::future::join_all(reads).await {
        if text.starts_with("HTTP/1.1 200") {
            assert!(ended, "the server closed a stalled scrape");
            assert!(!text.ends_with("# EOF\n"), "a stalled scrape was cut short");
            cut += 1;
        } else {
            assert!(
                text.starts_with("HTTP/1.1 503"),
                "{}",
                &text[..40.min(text.len())]
            );
        }
    }
    assert_eq!(cut, SCRAPES);
}

#[ppio_test_macros::test]
async fn one_address_cannot_take_every_connection() {
    let health = Arc::new(Health::default());
    health.ready.store(true, Ordering::Relaxed);
    let mut serving = Serving::open(health, Arc::new(Metrics::new()));
    serving.limits = Limits {
        per_peer: 4,
        ..Limits::default()
    };
    let addr = serve(serving, Routes::Health).await;
    // Four connections that send nothing hold the address's share.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // A fifth from the same address is closed at once, unanswered.
    let refused = http_get(addr, "/readyz").await;
    assert_eq!(refused, None, "a fifth connection was served");
    // Once one of the four goes, the address is served again.
    drop(idle.pop());
    let (code, _) = wait_until("served again", WAIT, async || {
        http_get(addr, "/readyz").await
    })
    .await;
    assert_eq!(code, 200);
}

#[ppio_test_macros::test]
async fn a_scraper_that_reads_a_few_bytes_now_and_then_is_cut_off() {
    let metrics = large_metrics();
    let size = metrics.encode().len();
    let health = Arc::new(Health::default());
    let mut serving = Serving::open(health, metrics);
    serving.limits = Limits {
        write_stall: Duration::from_secs(2),
        ..Limits::default()
    };
    let addr = serve(serving, Routes::All).await;
    // 4 KiB every 200 ms: about 20 KB/s, far below the 256 KiB per 2 s asked for.
    let mut s = stalled_scraper(addr).await;
    let mut got = 0;
    let mut buf = vec![0; 4096];
    let mut closed = false;
    for _ in 0..200 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => got += n,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "still served after 40 s ({got} of {size} bytes)");
    assert!(got < size, "{got} of {size} bytes");
}
