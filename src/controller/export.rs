//! The export step: after the status of an observation is computed, the objects a
//! PpioInstance asks for (`spec.connectionSecret`, `spec.service`) are brought in line with
//! it, and the `Exported` condition says how that went.
//!
//! Writes happen only when the content changes: the step remembers a digest of what it last
//! tried per PpioInstance, and reads the objects again only when the content differs or the
//! part is due: [`VERIFY_EVERY`] after it was found current (an object deleted or edited by
//! hand is put back then), or after a doubling wait from [`RETRY_EVERY`] when it could not be
//! written. The operator never writes an object it does not own (an ownerReference with
//! `controller: true` to this PpioInstance).
//!
//! The connection Secret needs the instance's passwords, which only a GET carries: it is
//! written at GET observations; the Service and its EndpointSlices follow every observation
//! (LIST items carry the ports and the state).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort as KubeServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Context, KUBE_CALL_TIMEOUT};
use crate::conditions::make_condition;
use crate::crd::{PpioInstance, PpioInstanceStatus};
use crate::export::{
    ConnectionData, INSTANCE_LABEL, MANAGED_BY_LABEL, SERVICE_NAME_LABEL, SLICE_MANAGER,
    ServicePlan, ServicePort, connection_data, service_plan, slice_name, valid_service_name,
};
use crate::lock;
use crate::metrics::ExportWriteLabels;
use crate::ppio::Instance;
use crate::vocabulary::{condition, reason, status as cstatus};

/// How long a check of an exported object stands: after it, the next observation reads the
/// object again (and puts it back if it was changed or deleted by hand).
pub const VERIFY_EVERY: Duration = Duration::from_secs(600);
/// How soon an export that could not be written is tried again (a name taken by another
/// object, an API server error); the wait doubles with each try that fails, up to
/// [`VERIFY_EVERY`].
pub const RETRY_EVERY: Duration = Duration::from_secs(30);

/// How one export ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Written and current.
    Current(String),
    /// Not (fully) written: a condition reason and a message.
    Failed(&'static str, String),
}

/// What the step remembers of one export of one PpioInstance.
#[derive(Debug, Clone)]
struct Part {
    /// The object's name.
    name: String,
    /// The digest of the content last tried (`None`: nothing was tried).
    tried: Option<u64>,
    /// When it is to be read (and written if needed) again.
    next: Instant,
    /// How the last try ended (`None`: it failed before saying, e.g. the API server did not
    /// answer).
    outcome: Option<Outcome>,
    /// The connection Secret's data from the last GET (kept to write it again without one).
    data: Option<ConnectionData>,
    /// Tries in a row that did not make it current.
    failures: u32,
}

impl Part {
    /// A try's result; `before` is the part before it (for the count of failed tries).
    fn new(
        name: &str,
        tried: Option<u64>,
        current: bool,
        outcome: Option<Outcome>,
        before: Option<&Part>,
    ) -> Part {
        let failures = match current {
            true => 0,
            false => before.map_or(0, |b| b.failures).saturating_add(1),
        };
        let wait = match failures {
            0 => VERIFY_EVERY,
            n => RETRY_EVERY
                .saturating_mul(1 << (n - 1).min(5))
                .min(VERIFY_EVERY),
        };
        Part {
            name: name.into(),
            tried,
            next: Instant::now() + wait,
            outcome,
            data: None,
            failures,
        }
    }

    /// Whether it is to be read again now.
    fn due(&self, now: Instant) -> bool {
        self.next <= now
    }
}

#[derive(Debug, Default)]
struct Memo {
    secret: Option<Part>,
    service: Option<Part>,
}

impl Memo {
    /// When the first part is to be read again.
    fn next(&self) -> Option<Instant> {
        [&self.secret, &self.service]
            .into_iter()
            .flatten()
            .map(|p| p.next)
            .min()
    }
}

