//! Who may read `/metrics`: the Kubernetes way, as controller-runtime's secure metrics serving
//! does. The scraper's bearer token is checked with a TokenReview, and the user it names
//! with a SubjectAccessReview for `get` on the non-resource URL `/metrics`; so a
//! ServiceAccount bound to a role with `nonResourceURLs: ["/metrics"], verbs: ["get"]` may
//! scrape, and nobody else.
//!
//! Verdicts are kept for a short while under a digest of the token (never the token itself),
//! and the reviews in flight are bounded, so a flood of scrapes cannot turn into a flood of
//! API requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::warn;

use crate::lock;
use crate::metrics::Metrics;

/// How `/metrics` is guarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuth {
    /// Anyone who reaches the port may read it.
    None,
    /// A bearer token that Kubernetes authenticates, of a user allowed `get` on `/metrics`.
    Kubernetes,
}

/// What a request may do with `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token, or one Kubernetes does not accept: 401.
    Unauthenticated,
    /// A known user without `get` on `/metrics`: 403.
    Forbidden,
    /// The reviews could not be made now (API server unreachable, too many at once): 503.
    Unavailable,
}

/// How long an allowed token is believed without asking again.
pub const ALLOWED_FOR: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Verdicts kept at most; past this, expired ones go, and then all.
const KEPT: usize = 1024;
/// Reviews in flight at most.
const REVIEWS: usize = 4;
/// How long a request waits for a review slot before it is answered 503.
const REVIEW_WAIT: Duration = Duration::from_secs(5);
/// The path and verb a scraper must be allowed.
pub const METRICS_PATH: &str = "/metrics";

/// Checks bearer tokens against the Kubernetes API.
pub struct Authorizer {
    client: kube::Client,
    metrics: Arc<Metrics>,
    verdicts: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
    reviews: Semaphore,
}

impl Authorizer {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Authorizer {
        Authorizer {
            client,
            metrics,
            verdicts: Mutex::new(HashMap::new()),
            reviews: Semaphore::new(REVIEWS),
        }
    }

    /// The verdict for a request's `Authorization` header.
    pub async fn check(&self, authorization: Option<&str>) -> Verdict {
        let Some(token) = bearer(authorization) else {
            return Verdict::Unauthenticated;
        };
        let digest = digest(token);
        if let Some(verdict) = self.kept(&digest) {
            return verdict;
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire()).await else {
            return Verdict::Unavailable;
        };
        // Another request with the same token may have asked meanwhile.
        if let Some(verdict) = self.kept(&digest) {
            return verdict;
        }
        let verdict = self.review(token).await;
        let keep = match verdict {
            Verdict::Allowed => Some(ALLOWED_FOR),
            Verdict::Unauthenticated | Verdict::Forbidden => Some(REFUSED_FOR),
            Verdict::Unavailable => None,
        };
        if let Some(keep) = keep {
            self.keep(digest, verdict, keep);
        }
        verdict
    }

    fn kept(&self, digest: &[u8; 32]) -> Option<Verdict> {
        let verdicts = lock(&self.verdicts);
        let (until, verdict) = verdicts.get(digest)?;
        (*until > Instant::now()).then_some(*verdict)
    }

    fn keep(&self, digest: [u8; 32], verdict: Verdict, keep: Duration) {
        let now = Instant::now();
        let mut verdicts = lock(&self.verdicts);
        if verdicts.len() >= KEPT {
            // Expired ones go first, then refusals: a flood of bad tokens never evicts the
            // scrapers that are allowed.
            verdicts.retain(|_, (until, _)| *until > now);
            if verdicts.len() >= KEPT {
                verdicts.retain(|_, (_, v)| *v == Verdict::Allowed);
            }
            if verdicts.len() >= KEPT && verdict != Verdict::Allowed {
                return;
            }
        }
        verdicts.insert(digest, (now + keep, verdict));
    }

    /// A TokenReview, then a SubjectAccessReview for the user it names.
    async fn review(&self, token: &str) -> Verdict {
        let tokens: Api<TokenReview> = Api::all(self.client.clone());
        let asked = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                ..Default::default()
            },
            ..Default::default()
        };
        self.metrics.serving.reviewed("TokenReview");
        let user = match tokens.create(&PostParams::default(), &asked).await {
            Ok(answer) => match answer.status {
                Some(status) if status.authenticated == Some(true) => status.user,
                _ => return Verdict::Unauthenticated,
            },
            Err(e) => return unavailable("TokenReview", &e),
        };
        let Some(user) = user else {
            return Verdict::Unauthenticated;
        };
        let access: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let asked = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(METRICS_PATH.into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        self.metrics.serving.reviewed("SubjectAccessReview");
        match access.create(&PostParams::default(), &asked).await {
            Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => Verdict::Allowed,
            Ok(_) => Verdict::Forbidden,
            Err(e) => unavailable("SubjectAccessReview", &e),
        }
    }
}

/// A review that failed: said by its code and reason only (an API error's message could
/// quote the request).
fn unavailable(kind: &str, e: &kube::Error) -> Verdict {
    match e {
        kube::Error::Api(status) => warn!(
            review = kind,
            code = status.code,
            reason = %status.reason,
            "cannot check a /metrics token; is the operator allowed to create {kind}s?"
        ),
        _ => warn!(
            review = kind,
            "cannot check a /metrics token: the Kubernetes API did not answer"
        ),
    }
    Verdict::Unavailable
}

/// The token of an `Authorization: Bearer ...` header.
fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= 16 * 1024)
        .then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_read() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
        let huge = format!("Bearer {}", "a".repeat(20_000));
        assert_eq!(bearer(Some(&huge)), None);
    }

    #[test]
    fn a_token_is_kept_as_a_digest() {
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a"), digest("a"));
    }
}
