//! The duration grammar of flags and `spec.refreshInterval` never panics, and a refresh
//! interval it accepts is within 10s..24h and prints back to a duration of the same length.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::duration(data));