/// Every PpioInstance's exports, as last written or found.
#[derive(Debug, Default)]
pub struct Exports {
    memo: Mutex<HashMap<(String, String), Memo>>,
    hasher: RandomState,
}

impl Exports {
    /// Forgets a deleted PpioInstance (its objects go with it, by their ownerReferences).
    pub fn forget(&self, ns: &str, name: &str) {
        lock(&self.memo).remove(&(ns.to_string(), name.to_string()));
    }

    /// Whether the PpioInstance's connection Secret waits for a GET: it asks for one, the
    /// operator may write it, and no GET has brought its data since the operator started.
    pub fn wants_fetch(&self, instance: &PpioInstance, allowed: bool) -> bool {
        let Some(spec) = instance.spec.connection_secret.as_ref() else {
            return false;
        };
        if !allowed {
            return false;
        }
        let key = (
            instance.namespace().unwrap_or_default(),
            instance.name_any(),
        );
        !lock(&self.memo)
            .get(&key)
            .and_then(|m| m.secret.as_ref())
            .is_some_and(|p| p.name == spec.name && p.data.is_some())
    }

    /// When the PpioInstance's exports are to be read again (a check of what was written, or
    /// another try of what could not be); `None` when it has none.
    pub fn next_check(&self, object: (&str, &str)) -> Option<Instant> {
        let memo = lock(&self.memo);
        if memo.is_empty() {
            return None;
        }
        memo.get(&(object.0.to_string(), object.1.to_string()))
            .and_then(Memo::next)
    }

    fn digest(&self, value: impl Hash) -> u64 {
        self.hasher.hash_one(value)
    }
}

/// The outcome of a read or write that failed for a reason other than a refusal: kept out of
/// the condition (tried again at the next observation).
struct Transient(String);

/// Brings the PpioInstance's exports in line with `status` (and, for the connection Secret,
/// with `fetched`, the instance a GET just returned) and sets the `Exported` condition of
/// `status`: absent when nothing is asked for, as before while an export waits for its first
/// chance.
pub(super) async fn export(
    instance: &PpioInstance,
    ctx: &Context,
    status: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    fetched: Option<&Instance>,
) {
    let asks = instance.spec.connection_secret.is_some() || instance.spec.service.is_some();
    if !asks && lock(&ctx.exports.memo).is_empty() {
        // The common case, without a lookup key to build.
        status.conditions.retain(|c| c.type_ != condition::EXPORTED);
        return;
    }
    let (ns, name) = (
        instance.namespace().unwrap_or_default(),
        instance.name_any(),
    );
    let key = (ns.clone(), name.clone());
    if !asks && !lock(&ctx.exports.memo).contains_key(&key) {
        status.conditions.retain(|c| c.type_ != condition::EXPORTED);
        return;
    }
    let uid = instance.metadata.uid.clone().unwrap_or_default();
    let (old_secret, old_service) = lock(&ctx.exports.memo)
        .get(&key)
        .map(|m| (m.secret.clone(), m.service.clone()))
        .unwrap_or_default();
    let target = Target {
        instance,
        ctx,
        ns: &ns,
        uid: &uid,
    };

    let want_secret = instance
        .spec
        .connection_secret
        .as_ref()
        .map(|s| s.name.clone());
    let secret = target
        .connection_secret(want_secret, fetched, old_secret.as_ref())
        .await;
    let want_service = instance
        .spec
        .service
        .as_ref()
        .map(|s| s.name.clone().unwrap_or_else(|| name.clone()));
    let service = target
        .service_export(want_service, status, old_service.as_ref())
        .await;

    {
        let mut memo = lock(&ctx.exports.memo);
        if secret.is_none() && service.is_none() {
            memo.remove(&key);
        } else {
            let m = memo.entry(key).or_default();
            m.secret = secret.clone();
            m.service = service.clone();
        }
    }
    set_condition(
        status,
        previous,
        instance.spec.connection_secret.is_some(),
        secret.as_ref(),
        instance.spec.service.is_some(),
        service.as_ref(),
    );
}

