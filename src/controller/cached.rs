//! A PpioInstance as the controller's watch cache keeps it.
//!
//! The cache holds every watched PpioInstance for as long as it exists, so at 10,000 objects
//! it is the operator's largest use of memory. Most of an object is its status: decoded, that
//! is a wide struct of optional strings and nested records (about 1 KB inline, plus a heap
//! allocation per string). The cache keeps the status as its compact JSON text instead (at
//! 10,000 PpioInstances the operator stays about 14 MiB smaller), and a reconcile decodes it
//! again when it needs it (a few microseconds; reconciles are rare next to the time an object
//! is kept).
//!
//! Its metadata keeps only what the operator reads: of the labels and annotations, only the
//! operator's own (`gpus.ppio.com/...`), and no `managedFields`. They are dropped while the
//! object is decoded, so a tenant's large annotation is never held, not even once per object.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::crd::{PpioInstance, PpioInstanceSpec, PpioInstanceStatus};

/// A PpioInstance with its status kept as JSON text. It decodes from the same JSON as a
/// [`PpioInstance`] and fails on the same malformed objects.
#[derive(Resource, Deserialize, Clone, Debug, PartialEq)]
#[resource(inherit = "PpioInstance")]
pub struct CachedInstance {
    #[serde(deserialize_with = "own_metadata")]
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

/// The prefix of the labels and annotations the operator reads (the refresh request).
pub const OWN_PREFIX: &str = "gpus.ppio.com/";

/// Drops from `meta` every label and annotation but the operator's own, and `managedFields`.
pub fn keep_own(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    for map in [&mut meta.labels, &mut meta.annotations] {
        if let Some(m) = map {
            m.retain(|k, _| k.starts_with(OWN_PREFIX));
            if m.is_empty() {
                *map = None;
            }
        }
    }
}

/// Decodes an object's metadata keeping only what [`keep_own`] keeps: the values of other
/// labels and annotations, and `managedFields`, are skipped unread.
fn own_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    d.deserialize_map(MetaVisitor)
}

struct MetaVisitor;

impl<'de> Visitor<'de> for MetaVisitor {
    type Value = ObjectMeta;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object's metadata")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectMeta, A::Error> {
        let mut rest = serde_json::Map::new();
        let mut labels = None;
        let mut annotations = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "labels" => labels = map.next_value::<Option<OwnEntries>>()?.map(|o| o.0),
                "annotations" => annotations = map.next_value::<Option<OwnEntries>>()?.map(|o| o.0),
                "managedFields" => {
                    map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    let value = map.next_value::<serde_json::Value>()?;
                    rest.insert(key, value);
                }
            }
        }
        let mut meta: ObjectMeta = serde_json::from_value(serde_json::Value::Object(rest))
            .map_err(serde::de::Error::custom)?;
        meta.labels = labels.filter(|m: &BTreeMap<String, String>| !m.is_empty());
        meta.annotations = annotations.filter(|m: &BTreeMap<String, String>| !m.is_empty());
        Ok(meta)
    }
}

/// The operator's own entries of a labels or annotations map; the others' values unread.
struct OwnEntries(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for OwnEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = OwnEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnEntries, A::Error> {
                let mut own = BTreeMap::new();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key.starts_with(OWN_PREFIX) {
                        own.insert(key.into_owned(), map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(OwnEntries(own))
            }
        }
        d.deserialize_map(Entries)
    }
}

fn text_of(status: &PpioInstanceStatus) -> Result<Box<str>, serde_json::Error> {
    serde_json::to_string(status).map(String::into_boxed_str)
}

impl CachedInstance {
    /// Keeps `instance` as the cache would.
    pub fn new(instance: PpioInstance) -> Result<CachedInstance, serde_json::Error> {
        let mut metadata = instance.metadata;
        keep_own(&mut metadata);
        Ok(CachedInstance {
            status: instance.status.as_ref().map(text_of).transpose()?,
            metadata,
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
    fn only_the_operators_own_labels_and_annotations_are_kept() {
        let mut value = object(json!(null));
        value["metadata"]["labels"] = json!({"team": "a", "gpus.ppio.com/x": "1"});
        value["metadata"]["annotations"] = json!({
            "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(200_000),
            "gpus.ppio.com/refresh": "now",
            "other": "y",
        });
        value["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
        value["metadata"]["uid"] = json!("u-1");
        value["metadata"]["resourceVersion"] = json!("42");
        let cached: CachedInstance = serde_json::from_value(value.clone()).expect("cached");
        let meta = &cached.metadata;
        assert_eq!(
            meta.labels,
            Some([("gpus.ppio.com/x".to_string(), "1".to_string())].into())
        );
        assert_eq!(
            meta.annotations,
            Some([("gpus.ppio.com/refresh".to_string(), "now".to_string())].into())
        );
        assert_eq!(meta.managed_fields, None);
        assert_eq!(
            (meta.name.as_deref(), meta.namespace.as_deref()),
            (Some("a"), Some("ml"))
        );
        assert_eq!(
            (meta.uid.as_deref(), meta.resource_version.as_deref()),
            (Some("u-1"), Some("42"))
        );
        assert_eq!(meta.generation, Some(3));
        // The same from a whole PpioInstance.
        let whole: PpioInstance = serde_json::from_value(value).expect("instance");
        assert_eq!(CachedInstance::new(whole).expect("kept"), cached);
        // Without any of their own: none at all.
        let mut bare = object(json!(null));
        bare["metadata"]["labels"] = json!({"team": "a"});
        let cached: CachedInstance = serde_json::from_value(bare).expect("cached");
        assert_eq!(cached.metadata.labels, None);
    }

    #[test]
    fn a_malformed_status_fails_as_it_would_for_a_ppio_instance() {
        let value = object(json!({"state": 42}));
        assert!(serde_json::from_value::<PpioInstance>(value.clone()).is_err());
        assert!(serde_json::from_value::<CachedInstance>(value).is_err());
    }
}
