//! Each API key's request budget: a steady rate with a burst allowance, shared by every
//! PpioInstance that uses the key (served by the key's line, [`super::line`]), and each
//! namespace's fair share of it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// A request rate per API key: a steady rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Requests per second per key; `None`: unlimited.
    pub per_second: Option<f64>,
    /// Requests that may go at once before the rate applies.
    pub burst: u32,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_second: Some(DEFAULT_REQUESTS_PER_SECOND),
            burst: DEFAULT_BURST,
        }
    }
}

impl Budget {
    /// The time between two requests at the steady rate; `None`: unlimited.
    pub fn interval(&self) -> Option<Duration> {
        let rate = self.per_second.filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(1.0 / rate))
    }
}

/// The default request rate per API key.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 10.0;
/// The default burst per API key.
pub const DEFAULT_BURST: u32 = 20;

/// How long a namespace's routine GETs count towards its recent use of a key: the time
/// constant of its decaying count.
pub const SHARE_MEMORY: Duration = Duration::from_secs(120);

/// The routine GETs each namespace asked of one key lately (counts decaying with
/// [`SHARE_MEMORY`]), for the fair share between namespaces.
#[derive(Debug, Default)]
pub(super) struct Shares {
    /// By namespace: the decayed count and when it was last brought up to date.
    by_namespace: HashMap<String, (f64, Instant)>,
}

impl Shares {
    /// Counts one routine GET of `namespace`; whether the namespace is within its fair share:
    /// it asked less lately than the average namespace using the key (a key used by one
    /// namespace alone has no share to keep).
    pub(super) fn ask(&mut self, namespace: &str, now: Instant) -> bool {
        let decay = |(count, at): (f64, Instant)| {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            count * (-dt / SHARE_MEMORY.as_secs_f64()).exp()
        };
        // Bring every count to now; forget namespaces that asked nothing for a long while.
        self.by_namespace.retain(|_, entry| {
            *entry = (decay(*entry), now);
            entry.0 >= 0.01
        });
        // A namespace already counted is found without a copy of its name.
        let own = match self.by_namespace.get_mut(namespace) {
            Some(entry) => entry,
            None => self
                .by_namespace
                .entry(namespace.to_string())
                .or_insert((0.0, now)),
        };
        own.0 += 1.0;
        let own = own.0;
        let total: f64 = self.by_namespace.values().map(|(c, _)| c).sum();
        own < total / self.by_namespace.len() as f64
    }
}
