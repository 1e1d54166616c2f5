//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one
//! reconciles and writes.
//!
//! Expiry is judged by this process's own clock: a lease is taken over only when its record
//! (holder and renew time) has not changed for a whole lease duration since we last saw it
//! change, which is immune to clock skew between replicas.
//!
//! A leader's own term is judged the same way, and conservatively: it counts from the *start*
//! of its last successful renewal (the renew time it wrote is no earlier than that), and it
//! ends at that instant plus the renew deadline, whatever the API server is doing. Every Lease
//! call is bounded by the time left before that deadline ([`tokio::time::timeout_at`]), so a
//! slow or retrying API server cannot keep an old leader reconciling while a standby, which
//! waits a whole lease duration, takes over. [`Elector::hold`] returns at the deadline at the
//! latest; the caller stops reconciling then (see `operator::run_with`).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long [`Elector::release`] may take: a shutdown must not wait on a slow API server
/// (the lease then simply expires).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name, or host name and pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// A leader stops leading this long after the start of its last successful renewal
    /// (keep it well below `lease_duration`: the difference is the margin for a standby).
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Client-go's proportions: renew deadline 2/3 and retry period 2/15 of the lease duration.
    pub fn new(
        namespace: String,
        name: String,
        identity: String,
        lease_duration: Duration,
    ) -> Self {
        LeaderConfig {
            namespace,
            name,
            identity,
            lease_duration,
            renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
            retry_period: lease_duration
                .mul_f64(2.0 / 15.0)
                .max(Duration::from_millis(500)),
        }
    }
}

/// Why one acquire-or-renew round did not leave this replica holding the lease.
#[derive(Debug)]
enum RoundError {
    Api(kube::Error),
    /// The round did not finish before its deadline.
    TimedOut,
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Api(e) => e.fmt(f),
            RoundError::TimedOut => f.write_str("the API server did not answer in time"),
        }
    }
}

