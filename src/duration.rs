//! The one duration grammar of the operator: every duration flag, environment variable and
//! `spec.refreshInterval` is one or more `<digits><unit>` groups with the units `h`, `m`, `s`
//! and `ms`, such as `30s`, `5m`, `1h30m` or `500ms`. Each use then checks its own range.

use std::fmt;
use std::time::Duration;

/// The shortest refresh interval a user may ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest refresh interval a user may ask for.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// The OpenAPI pattern of a duration (the CRD's `spec.refreshInterval`).
pub const PATTERN: &str = r"^([0-9]{1,9}(h|ms|m|s))+$";

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("'{0}' is not a duration such as 30s, 5m, 1h30m or 500ms")]
    Format(String),
    #[error("'{text}' is outside the allowed range {min}..{max}")]
    Range {
        text: String,
        min: Human,
        max: Human,
    },
}

/// A duration printed in the grammar it is read in (`1h30m`, `10s`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    /// In the largest unit that is exact: `24h`, `60s`, `1500ms` (never `1m`, so that a
    /// default reads like the contract's `60s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms > 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// Parses a duration of the grammar (no range check).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let format_error = || DurationError::Format(text.chars().take(40).collect());
    if text.is_empty() {
        return Err(format_error());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 9 {
            return Err(format_error());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format_error())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(format_error());
        };
        rest = &rest[len..];
        total = total.saturating_add(unit.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX)));
    }
    Ok(total)
}

/// Parses a duration and checks it lies within `min..=max`.
pub fn parse_duration_within(
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, DurationError> {
    let d = parse_duration(text)?;
    if !(min..=max).contains(&d) {
        return Err(DurationError::Range {
            text: text.chars().take(40).collect(),
            min: Human(min),
            max: Human(max),
        });
    }
    Ok(d)
}

/// Parses a refresh interval (`spec.refreshInterval`, `--default-refresh-interval`): 10s..24h.
pub fn parse_refresh_interval(text: &str) -> Result<Duration, DurationError> {
    parse_duration_within(text, MIN_REFRESH, MAX_REFRESH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_refresh_interval("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_refresh_interval("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_refresh_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_refresh_interval("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_refresh_interval("10s"), Ok(MIN_REFRESH));
        assert_eq!(parse_refresh_interval("24h"), Ok(MAX_REFRESH));
        assert_eq!(
            parse_refresh_interval("10500ms"),
            Ok(Duration::from_millis(10_500))
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn refuses_bad_format_and_range() {
        for bad in [
            "",
            "abc",
            "10",
            "s",
            "1.5m",
            "-10s",
            "1d",
            "10 s",
            "ms",
            "1msx",
            "1234567890s",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Format(_))),
                "{bad}"
            );
        }
        for out in ["1s", "9s", "24h1s", "25h", "0s", "10ms"] {
            assert!(
                matches!(
                    parse_refresh_interval(out),
                    Err(DurationError::Range { .. })
                ),
                "{out}"
            );
        }
        assert_eq!(
            parse_refresh_interval("25h").map_err(|e| e.to_string()),
            Err("'25h' is outside the allowed range 10s..24h".to_string())
        );
    }

    #[test]
    fn human_prints_the_grammar() {
        assert_eq!(Human(Duration::from_secs(5400)).to_string(), "5400s");
        assert_eq!(Human(Duration::from_secs(7200)).to_string(), "2h");
        assert_eq!(Human(Duration::from_secs(60)).to_string(), "60s");
        assert_eq!(Human(Duration::from_millis(500)).to_string(), "500ms");
        assert_eq!(Human(Duration::from_secs(10)).to_string(), "10s");
    }
}
