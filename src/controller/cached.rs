//! A PpioInstance as the controller's watch cache keeps it.
//!
//! The cache holds every watched PpioInstance for as long as it exists, so at 10,000 objects
//! it is the operator's largest use of memory. Most of an object is its status: decoded, that
//! is a wide struct of optional strings and nested records (about 1 KB inline, plus a heap
//! allocation per string). The cache keeps the status as its compact JSON text instead (at
//! 10,000 PpioInstances the operator stays about 14 MiB smaller), and a reconcile decodes it
//! again when it needs it (a few microseconds; reconciles are rare next to the time an object
//! is kept).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer};

use crate::crd::{PpioInstance, PpioInstanceSpec, PpioInstanceStatus};

/// A PpioInstance with its status kept as JSON text. It decodes from the same JSON as a
/// [`PpioInstance`] and fails on the same malformed objects.
#[derive(Resource, Deserialize, Clone, Debug, PartialEq)]
#[resource(inherit = "PpioInstance")]
pub struct CachedInstance {
    pub metadata: ObjectMeta,
    pub spec: PpioInstanceSpec,
    /// The status, as `serde_json` writes a [`PpioInstanceStatus`].
    #[serde(default, deserialize_with = "status_text")]
    status: Option<Box<str>>,
}

/// Decodes a status as a [`PpioInstanceStatus`] (so that a malformed one fails here, as it
/// would for a [`PpioInstance`]) and keeps its compact text.
fn status_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<str>>, D::Error> {
    Option::<PpioInstanceStatus>::deserialize(d)?
        .map(|status| text_of(&status).map_err(serde::de::Error::custom))
        .transpose()
}

fn text_of(status: &PpioInstanceStatus) -> Result<Box<str>, serde_json::Error> {
    serde_json::to_string(status).map(String::into_boxed_str)
}

impl CachedInstance {
    /// Keeps `instance` as the cache would.
    pub fn new(instance: PpioInstance) -> Result<CachedInstance, serde_json::Error> {
        Ok(CachedInstance {
            status: instance.status.as_ref().map(text_of).transpose()?,
            metadata: instance.metadata,
            spec: instance.spec,
        })
    }

    /// The whole PpioInstance again, its status decoded.
    pub fn instance(&self) -> Result<PpioInstance, serde_json::Error> {
        Ok(PpioInstance {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self
                .status
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(status: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "gpus.ppio.com/v1alpha1",
            "kind": "PpioInstance",
            "metadata": {"name": "a", "namespace": "ml", "generation": 3},
            "spec": {"instanceId": "ca338f12f3", "refreshInterval": "60s"},
            "status": status,
        })
    }

    #[test]
    fn a_cached_instance_gives_back_exactly_the_instance_it_was_decoded_from() {
        let status = json!({
            "observedGeneration": 3,
            "instanceId": "ca338f12f3",
            "state": "running",
            "resources": {"gpuNum": 1, "gpuIds": [0]},
            "endpoints": {"ports": [{"port": 22, "protocol": "tcp", "endpoint": "x:1"}]},
            "conditions": [{"type": "Synced", "status": "True", "reason": "Observed",
                "message": "m", "lastTransitionTime": "2026-01-02T03:04:05Z"}],
        });
        for value in [
            object(status),
            object(json!(null)),
            object(json!({"observedGeneration": 0})),
        ] {
            let whole: PpioInstance = serde_json::from_value(value.clone()).expect("instance");
            let cached: CachedInstance = serde_json::from_value(value).expect("cached");
            assert_eq!(cached.instance().expect("decodes"), whole);
            assert_eq!(CachedInstance::new(whole).expect("kept"), cached);
        }
    }

    #[test]
    fn a_malformed_status_fails_as_it_would_for_a_ppio_instance() {
        let value = object(json!({"state": 42}));
        assert!(serde_json::from_value::<PpioInstance>(value.clone()).is_err());
        assert!(serde_json::from_value::<CachedInstance>(value).is_err());
    }
}
