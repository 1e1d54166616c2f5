//! Whatever PPIO sends: the response decoders and `compute_status` never panic, the status
//! stays within its size bound, and no secret of the instance object reaches it.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::decode_status(data));
