//! One classification of what a poll came to, and every policy that reads it: the `Synced`
//! condition reason, the Event type and how soon to look again. PPIO errors are classified
//! by [`PpioError::class`]; missing credentials and `spec.suspend` are classes of their own.

use std::time::Duration;

use crate::ppio::PpioError;
use crate::vocabulary::reason;

/// The class of a poll's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// PPIO returned the instance.
    Observed,
    /// PPIO no longer knows the instance (404, or 400 `RESOURCE_NOT_FOUND`).
    InstanceNotFound,
    /// The key was refused (401).
    Unauthorized,
    /// The key may not read the instance (403).
    Forbidden,
    /// The key's rate limit was reached (429).
    RateLimited,
    /// PPIO could not be reached, timed out or failed (5xx).
    ApiUnavailable,
    /// The answer cannot be mirrored (undecodable, too large, an unexpected status).
    InvalidResponse,
    /// PPIO refused the request (another 4xx).
    RequestRejected,
    /// No usable key: the referenced Secret or key is absent, or there is no default key.
    CredentialsMissing,
    /// `spec.suspend` is true: nothing was polled.
    Suspended,
}

/// When to look again after an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At the refresh interval (faster while the instance is in transition).
    Interval,
    /// Slowly: the instance is gone, and may only come back by a person's hand.
    Gone,
    /// After the error backoff (or the server's `Retry-After`, when it gave one).
    Backoff,
    /// Not until the PpioInstance changes.
    OnChange,
}

/// Where an outcome leaves the work towards a current observation: what the `Reconciling`
/// and `Stalled` conditions (read by kstatus, Flux and Argo CD) report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The observation is current (`Reconciling` False unless the state is transitional).
    Current,
    /// A transient failure the operator retries on its own (`Reconciling` True).
    Retrying,
    /// Nothing improves without a person (`Stalled` True).
    Stalled,
    /// Polling is suspended on purpose (both False).
    Paused,
}

/// The Event type of a transition into a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 10] = [
        Class::Observed,
        Class::InstanceNotFound,
        Class::Unauthorized,
        Class::Forbidden,
        Class::RateLimited,
        Class::ApiUnavailable,
        Class::InvalidResponse,
        Class::RequestRejected,
        Class::CredentialsMissing,
        Class::Suspended,
    ];

    /// The `Synced` condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Class::Observed => reason::OBSERVED,
            Class::InstanceNotFound => reason::INSTANCE_NOT_FOUND,
            Class::Unauthorized => reason::UNAUTHORIZED,
            Class::Forbidden => reason::FORBIDDEN,
            Class::RateLimited => reason::RATE_LIMITED,
            Class::ApiUnavailable => reason::API_UNAVAILABLE,
            Class::InvalidResponse => reason::INVALID_RESPONSE,
            Class::RequestRejected => reason::REQUEST_REJECTED,
            Class::CredentialsMissing => reason::CREDENTIALS_MISSING,
            Class::Suspended => reason::SUSPENDED,
        }
    }

    /// The class of a `Synced` condition reason written earlier.
    pub fn from_reason(reason: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.reason() == reason)
    }

    /// The type of the Event published when an instance enters this class.
    pub fn severity(self) -> Severity {
        match self {
            Class::Observed | Class::Suspended => Severity::Normal,
            _ => Severity::Warning,
        }
    }

    /// Where this outcome leaves the work towards a current observation.
    pub fn progress(self) -> Progress {
        match self {
            Class::Observed => Progress::Current,
            Class::ApiUnavailable | Class::RateLimited => Progress::Retrying,
            Class::Suspended => Progress::Paused,
            Class::InstanceNotFound
            | Class::Unauthorized
            | Class::Forbidden
            | Class::InvalidResponse
            | Class::RequestRejected
            | Class::CredentialsMissing => Progress::Stalled,
        }
    }

    /// When to look again.
    pub fn retry(self) -> Retry {
        match self {
            Class::Observed => Retry::Interval,
            Class::InstanceNotFound => Retry::Gone,
            Class::Suspended => Retry::OnChange,
            Class::Unauthorized
            | Class::Forbidden
            | Class::RateLimited
            | Class::ApiUnavailable
            | Class::InvalidResponse
            | Class::RequestRejected
            | Class::CredentialsMissing => Retry::Backoff,
        }
    }
}

