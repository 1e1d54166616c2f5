//! `Retry-After` (delay-seconds or an HTTP date, judged against the response's `Date`) never
//! panics and never asks for more than the cap.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use ppio_operator::ppio::{MAX_RETRY_AFTER, parse_retry_after};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (value, date) = match text.split_once('\n') {
        Some((v, d)) => (v, Some(d)),
        None => (text.as_ref(), None),
    };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    if let Some(d) = parse_retry_after(value, date, now) {
        assert!(d <= MAX_RETRY_AFTER);
    }
});
