//! The per-key side of the controller: what each API key owns, shared by every PpioInstance
//! that uses it.
//!
//! - [`budget`]: the key's request budget (a rate with a burst) and the namespaces' fair
//!   shares of it;
//! - [`line`]: the key's request line and its task, the one task of the key: it hands out
//!   the budget (walk pages, urgent GETs, the fair line, routine GETs and money calls, in that
//!   order, after a key's first money calls), runs the key's walks, sends the full GETs
//!   planned for their due time and the GETs that waited, and keeps their answers;
//! - [`sweep`]: the key's walks over its LIST and its plan (walks or GETs, their period, the
//!   full-refresh stretch), run by the key's task;
//! - `plans`: the full GETs planned on a key's line, in the order they come due;
//! - [`ledger`]: the key's catalogue, bills and balance;
//! - [`wakes`]: the PpioInstances a walk answers, handed to the controller key by key;
//! - [`permits`]: the reconcile permits, shared between the sources of API keys.
//!
//! Nothing here calls into the per-object side (`poll`, `apply`, `events`, `export`); the
//! per-object side asks the keys.

pub mod budget;
pub mod ledger;
pub mod line;
pub mod permits;
mod plans;
pub mod sweep;
pub mod wakes;

use std::time::Duration;

use tokio::time::Instant;

/// Runs one of a key's tasks (`start` makes it anew) until it returns. A panic ends the run:
/// it is counted in `ppio_api_key_restarts_total` and said in the log, `after_panic` tidies
/// what the task left, and the task starts again after the error backoff.
pub(crate) async fn supervise<Fut: std::future::Future<Output = ()>>(
    metrics: &crate::metrics::Metrics,
    fingerprint: u64,
    task: &str,
    mut start: impl FnMut() -> Fut,
    mut after_panic: impl FnMut(),
) {
    use futures::FutureExt;
    let mut restarts = 0u32;
    loop {
        let ran = std::panic::AssertUnwindSafe(start()).catch_unwind().await;
        if ran.is_ok() {
            return;
        }
        restarts = restarts.saturating_add(1);
        metrics.api.key_restarts.inc();
        tracing::warn!(
            key = key_label(fingerprint).as_str(),
            "the {task} of this API key ended unexpectedly; starting it again"
        );
        after_panic();
        tokio::time::sleep(crate::controller::schedule::backoff(restarts)).await;
    }
}

/// An API key as logs and metrics name it (label `key`): its fingerprint, never the key.
pub(crate) fn key_label(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

/// A key's polls that run this much later than due (and later than a tenth of their
/// interval) are reported, at most once per [`LATENESS_REPORT_GAP`] per key.
pub const LATENESS_WARNING: Duration = Duration::from_secs(10);
/// The shortest gap between two lateness warnings of one key.
pub const LATENESS_REPORT_GAP: Duration = Duration::from_secs(300);

/// Whether a key's lateness of `late`, for PpioInstances refreshed every `refresh`, is worth
/// a log line now: late by more than [`LATENESS_WARNING`] and a tenth of the interval, and
/// the last line (`said`) longer than [`LATENESS_REPORT_GAP`] ago. Records the line.
pub(crate) fn worth_saying(late: Duration, refresh: Duration, said: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if late < LATENESS_WARNING.max(refresh / 10)
        || said.is_some_and(|at| now.saturating_duration_since(at) < LATENESS_REPORT_GAP)
    {
        return false;
    }
    *said = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lateness_is_said_when_large_and_at_most_once_per_gap() {
        let minute = Duration::from_secs(60);
        let mut said = None;
        // Under both LATENESS_WARNING and a tenth of the interval: not worth a line.
        assert!(!worth_saying(Duration::from_secs(5), minute, &mut said));
        // A tenth of a long interval is the bar when it is higher.
        assert!(!worth_saying(
            Duration::from_secs(30),
            Duration::from_secs(600),
            &mut said
        ));
        assert!(worth_saying(Duration::from_secs(11), minute, &mut said));
        assert!(!worth_saying(Duration::from_secs(100), minute, &mut said));
        tokio::time::advance(LATENESS_REPORT_GAP - Duration::from_secs(1)).await;
        assert!(!worth_saying(Duration::from_secs(100), minute, &mut said));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(worth_saying(Duration::from_secs(100), minute, &mut said));
    }
}