impl PpioError {
    /// The class of this error.
    pub fn class(&self) -> Class {
        match self {
            PpioError::Connect
            | PpioError::Tls
            | PpioError::Timeout
            | PpioError::Server { .. }
            | PpioError::NotFoundWithoutPpioBody => Class::ApiUnavailable,
            PpioError::InvalidApiKey => Class::CredentialsMissing,
            PpioError::InvalidInstanceId => Class::RequestRejected,
            PpioError::Unauthorized => Class::Unauthorized,
            PpioError::Forbidden => Class::Forbidden,
            PpioError::NotFound { .. } => Class::InstanceNotFound,
            PpioError::RateLimited { .. } => Class::RateLimited,
            PpioError::Rejected { .. } => Class::RequestRejected,
            PpioError::UnexpectedStatus { .. }
            | PpioError::TooLarge { .. }
            | PpioError::Decode(_) => Class::InvalidResponse,
        }
    }

    /// The `Synced` condition reason for this error.
    pub fn reason(&self) -> &'static str {
        self.class().reason()
    }

    /// The status class of PPIO's answer, the `class` label of `ppio_api_requests`.
    pub fn request_class(&self) -> &'static str {
        match self {
            PpioError::Connect
            | PpioError::Tls
            | PpioError::Timeout
            | PpioError::InvalidApiKey
            | PpioError::InvalidInstanceId => "error",
            PpioError::Server { .. } => "5xx",
            PpioError::TooLarge { .. } | PpioError::Decode(_) => "2xx",
            PpioError::UnexpectedStatus { .. } => "other",
            PpioError::Unauthorized
            | PpioError::Forbidden
            | PpioError::NotFound { .. }
            | PpioError::NotFoundWithoutPpioBody
            | PpioError::RateLimited { .. }
            | PpioError::Rejected { .. } => "4xx",
        }
    }

    /// The server's `Retry-After`, when it gave one (429 only).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PpioError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_own_reason_and_reads_back() {
        let mut seen = std::collections::BTreeSet::new();
        for c in Class::ALL {
            assert!(seen.insert(c.reason()), "{c:?} shares its reason");
            assert_eq!(Class::from_reason(c.reason()), Some(c));
        }
        assert_eq!(Class::from_reason("Running"), None);
    }

    #[test]
    fn only_good_news_and_suspension_are_normal_events() {
        for c in Class::ALL {
            let normal = matches!(c, Class::Observed | Class::Suspended);
            assert_eq!(c.severity() == Severity::Normal, normal, "{c:?}");
        }
    }

    #[test]
    fn only_transient_failures_retry_and_only_a_person_unblocks_the_rest() {
        let retrying: Vec<Class> = Class::ALL
            .into_iter()
            .filter(|c| c.progress() == Progress::Retrying)
            .collect();
        assert_eq!(retrying, [Class::RateLimited, Class::ApiUnavailable]);
        assert_eq!(Class::Observed.progress(), Progress::Current);
        assert_eq!(Class::Suspended.progress(), Progress::Paused);
        for c in [
            Class::InstanceNotFound,
            Class::Unauthorized,
            Class::Forbidden,
            Class::InvalidResponse,
            Class::RequestRejected,
            Class::CredentialsMissing,
        ] {
            assert_eq!(c.progress(), Progress::Stalled, "{c:?}");
        }
    }

    #[test]
    fn the_retry_policy_per_class() {
        assert_eq!(Class::Observed.retry(), Retry::Interval);
        assert_eq!(Class::InstanceNotFound.retry(), Retry::Gone);
        assert_eq!(Class::Suspended.retry(), Retry::OnChange);
        for c in [
            Class::Unauthorized,
            Class::Forbidden,
            Class::RateLimited,
            Class::ApiUnavailable,
            Class::InvalidResponse,
            Class::RequestRejected,
            Class::CredentialsMissing,
        ] {
            assert_eq!(c.retry(), Retry::Backoff, "{c:?}");
        }
    }

    #[test]
    fn request_classes_follow_the_http_answer() {
        assert_eq!(PpioError::Timeout.request_class(), "error");
        assert_eq!(PpioError::Server { status: 503 }.request_class(), "5xx");
        assert_eq!(PpioError::Unauthorized.request_class(), "4xx");
        assert_eq!(PpioError::TooLarge { limit: 1 }.request_class(), "2xx");
        assert_eq!(
            PpioError::UnexpectedStatus { status: 302 }.request_class(),
            "other"
        );
        assert_eq!(
            PpioError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
            .retry_after(),
            Some(Duration::from_secs(3))
        );
    }
}