/// Sets `Exported` from the parts' outcomes; keeps the stored one while a requested part has
/// none yet.
fn set_condition(
    status: &mut PpioInstanceStatus,
    previous: Option<&PpioInstanceStatus>,
    secret_wanted: bool,
    secret: Option<&Part>,
    service_wanted: bool,
    service: Option<&Part>,
) {
    let old = previous
        .and_then(|p| p.condition(condition::EXPORTED))
        .cloned();
    status.conditions.retain(|c| c.type_ != condition::EXPORTED);
    if !secret_wanted && !service_wanted {
        return;
    }
    let parts: Vec<&Outcome> = [(secret_wanted, secret), (service_wanted, service)]
        .into_iter()
        .filter(|(wanted, _)| *wanted)
        .filter_map(|(_, p)| p?.outcome.as_ref())
        .collect();
    let expected = usize::from(secret_wanted) + usize::from(service_wanted);
    let failures: Vec<(&'static str, &str)> = parts
        .iter()
        .filter_map(|p| match p {
            Outcome::Failed(why, message) => Some((*why, message.as_str())),
            Outcome::Current(_) => None,
        })
        .collect();
    let failed = failures.first().map(|(why, _)| {
        let messages: Vec<&str> = failures.iter().map(|(_, m)| *m).collect();
        (*why, messages.join(" "))
    });
    let (st, why, message) = match failed {
        Some((why, message)) => (cstatus::FALSE, why, message),
        None if parts.len() < expected => {
            // A part waits for its first chance (the connection Secret for the first GET).
            if let Some(old) = old {
                status.conditions.push(old);
            }
            return;
        }
        None => {
            let messages: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Outcome::Current(m) => Some(m.as_str()),
                    Outcome::Failed(..) => None,
                })
                .collect();
            (cstatus::TRUE, reason::EXPORTED, messages.join(" "))
        }
    };
    let now = jiff::Timestamp::now();
    let c = make_condition(
        old.as_ref(),
        condition::EXPORTED,
        st,
        why,
        &message,
        status.observed_generation,
        jiff::Timestamp::from_second(now.as_second()).unwrap_or(now),
    );
    status.conditions.push(c);
}

/// The PpioInstance the objects are exported for.
struct Target<'a> {
    instance: &'a PpioInstance,
    ctx: &'a Context,
    ns: &'a str,
    uid: &'a str,
}

/// Whether an object is ours: an ownerReference with `controller: true` to this PpioInstance.
fn owned(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true))
}

/// What the operator sets in an EndpointSlice (the API server adds nothing to these).
fn slice_view(s: &EndpointSlice) -> impl PartialEq + '_ {
    let endpoints: Vec<_> = s
        .endpoints
        .iter()
        .flatten()
        .map(|e| (&e.addresses, &e.conditions))
        .collect();
    (&s.address_type, endpoints, &s.ports, s.labels())
}

/// A kube call within [`KUBE_CALL_TIMEOUT`].
async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(KUBE_CALL_TIMEOUT, fut).await {
        Err(_) => Err(CallError::Other(format!(
            "{what}: no answer within the Kubernetes call timeout"
        ))),
        Ok(Ok(t)) => Ok(t),
        Ok(Err(kube::Error::Api(s))) if s.is_forbidden() => Err(CallError::Forbidden),
        Ok(Err(kube::Error::Api(s))) if s.is_already_exists() => Err(CallError::Exists),
        // Only the code and reason: a message may quote what was sent.
        Ok(Err(kube::Error::Api(s))) => Err(CallError::Other(format!(
            "{what}: the API server answered {} {}",
            s.code, s.reason
        ))),
        Ok(Err(e)) => Err(CallError::Other(format!("{what}: {}", kind_of(&e)))),
    }
}

