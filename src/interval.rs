//! Refresh intervals: the `30s`, `5m`, `1h30m` durations of `spec.refreshInterval` and
//! `--default-refresh-interval`, and the bounds the CRD enforces on them.

use std::time::Duration;

/// The shortest refresh interval a user may ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest refresh interval a user may ask for.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Why a refresh interval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("'{0}' is not a duration of hours, minutes and seconds such as 30s, 5m, 1h or 1m30s")]
    Format(String),
    #[error("'{0}' is outside the allowed range 10s..24h")]
    Range(String),
}

/// Parses a duration made of `<digits><h|m|s>` groups (the format the CRD's pattern allows)
/// and checks it lies within 10s..24h.
pub fn parse_refresh_interval(text: &str) -> Result<Duration, IntervalError> {
    let format_error = || IntervalError::Format(text.chars().take(40).collect());
    if text.is_empty() {
        return Err(format_error());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => digits.push(c),
            'h' | 'm' | 's' => {
                if digits.is_empty() || digits.len() > 9 {
                    return Err(format_error());
                }
                let n: u64 = digits.parse().map_err(|_| format_error())?;
                let unit = match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                total = total.saturating_add(n.saturating_mul(unit));
                digits.clear();
            }
            _ => return Err(format_error()),
        }
    }
    if !digits.is_empty() {
        return Err(format_error());
    }
    let d = Duration::from_secs(total);
    if !(MIN_REFRESH..=MAX_REFRESH).contains(&d) {
        return Err(IntervalError::Range(text.to_string()));
    }
    Ok(d)
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
    }

    #[test]
    fn refuses_bad_format_and_range() {
        for bad in ["", "abc", "10", "s", "1.5m", "-10s", "10ms", "1d", "10 s"] {
            assert!(
                matches!(parse_refresh_interval(bad), Err(IntervalError::Format(_))),
                "{bad}"
            );
        }
        for out in ["1s", "9s", "24h1s", "25h", "0s"] {
            assert!(
                matches!(parse_refresh_interval(out), Err(IntervalError::Range(_))),
                "{out}"
            );
        }
    }
}
