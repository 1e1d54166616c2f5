//! The API key of a PpioInstance: its marked credentials Secret, or the operator's default
//! key where the namespace may use it.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{Context, Error, KUBE_CALL_TIMEOUT};
use crate::crd::{CREDENTIALS_LABEL, PpioInstance};
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
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = tokio::time::timeout(KUBE_CALL_TIMEOUT, secrets.get_opt(&sref.name))
        .await
        .map_err(|_| Error::Timeout("reading the credentials Secret"))?;
    let secret = match secret {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Err(refused())),
        Err(kube::Error::Api(ae)) if ae.code == 403 => return Ok(Err(refused())),
        Err(e) => return Err(Error::ReadSecret(e)),
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