/// A kube error without its details (which may quote a request).
fn kind_of(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::HyperError(_) | kube::Error::Service(_) => "the API server is unreachable",
        kube::Error::SerdeError(_) => "the API server's answer could not be read",
        _ => "the call failed",
    }
}

enum CallError {
    Forbidden,
    Exists,
    Other(String),
}

/// Why the Service step stopped before its end: an outcome to report (no retry helps), or a
/// failure worth trying again.
enum Halt {
    Report(Outcome),
    Retry(Transient),
}

/// A Service or EndpointSlice of that name that is not this PpioInstance's.
fn conflict(kind: &str, object: &str) -> Outcome {
    Outcome::Failed(
        reason::SERVICE_CONFLICT,
        format!(
            "A{} {kind} named {object} exists and is not this PpioInstance's; it is left alone. Delete it or choose another spec.service.name.",
            if kind.starts_with('E') { "n" } else { "" }
        ),
    )
}

/// What the Service step says when it wrote (or found) everything it could.
fn service_outcome(name: &str, plan: &ServicePlan) -> Outcome {
    if !plan.refused.is_empty() {
        Outcome::Failed(
            reason::ADDRESS_REFUSED,
            format!(
                "Not published: {}. The other ports are.",
                plan.refused.join("; ")
            ),
        )
    } else if plan.ports.is_empty() {
        Outcome::Current(format!(
            "Service {name}: the instance has no port to publish yet."
        ))
    } else {
        Outcome::Current(format!(
            "Service {name} is current ({} port{}, {}).",
            plan.ports.len(),
            if plan.ports.len() == 1 { "" } else { "s" },
            if plan.ready {
                "ready"
            } else {
                "not ready: the instance is not running"
            }
        ))
    }
}