/// A lease election in progress.
pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    /// The last (holder, renew time) record seen, and when it was first seen.
    observed: Option<(String, Option<Timestamp>, Instant)>,
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// Waits until this replica holds the lease, and returns when the successful attempt
    /// *started*: the term is measured from there (pass it to [`Elector::hold`]). Each
    /// attempt is bounded by the renew deadline, so a hung call does not stall the standby.
    pub async fn acquire(&mut self) -> Instant {
        let mut announced = false;
        loop {
            let started = Instant::now();
            match self.round_until(started + self.config.renew_deadline).await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
                    return started;
                }
                Ok(false) => {
                    if !announced {
                        info!(lease = %self.config.name, holder = self.holder().unwrap_or("-"), "standing by: another replica holds the lease");
                        announced = true;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read or update the leader lease"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease every retry period and returns when this replica must stop leading:
    /// at the latest `renew_deadline` after the start of the last successful renewal (the
    /// first is `acquired`, from [`Elector::acquire`]), even in the middle of a Lease call,
    /// or as soon as another replica holds the lease.
    pub async fn hold(&mut self, acquired: Instant) {
        let mut renewed = acquired;
        loop {
            let deadline = renewed + self.config.renew_deadline;
            tokio::time::sleep_until((Instant::now() + self.config.retry_period).min(deadline))
                .await;
            let started = Instant::now();
            if started >= deadline {
                warn!(
                    renew_deadline_s = self.config.renew_deadline.as_secs_f64(),
                    "could not renew the leader lease within the renew deadline; stepping down"
                );
                return;
            }
            match self.round_until(deadline).await {
                Ok(true) => renewed = started,
                Ok(false) => {
                    warn!(
                        holder = self.holder().unwrap_or("-"),
                        "the leader lease was taken by another replica"
                    );
                    return;
                }
                Err(RoundError::TimedOut) => {
                    warn!(
                        renew_deadline_s = self.config.renew_deadline.as_secs_f64(),
                        "renewing the leader lease did not finish within the renew deadline; stepping down"
                    );
                    return;
                }
                Err(e) => warn!(error = %e, "renewing the leader lease failed"),
            }
        }
    }

    /// Gives the lease up so a standby can take over at once; gives up after
    /// [`RELEASE_TIMEOUT`] (the lease then expires on its own).
    pub async fn release(&mut self) {
        if tokio::time::timeout(RELEASE_TIMEOUT, self.release_now())
            .await
            .is_err()
        {
            warn!(
                timeout_s = RELEASE_TIMEOUT.as_secs_f64(),
                "releasing the leader lease timed out; it expires on its own"
            );
        }
    }

    async fn release_now(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the leader lease"),
            Err(e) => warn!(error = %e, "releasing the leader lease failed"),
        }
    }

    /// One acquire-or-renew round, abandoned at `deadline` (kube's client retries some
    /// answers on its own, so a round has no natural bound).
    async fn round_until(&mut self, deadline: Instant) -> Result<bool, RoundError> {
        match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
            Ok(r) => r.map_err(RoundError::Api),
            Err(_elapsed) => Err(RoundError::TimedOut),
        }
    }

    fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .map(|(h, _, _)| h.as_str())
            .filter(|h| !h.is_empty())
    }

    /// One round: true when this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = self.config.identity.clone();
        let duration_secs = self.config.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let record_changed = self
            .observed
            .as_ref()
            .is_none_or(|(h, r, _)| *h != holder || *r != renew);
        if record_changed {
            self.observed = Some((holder.clone(), renew, Instant::now()));
        }
        let their_duration =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_secs).max(0) as u64);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, _, seen)| seen.elapsed() >= their_duration);
        if holder != me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let taking_over = holder != me;
        let new_spec = lease.spec.get_or_insert_with(Default::default);
        new_spec.holder_identity = Some(me.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(MicroTime(now));
        if taking_over {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions = Some(new_spec.lease_transitions.unwrap_or(0) + 1);
            debug!(previous = %holder, "taking over the leader lease");
        }
        // `replace` carries the resourceVersion read above: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                let spec = updated.spec.unwrap_or_default();
                self.observed = Some((
                    spec.holder_identity.unwrap_or_default(),
                    spec.renew_time.map(|t| t.0),
                    Instant::now(),
                ));
                Ok(true)
            }
            Err(kube::Error::Api(ae)) if ae.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::{Value, json};

    use super::*;

    /// An in-memory Lease API whose answers take as long as the test says.
    #[derive(Default)]
    struct FakeApi {
        lease: Option<Value>,
        version: u64,
        /// The delay of each next request; `slow` once these are used up.
        delays: VecDeque<Duration>,
        slow: Duration,
        /// Every request fails with a 500.
        failing: bool,
        /// (method, when the request arrived).
        requests: Vec<(Method, Instant)>,
    }

    type Shared = Arc<Mutex<FakeApi>>;

    fn status(code: StatusCode, reason: &str) -> (StatusCode, Value) {
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code.as_u16()});
        (code, body)
    }

    fn answer(api: &mut FakeApi, method: &Method, body: &[u8]) -> (StatusCode, Value) {
        if api.failing {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
        }
        match *method {
            Method::GET => match &api.lease {
                Some(l) => (StatusCode::OK, l.clone()),
                None => status(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST | Method::PUT => {
                let mut lease: Value = serde_json::from_slice(body).expect("a Lease");
                let sent = lease["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                let current = api
                    .lease
                    .as_ref()
                    .and_then(|l| l["metadata"]["resourceVersion"].as_str().map(String::from));
                let conflict = if *method == Method::POST {
                    api.lease.is_some()
                } else {
                    current.is_none() || sent != current
                };
                if conflict {
                    return status(StatusCode::CONFLICT, "Conflict");
                }
                api.version += 1;
                lease["metadata"]["resourceVersion"] = json!(api.version.to_string());
                api.lease = Some(lease.clone());
                let code = if *method == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                (code, lease)
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }

    fn fake() -> (Client, Shared) {
        let shared: Shared = Arc::default();
        let api = shared.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let method = req.method().clone();
                let delay = {
                    let mut a = api.lock().expect("lock");
                    a.requests.push((method.clone(), Instant::now()));
                    a.delays.pop_front().unwrap_or(a.slow)
                };
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .expect("request body")
                    .to_bytes();
                tokio::time::sleep(delay).await;
                let (code, value) = answer(&mut api.lock().expect("lock"), &method, &body);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).expect("json")))
                    .expect("response");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        (Client::new(service, "ns"), shared)
    }

    /// Lease duration 15s: renew deadline 10s, retry period 2s.
    fn elector(client: Client, identity: &str) -> Elector {
        Elector::new(
            client,
            LeaderConfig::new(
                "ns".into(),
                "lease".into(),
                identity.into(),
                Duration::from_secs(15),
            ),
        )
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_hung_api_ends_the_term_at_the_renew_deadline() {
        let (client, api) = fake();
        let mut e = elector(client, "me");
        let acquired = e.acquire().await;
        assert_eq!(acquired.elapsed(), Duration::ZERO);
        api.lock().expect("lock").slow = HOUR;
        tokio::time::timeout(HOUR, e.hold(acquired))
            .await
            .expect("hold returns while the API hangs");
        assert_eq!(acquired.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_counts_from_the_start_of_its_attempt() {
        let (client, api) = fake();
        let mut e = elector(client, "me");
        let acquired = e.acquire().await;
        {
            // The first renewal (at 2s) succeeds, but its PUT takes 7s; then the API hangs.
            let mut a = api.lock().expect("lock");
            a.delays = [Duration::ZERO, Duration::from_secs(7)].into();
            a.slow = HOUR;
        }
        tokio::time::timeout(HOUR, e.hold(acquired))
            .await
            .expect("hold returns while the API hangs");
        // 2s (start of the renewal) + 10s, not 9s (its end) + 10s.
        assert_eq!(acquired.elapsed(), Duration::from_secs(12));
        let lease = api.lock().expect("lock").lease.clone().expect("lease");
        assert_eq!(lease["spec"]["holderIdentity"], "me");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_end_the_term_at_the_renew_deadline() {
        let (client, api) = fake();
        let mut e = elector(client, "me");
        let acquired = e.acquire().await;
        // Every request now fails at once, as from an API server that keeps refusing.
        api.lock().expect("lock").failing = true;
        tokio::time::timeout(HOUR, e.hold(acquired))
            .await
            .expect("hold returns");
        assert_eq!(acquired.elapsed(), Duration::from_secs(10));
        let renewals = api.lock().expect("lock").requests.len();
        assert!(renewals >= 4, "retried every retry period: {renewals}");
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_ends_the_term_at_the_next_renewal() {
        let (client, api) = fake();
        let mut e = elector(client, "me");
        let acquired = e.acquire().await;
        {
            let mut a = api.lock().expect("lock");
            let lease = a.lease.as_mut().expect("lease");
            lease["spec"]["holderIdentity"] = json!("other");
            lease["spec"]["renewTime"] = json!("2030-01-01T00:00:00.000000Z");
        }
        tokio::time::timeout(HOUR, e.hold(acquired))
            .await
            .expect("hold returns");
        assert_eq!(acquired.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn acquiring_counts_from_the_start_and_a_hung_attempt_is_retried() {
        let (client, api) = fake();
        api.lock().expect("lock").slow = Duration::from_secs(3);
        let mut e = elector(client.clone(), "me");
        let t0 = Instant::now();
        let acquired = e.acquire().await;
        // GET (404) and POST took 3s each; the term starts when the attempt did.
        assert_eq!(acquired, t0);
        assert_eq!(t0.elapsed(), Duration::from_secs(6));

        // A standby whose first request hangs gives that attempt up at the renew deadline and
        // tries again a retry period later.
        let (client, api) = fake();
        api.lock().expect("lock").delays = [HOUR].into();
        let mut e = elector(client, "me");
        let t0 = Instant::now();
        let acquired = tokio::time::timeout(HOUR, e.acquire())
            .await
            .expect("acquired");
        assert_eq!(acquired - t0, Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn release_is_bounded() {
        let (client, api) = fake();
        let mut e = elector(client, "me");
        e.acquire().await;
        let t0 = Instant::now();
        api.lock().expect("lock").slow = HOUR;
        tokio::time::timeout(HOUR, e.release())
            .await
            .expect("release returns");
        assert_eq!(t0.elapsed(), RELEASE_TIMEOUT);

        // With a quick API the lease is released for a standby to take at once.
        let (client, api) = fake();
        let mut e = elector(client.clone(), "me");
        e.acquire().await;
        e.release().await;
        let lease = api.lock().expect("lock").lease.clone().expect("lease");
        assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
        let mut standby = elector(client, "standby");
        let t0 = Instant::now();
        standby.acquire().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
