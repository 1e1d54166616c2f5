//! The API key of a PpioInstance: its marked credentials Secret, or the operator's default
//! key where the namespace may use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    if ctx
        .settings
        .credentials_namespaces
        .as_ref()
        .is_some_and(|set| !set.contains(&ns))
    {
        return Ok(Err(Failure::credentials_missing(format!(
            "The operator does not use credentials Secrets of namespace {ns:?} (--credentials-namespaces)."
        ))));
    }
    let key_name = sref.key_or_default();
    let refused = || {
        Failure::credentials_missing(format!(
            "Secret {:?} cannot serve as PPIO credentials: it must exist in namespace {ns:?}, carry the label {CREDENTIALS_LABEL}: \"true\" and hold the API key under {key_name:?}.",
            sref.name
        ))
    };
    Ok(ctx
        .secrets
        .key(&ctx.client, &ns, &sref.name, key_name)
        .await?
        .ok_or_else(refused))
}

/// How long a Secret's label and version are believed before they are looked at again (one
/// metadata read per referenced Secret per minute, however many PpioInstances use it). A
/// rotated key takes effect within this time, and at once after a 401 (see
/// [`SecretCache::forget`]).
pub const SECRET_TTL: Duration = Duration::from_secs(60);

/// What was learnt of a Secret no PpioInstance asked for in this long is forgotten.
const FORGET_UNUSED: Duration = Duration::from_secs(600);

/// A Secret's namespace, name and the key asked for.
type SecretKey = (String, String, String);

/// What was last learnt of one key of a Secret.
struct Entry {
    checked: Instant,
    /// The Secret's `resourceVersion` when its data was read; the data is read again only
    /// when a metadata read shows another.
    version: Option<String>,
    /// The API key; `None`: the Secret is absent, unreadable, unmarked, or lacks the key.
    key: Option<ApiKey>,
}

/// The credentials Secrets in use, by namespace, name and key.
///
/// A Secret is first read as metadata only (`get` with `as=PartialObjectMetadata`), and its
/// data is read only when it carries the credentials label and its `resourceVersion` differs
/// from the one read before: an unmarked Secret's values never reach the operator, and only the
/// one key asked for is kept. PpioInstances that ask at once for the same Secret share one
/// read. Only `get` on Secrets is needed (no list or watch of a namespace's Secrets).
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<SecretKey, Arc<tokio::sync::Mutex<Slot>>>>,
    ttl: Option<Duration>,
}

/// What is known of one key of a Secret, behind the lock its readers share.
#[derive(Default)]
struct Slot {
    entry: Option<Entry>,
    /// When a read last failed: the PpioInstances waiting meanwhile do not each try again.
    failed: Option<Instant>,
}

/// How long a failed read is not tried again by the PpioInstances that waited for it.
const FAILED_FOR: Duration = Duration::from_secs(5);

impl SecretCache {
    /// A cache whose entries live `ttl` (default [`SECRET_TTL`]).
    pub fn with_ttl(ttl: Duration) -> SecretCache {
        SecretCache {
            entries: Mutex::default(),
            ttl: Some(ttl),
        }
    }

    /// The API key under `key` of the marked Secret `ns/name` (`None`: it cannot serve), from
    /// what was read before while it is fresh.
    async fn key(
        &self,
        client: &Client,
        ns: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<ApiKey>, Error> {
        let ttl = self.ttl.unwrap_or(SECRET_TTL);
        let now = Instant::now();
        let slot = {
            let mut entries = lock(&self.entries);
            // Forget what was not used for a while (a lock held elsewhere is in use).
            let unused = (ttl * 2).max(FORGET_UNUSED);
            entries.retain(|_, slot| {
                slot.try_lock().map_or(true, |s| {
                    s.entry
                        .as_ref()
                        .is_some_and(|e| now.saturating_duration_since(e.checked) < unused)
                })
            });
            entries
                .entry((ns.to_string(), name.to_string(), key.to_string()))
                .or_default()
                .clone()
        };
        let mut slot = slot.lock().await;
        if let Some(e) = &slot.entry
            && now.saturating_duration_since(e.checked) < ttl
        {
            return Ok(e.key.clone());
        }
        if slot
            .failed
            .is_some_and(|at| Instant::now().saturating_duration_since(at) < FAILED_FOR)
        {
            return Err(Error::ReadSecretFailedLately);
        }
        match read_key(client, ns, name, key, slot.entry.as_ref(), now).await {
            Ok(fresh) => {
                let found = fresh.key.clone();
                slot.entry = Some(fresh);
                slot.failed = None;
                Ok(found)
            }
            Err(e) => {
                slot.failed = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Drops a Secret from the cache, so that the next poll reads it again (after PPIO refused
    /// its key: it may just have been rotated).
    pub fn forget(&self, ns: &str, name: &str) {
        lock(&self.entries).retain(|(n, s, _), _| !(n == ns && s == name));
    }
}

/// Reads `key` of the Secret `ns/name`: its metadata, and its data only when it is marked and
/// its `resourceVersion` differs from `before`'s.
async fn read_key(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    before: Option<&Entry>,
    now: Instant,
) -> Result<Entry, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let unusable = Entry {
        checked: now,
        version: None,
        key: None,
    };
    let Some(meta) = read(api.get_metadata_opt(name)).await? else {
        return Ok(unusable);
    };
    if !marked(&meta.metadata) {
        return Ok(unusable);
    }
    let version = meta.metadata.resource_version;
    if let Some(e) = before.filter(|e| e.version.is_some() && e.version == version) {
        return Ok(Entry {
            checked: now,
            version: e.version.clone(),
            key: e.key.clone(),
        });
    }
    let secret = read(api.get_opt(name)).await?;
    let found = secret
        .as_ref()
        .filter(|s| marked(&s.metadata))
        .and_then(|s| s.data.as_ref()?.get(key))
        .and_then(|bytes| std::str::from_utf8(&bytes.0).ok())
        .and_then(ApiKey::new);
    Ok(Entry {
        checked: now,
        version: secret.and_then(|s| s.metadata.resource_version),
        key: found,
    })
}

/// Whether a Secret carries the credentials label.
fn marked(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(CREDENTIALS_LABEL))
        .is_some_and(|v| v == "true")
}

/// A read of a Secret: `None` when it is absent or the operator may not read it.
async fn read<T>(
    call: impl std::future::Future<Output = Result<Option<T>, kube::Error>>,
) -> Result<Option<T>, Error> {
    match tokio::time::timeout(KUBE_CALL_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout("reading the credentials Secret"))?
    {
        Ok(found) => Ok(found),
        Err(kube::Error::Api(ae)) if ae.code == 403 => Ok(None),
        Err(e) => Err(Error::ReadSecret(e)),
    }
}