impl Target<'_> {
    fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: PpioInstance::api_version(&()).into_owned(),
            kind: PpioInstance::kind(&()).into_owned(),
            name: self.instance.name_any(),
            uid: self.uid.to_string(),
            controller: Some(true),
            block_owner_deletion: None,
        }
    }

    fn meta(&self, name: &str, mut labels: BTreeMap<String, String>) -> ObjectMeta {
        labels.insert(INSTANCE_LABEL.into(), self.instance.name_any());
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.ns.to_string()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner()]),
            ..ObjectMeta::default()
        }
    }

    fn count(&self, kind: &str, op: &str) {
        self.ctx
            .metrics
            .controller
            .export_writes
            .get_or_create(&ExportWriteLabels {
                kind: kind.into(),
                op: op.into(),
            })
            .inc();
    }

    /// A write, counted in `ppio_export_writes_total` when it succeeds.
    async fn write<T>(
        &self,
        kind: &str,
        op: &str,
        what: &str,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<(), CallError> {
        let r = call(what, fut).await;
        if r.is_ok() {
            self.count(kind, op);
        }
        r.map(|_| ())
    }

    fn disabled(&self, what: &str, value: &str) -> Outcome {
        Outcome::Failed(
            reason::EXPORTS_DISABLED,
            format!(
                "This operator may not write {what} in namespace {}: install it with the chart value {value}=true.",
                self.ns
            ),
        )
    }

    /// The connection Secret: its part after this observation (`None`: waits for a GET).
    async fn secret(
        &self,
        name: &str,
        fetched: Option<&Instance>,
        old: Option<&Part>,
    ) -> Option<Part> {
        let old = old.filter(|o| o.name == name);
        if !self.ctx.settings.exports.connection_secrets {
            return Some(Part::new(
                name,
                None,
                false,
                Some(self.disabled("Secrets", "exports.connectionSecrets.enabled")),
                old,
            ));
        }
        // The data of this GET, else of the last one.
        let data = match (fetched, old.and_then(|o| o.data.clone())) {
            (Some(fetched), _) => connection_data(fetched),
            (None, Some(data)) => data,
            (None, None) => return old.cloned(),
        };
        let digest = self
            .ctx
            .exports
            .digest((self.uid, name, self.instance.name_any(), &data.0));
        // Tried before and not due: as it was (current, or waiting for its next try).
        if let Some(o) = old
            && o.tried == Some(digest)
            && !o.due(Instant::now())
        {
            return Some(o.clone());
        }
        let outcome = match self.write_secret(name, data.clone()).await {
            Ok(outcome) => outcome,
            Err(Transient(message)) => {
                warn!(
                    secret = name,
                    detail = message.as_str(),
                    "connection Secret not written"
                );
                return Some(Part {
                    data: Some(data),
                    ..Part::new(
                        name,
                        Some(digest),
                        false,
                        old.and_then(|o| o.outcome.clone()),
                        old,
                    )
                });
            }
        };
        let current = matches!(outcome, Outcome::Current(_));
        Some(Part {
            data: Some(data),
            ..Part::new(name, Some(digest), current, Some(outcome), old)
        })
    }

    async fn write_secret(&self, name: &str, data: ConnectionData) -> Result<Outcome, Transient> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let bytes: BTreeMap<String, ByteString> = data
            .0
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        let current = format!("Secret {name} is current.");
        let conflict = Outcome::Failed(
            reason::SECRET_CONFLICT,
            format!(
                "A Secret named {name} exists and is not this PpioInstance's; it is left alone. Delete it or choose another spec.connectionSecret.name."
            ),
        );
        let found = match call("reading the connection Secret", api.get_opt(name)).await {
            Ok(found) => found,
            Err(CallError::Forbidden) => {
                return Ok(self.disabled("Secrets", "exports.connectionSecrets.enabled"));
            }
            Err(CallError::Exists) => None,
            Err(CallError::Other(m)) => return Err(Transient(m)),
        };
        let result = match found {
            None => {
                let secret = Secret {
                    metadata: self.meta(name, BTreeMap::new()),
                    type_: Some("Opaque".into()),
                    data: Some(bytes),
                    ..Secret::default()
                };
                self.write(
                    "Secret",
                    "create",
                    "creating the connection Secret",
                    api.create(&PostParams::default(), &secret),
                )
                .await
            }
            Some(s) if !owned(&s.metadata, self.uid) => return Ok(conflict),
            Some(s)
                if s.data.as_ref() == Some(&bytes)
                    && s.labels().get(INSTANCE_LABEL) == Some(&self.instance.name_any()) =>
            {
                debug!(secret = name, "connection Secret current; no write");
                Ok(())
            }
            Some(mut s) => {
                s.data = Some(bytes);
                s.string_data = None;
                s.labels_mut()
                    .insert(INSTANCE_LABEL.into(), self.instance.name_any());
                self.write(
                    "Secret",
                    "update",
                    "updating the connection Secret",
                    api.replace(name, &PostParams::default(), &s),
                )
                .await
            }
        };
        match result {
            Ok(()) => Ok(Outcome::Current(current)),
            Err(CallError::Forbidden) => {
                Ok(self.disabled("Secrets", "exports.connectionSecrets.enabled"))
            }
            // Created by someone else meanwhile: not ours.
            Err(CallError::Exists) => Ok(conflict),
            Err(CallError::Other(m)) => Err(Transient(m)),
        }
    }

    /// The connection Secret named `want`, if asked for; the one before (`old`) is removed
    /// when it has another name.
    async fn connection_secret(
        &self,
        want: Option<String>,
        fetched: Option<&Instance>,
        old: Option<&Part>,
    ) -> Option<Part> {
        if let Some(old) = old.filter(|o| Some(&o.name) != want.as_ref()) {
            self.remove_secret(&old.name).await;
        }
        self.secret(&want?, fetched, old).await
    }

    /// The Service named `want` and its EndpointSlices, if asked for, planned from `status`;
    /// the ones before (`old`) are removed when they have another name.
    async fn service_export(
        &self,
        want: Option<String>,
        status: &PpioInstanceStatus,
        old: Option<&Part>,
    ) -> Option<Part> {
        if let Some(old) = old.filter(|o| Some(&o.name) != want.as_ref()) {
            self.remove_service(&old.name).await;
        }
        let want = want?;
        let plan = service_plan(status, &self.ctx.settings.exports.deny);
        self.service(&want, &plan, old).await
    }

    /// Deletes a connection Secret no longer asked for, when it is ours.
    async fn remove_secret(&self, name: &str) {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns);
        if let Ok(Some(s)) = call("reading the connection Secret", api.get_opt(name)).await
            && owned(&s.metadata, self.uid)
        {
            self.delete(&api, "Secret", name, s.metadata.uid).await;
        }
    }

    async fn delete<K>(&self, api: &Api<K>, kind: &str, name: &str, uid: Option<String>)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match call("deleting an export", api.delete(name, &params)).await {
            Ok(_) => self.count(kind, "delete"),
            Err(CallError::Other(m)) => {
                warn!(kind, name, detail = m.as_str(), "export not deleted")
            }
            Err(_) => warn!(kind, name, "export not deleted: forbidden"),
        }
    }

    /// The Service and its EndpointSlices: their part after this observation.
    async fn service(&self, name: &str, plan: &ServicePlan, old: Option<&Part>) -> Option<Part> {
        let old = old.filter(|o| o.name == name);
        let part = |outcome: Outcome, tried: Option<u64>, current: bool| {
            Part::new(name, tried, current, Some(outcome), old)
        };
        if !self.ctx.settings.exports.services {
            return Some(part(
                self.disabled("Services and EndpointSlices", "exports.services.enabled"),
                None,
                false,
            ));
        }
        if !valid_service_name(name) {
            return Some(part(
                Outcome::Failed(
                    reason::SERVICE_CONFLICT,
                    format!(
                        "{name} cannot name a Service (lower-case letters, digits and '-', starting with a letter, at most 63 characters): set spec.service.name."
                    ),
                ),
                None,
                false,
            ));
        }
        let digest = self
            .ctx
            .exports
            .digest((self.uid, name, self.instance.name_any(), plan));
        if let Some(o) = old
            && o.tried == Some(digest)
            && !o.due(Instant::now())
        {
            return Some(o.clone());
        }
        match self.write_service(name, plan).await {
            Ok(outcome) => {
                let current = !matches!(
                    outcome,
                    Outcome::Failed(reason::SERVICE_CONFLICT | reason::EXPORTS_DISABLED, _)
                );
                Some(part(outcome, Some(digest), current))
            }
            Err(Transient(message)) => {
                warn!(
                    service = name,
                    detail = message.as_str(),
                    "Service not written"
                );
                Some(Part::new(
                    name,
                    Some(digest),
                    false,
                    old.and_then(|o| o.outcome.clone()),
                    old,
                ))
            }
        }
    }

    async fn write_service(&self, name: &str, plan: &ServicePlan) -> Result<Outcome, Transient> {
        let ports: Vec<KubeServicePort> = plan
            .ports
            .iter()
            .map(|p| KubeServicePort {
                name: Some(p.name.clone()),
                port: p.port,
                protocol: Some(p.protocol.clone()),
                ..KubeServicePort::default()
            })
            .collect();
        let done = match self.ensure_service(name, &ports).await {
            Ok(()) => self.ensure_slices(name, plan).await,
            stopped => stopped,
        };
        match done {
            Ok(()) => Ok(service_outcome(name, plan)),
            Err(Halt::Report(outcome)) => Ok(outcome),
            Err(Halt::Retry(t)) => Err(t),
        }
    }

    /// A call's failure as the Service step reports it: refused (the chart's RBAC leaves
    /// exports out), taken by an object that is not ours, or worth trying again.
    fn halt(&self, e: CallError, kind: &str, object: &str) -> Halt {
        match e {
            CallError::Forbidden => Halt::Report(
                self.disabled("Services and EndpointSlices", "exports.services.enabled"),
            ),
            CallError::Exists => Halt::Report(conflict(kind, object)),
            CallError::Other(m) => Halt::Retry(Transient(m)),
        }
    }

    /// The Service: only with a port to publish (a ClusterIP Service needs one). A Service of
    /// ours already as wanted is not written.
    async fn ensure_service(&self, name: &str, ports: &[KubeServicePort]) -> Result<(), Halt> {
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let found = match call("reading the Service", services.get_opt(name)).await {
            Ok(found) => found,
            Err(CallError::Exists) => None,
            Err(e) => return Err(self.halt(e, "Service", name)),
        };
        let same_ports = |have: &[KubeServicePort]| {
            have.len() == ports.len()
                && have
                    .iter()
                    .zip(ports)
                    .all(|(a, b)| a.name == b.name && a.port == b.port && a.protocol == b.protocol)
        };
        let written = match found {
            Some(s) if !owned(&s.metadata, self.uid) => {
                return Err(Halt::Report(conflict("Service", name)));
            }
            None if ports.is_empty() => Ok(()),
            None => {
                let service = Service {
                    metadata: self.meta(name, BTreeMap::new()),
                    spec: Some(ServiceSpec {
                        type_: Some("ClusterIP".into()),
                        ports: Some(ports.to_vec()),
                        ..ServiceSpec::default()
                    }),
                    ..Service::default()
                };
                self.write(
                    "Service",
                    "create",
                    "creating the Service",
                    services.create(&PostParams::default(), &service),
                )
                .await
            }
            Some(s)
                if ports.is_empty()
                    || (s.spec.as_ref().is_some_and(|sp| {
                        sp.selector.is_none() && same_ports(sp.ports.as_deref().unwrap_or_default())
                    }) && s.labels().get(INSTANCE_LABEL)
                        == Some(&self.instance.name_any())) =>
            {
                Ok(())
            }
            Some(mut s) => {
                let spec = s.spec.get_or_insert_with(ServiceSpec::default);
                spec.selector = None;
                spec.ports = Some(ports.to_vec());
                s.labels_mut()
                    .insert(INSTANCE_LABEL.into(), self.instance.name_any());
                self.write(
                    "Service",
                    "update",
                    "updating the Service",
                    services.replace(name, &PostParams::default(), &s),
                )
                .await
            }
        };
        written.map_err(|e| self.halt(e, "Service", name))
    }

    /// The EndpointSlices: one per address, each written only when it differs; ours that no
    /// address wants any more are deleted.
    async fn ensure_slices(&self, name: &str, plan: &ServicePlan) -> Result<(), Halt> {
        let slices: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let listed = match call(
            "listing the EndpointSlices",
            slices.list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"))),
        )
        .await
        {
            Ok(list) => list.items,
            Err(CallError::Exists) => Vec::new(),
            Err(e) => return Err(self.halt(e, "EndpointSlice", name)),
        };
        let mut existing: HashMap<String, EndpointSlice> =
            listed.into_iter().map(|s| (s.name_any(), s)).collect();
        for (i, (address, at)) in plan.slices().into_iter().enumerate() {
            let slice_name = slice_name(name, i);
            let want = self.slice(name, &slice_name, address, &at, plan.ready);
            let found = match existing.remove(&slice_name) {
                Some(s) => Some(s),
                // Not listed by our label: maybe a slice of that name without it.
                None => match call("reading an EndpointSlice", slices.get_opt(&slice_name)).await {
                    Ok(found) => found,
                    Err(CallError::Exists) => None,
                    Err(e) => return Err(self.halt(e, "EndpointSlice", &slice_name)),
                },
            };
            self.ensure_slice(&slices, &slice_name, found, want)
                .await
                .map_err(|e| self.halt(e, "EndpointSlice", &slice_name))?;
        }
        // Ours and no longer wanted (an address gone).
        for (slice_name, s) in existing {
            if owned(&s.metadata, self.uid) {
                self.delete(&slices, "EndpointSlice", &slice_name, s.metadata.uid)
                    .await;
            }
        }
        Ok(())
    }

    /// The EndpointSlice wanted for one address of the instance.
    fn slice(
        &self,
        service: &str,
        slice_name: &str,
        address: IpAddr,
        at: &[&ServicePort],
        ready: bool,
    ) -> EndpointSlice {
        let mut labels = BTreeMap::new();
        labels.insert(SERVICE_NAME_LABEL.to_string(), service.to_string());
        labels.insert(MANAGED_BY_LABEL.to_string(), SLICE_MANAGER.to_string());
        EndpointSlice {
            metadata: self.meta(slice_name, labels),
            address_type: if address.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            endpoints: Some(vec![Endpoint {
                addresses: vec![address.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            }]),
            ports: Some(
                at.iter()
                    .map(|p| EndpointPort {
                        name: Some(p.name.clone()),
                        port: Some(p.target),
                        protocol: Some(p.protocol.clone()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        }
    }

    /// One EndpointSlice brought to `want`: created, updated, or (its address type changed,
    /// which a slice cannot) replaced; nothing written when it already is.
    async fn ensure_slice(
        &self,
        slices: &Api<EndpointSlice>,
        slice_name: &str,
        found: Option<EndpointSlice>,
        want: EndpointSlice,
    ) -> Result<(), CallError> {
        let post = PostParams::default();
        let create = || {
            self.write(
                "EndpointSlice",
                "create",
                "creating an EndpointSlice",
                slices.create(&post, &want),
            )
        };
        match found {
            Some(s) if !owned(&s.metadata, self.uid) => Err(CallError::Exists),
            Some(s) if slice_view(&s) == slice_view(&want) => Ok(()),
            Some(s) if s.address_type == want.address_type => {
                let mut next = want.clone();
                next.metadata = s.metadata;
                next.metadata.labels = want.metadata.labels.clone();
                self.write(
                    "EndpointSlice",
                    "update",
                    "updating an EndpointSlice",
                    slices.replace(slice_name, &post, &next),
                )
                .await
            }
            Some(s) => {
                self.delete(slices, "EndpointSlice", slice_name, s.metadata.uid)
                    .await;
                create().await
            }
            None => create().await,
        }
    }

    /// Deletes a Service no longer asked for, and its EndpointSlices, when they are ours.
    async fn remove_service(&self, name: &str) {
        let services: Api<Service> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let slices: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), self.ns);
        if let Ok(list) = call(
            "listing the EndpointSlices",
            slices.list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"))),
        )
        .await
        {
            for s in list.items {
                if owned(&s.metadata, self.uid) {
                    let n = s.name_any();
                    self.delete(&slices, "EndpointSlice", &n, s.metadata.uid)
                        .await;
                }
            }
        }
        if let Ok(Some(s)) = call("reading the Service", services.get_opt(name)).await
            && owned(&s.metadata, self.uid)
        {
            self.delete(&services, "Service", name, s.metadata.uid)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_export_is_tried_again_ever_later_and_a_current_one_checked_every_ten_minutes()
     {
        let now = Instant::now();
        let mut part = Part::new("s", Some(1), false, None, None);
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push((part.next - now).as_secs());
            part = Part::new("s", Some(1), false, None, Some(&part));
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
        let current = Part::new("s", Some(1), true, None, Some(&part));
        assert_eq!(current.failures, 0);
        assert_eq!((current.next - now).as_secs(), 600);
        assert!(!current.due(now) && current.due(now + VERIFY_EVERY));
    }
}
