//! The duration grammar of flags and `spec.refreshInterval` never panics, and a refresh
//! interval it accepts is within 10s..24h and prints back to a duration of the same length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppio_operator::duration::{
    Human, MAX_REFRESH, MIN_REFRESH, parse_duration, parse_refresh_interval,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let plain = parse_duration(&text);
    if let Ok(d) = parse_refresh_interval(&text) {
        assert!((MIN_REFRESH..=MAX_REFRESH).contains(&d));
        assert_eq!(plain, Ok(d));
        assert_eq!(parse_duration(&Human(d).to_string()), Ok(d));
    }
});
