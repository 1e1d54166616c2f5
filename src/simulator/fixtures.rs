//! The instances a simulator starts with: the built-in samples, fixtures files and their
//! validation, and the JSON merge patch the control API applies to instances.

use std::path::Path;

use serde_json::Value;

use super::Simulator;

/// The built-in sample instances (used when no fixtures file is given).
pub const SAMPLES: &str = include_str!("samples.json");

/// Why fixtures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("fixtures are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "fixtures must be an array of instance objects or {{\"instances\": [...]}}, each with a string \"id\""
    )]
    Shape,
}

/// Parses fixtures: an array of instance objects or `{"instances": [...]}`.
pub fn parse_fixtures(text: &str) -> Result<Vec<Value>, FixtureError> {
    let v: Value = serde_json::from_str(text)?;
    let list = match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("instances") {
            Some(Value::Array(a)) => a,
            _ => return Err(FixtureError::Shape),
        },
        _ => return Err(FixtureError::Shape),
    };
    if list.iter().any(|i| {
        i.get("id")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    }) {
        return Err(FixtureError::Shape);
    }
    Ok(list)
}

/// Reads and parses a fixtures file.
pub(super) fn read_fixtures(path: &Path) -> Result<Vec<Value>, FixtureError> {
    std::fs::read_to_string(path)
        .map_err(|source| FixtureError::Read {
            path: path.display().to_string(),
            source,
        })
        .and_then(|t| parse_fixtures(&t))
}

impl Simulator {
    /// The built-in samples.
    pub fn samples() -> Vec<Value> {
        parse_fixtures(SAMPLES).unwrap_or_default()
    }
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}
