//! Leader election on a coordination.k8s.io Lease, so that of several replicas only one
//! reconciles and writes.
//!
//! Expiry is judged by this process's own clock: a lease is taken over only when its record
//! (holder and renew time) has not changed for a whole lease duration since we last saw it
//! change, which is immune to clock skew between replicas.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name, or host name and pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// A leader that could not renew for this long gives up.
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

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        let mut announced = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became the leader");
                    return;
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

    /// Renews the lease until renewal fails for longer than the renew deadline (or another
    /// replica took it); then returns.
    pub async fn hold(&mut self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(
                        holder = self.holder().unwrap_or("-"),
                        "the leader lease was taken by another replica"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "renewing the leader lease failed");
                    if last_renewed.elapsed() >= self.config.renew_deadline {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so a standby can take over at once.
    pub async fn release(&mut self) {
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
