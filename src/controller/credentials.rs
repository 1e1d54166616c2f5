//! The API key of a PpioInstance: its marked credentials Secret, or the operator's default
//! key where the namespace may use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use tokio::time::Instant;

use super::{Context, Error, KUBE_CALL_TIMEOUT};
use crate::crd::{CREDENTIALS_LABEL, PpioInstance};
use crate::lock;
use crate::ppio::ApiKey;
use crate::status::Failure;

/// The API key for this instance: the referenced Secret's key, else the operator's default.
/// The outer error is a Kubernetes API failure (retry); the inner one a user-facing
/// `CredentialsMissing` failure.
///
/// A Secret serves as credentials only when it carries [`CREDENTIALS_LABEL`]` = "true"`, so
/// that a PpioInstance cannot make the operator send any other Secret of the namespace to
/// PPIO. Every refusal has the same message, which says what to do and does not tell whether
/// the Secret or its key exists.
pub(super) async fn resolve_key(
    instance: &PpioInstance,
    ctx: &Context,
) -> Result<Result<ApiKey, Failure>, Error> {
    let ns = instance.namespace().unwrap_or_default();
    let Some(sref) = &instance.spec.credentials_secret_ref else {
        let allowed = ctx
            .settings
            .default_key_namespaces
            .as_ref()
            .is_none_or(|set| set.contains(&ns));
        return Ok(match &ctx.settings.default_key {
            None => Err(Failure::credentials_missing(
                "No spec.credentialsSecretRef is set and the operator has no default API key (PPIO_API_KEY).",
            )),
            Some(_) if !allowed => Err(Failure::credentials_missing(format!(
                "No spec.credentialsSecretRef is set and the operator's default API key is not available in namespace {ns:?} (--default-key-namespaces); reference a Secret of this namespace."
            ))),
            Some(k) => Ok(k.clone()),
        });
    };
    let key_name = sref.key_or_default();
    let refused = || {
        Failure::credentials_missing(format!(
            "Secret {:?} cannot serve as PPIO credentials: it must exist in namespace {ns:?}, carry the label {CREDENTIALS_LABEL}: \"true\" and hold the API key under {key_name:?}.",
            sref.name
        ))
    };
    let Some(secret) = ctx.secrets.get(&ctx.client, &ns, &sref.name).await? else {
        return Ok(Err(refused()));
    };
    let marked = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true");
    if !marked {
        return Ok(Err(refused()));
    }
    Ok(secret
        .data
        .as_ref()
        .and_then(|d| d.get(key_name))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .and_then(ApiKey::new)
        .ok_or_else(refused))
}

/// How long a read Secret is used before it is read again: a rotated key takes effect within
/// this time (and at once after a 401, see [`SecretCache::forget`]).
pub const SECRET_TTL: Duration = Duration::from_secs(30);

/// A Secret's namespace and name.
type SecretName = (String, String);
/// When a Secret was read, and what was read (`None`: absent or not readable).
type Cached = (Instant, Option<Arc<Secret>>);

/// The credentials Secrets read lately, by namespace and name: Secret reads stay at most one
/// per referenced Secret per [`SECRET_TTL`], however many PpioInstances reference it. Only
/// `get` on Secrets is needed (no list or watch of a namespace's Secrets).
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<SecretName, Cached>>,
    ttl: Option<Duration>,
}

impl SecretCache {
    /// A cache whose entries live `ttl` (default [`SECRET_TTL`]).
    pub fn with_ttl(ttl: Duration) -> SecretCache {
        SecretCache {
            entries: Mutex::default(),
            ttl: Some(ttl),
        }
    }

    /// The Secret (`None`: absent, or the operator may not read it), from the cache while it
    /// is fresh.
    async fn get(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, Error> {
        let key = (ns.to_string(), name.to_string());
        let ttl = self.ttl.unwrap_or(SECRET_TTL);
        let now = Instant::now();
        if let Some((at, secret)) = lock(&self.entries).get(&key)
            && now.saturating_duration_since(*at) < ttl
        {
            return Ok(secret.clone());
        }
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let read = tokio::time::timeout(KUBE_CALL_TIMEOUT, api.get_opt(name))
            .await
            .map_err(|_| Error::Timeout("reading the credentials Secret"))?;
        let secret = match read {
            Ok(s) => s.map(Arc::new),
            Err(kube::Error::Api(ae)) if ae.code == 403 => None,
            Err(e) => return Err(Error::ReadSecret(e)),
        };
        let mut entries = lock(&self.entries);
        entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        entries.insert(key, (now, secret.clone()));
        Ok(secret)
    }

    /// Drops a Secret from the cache, so that the next poll reads it again (after PPIO refused
    /// its key: it may just have been rotated).
    pub fn forget(&self, ns: &str, name: &str) {
        lock(&self.entries).remove(&(ns.to_string(), name.to_string()));
    }
}
