//! `Retry-After` (delay-seconds or an HTTP date, judged against the response's `Date`) never
//! panics and never asks for more than the cap.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::retry_after(data));
