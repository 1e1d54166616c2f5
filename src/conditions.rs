//! A status condition as every writer of one builds it: its transition time kept while its
//! status stays, its message cut to a bounded length.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The longest condition message.
pub const MAX_MESSAGE_CHARS: usize = 256;

/// A condition of `type_` replacing `old`: its last transition time is `old`'s while the
/// status stays, else `now`.
pub fn make_condition(
    old: Option<&Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let last_transition_time = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: bounded(message),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Cuts a message to [`MAX_MESSAGE_CHARS`] characters.
pub fn bounded(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_string();
    }
    let mut out: String = message.chars().take(MAX_MESSAGE_CHARS - 3).collect();
    out.push_str("...");
    out
}
