//! The generated CRD: committed copy in sync, names from the contract, and the validation
//! rules (OpenAPI pattern/length and CEL) that the API server enforces, checked locally.

use kube::CustomResourceExt;
use kube::core::cel::Validator;
use ppio_operator::crd::{CRD_PATH, PpioInstance, crd_yaml};
use serde_json::{Value, json};

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/",
        "crds/ppioinstances.gpus.ppio.com.yaml"
    ))
    .expect("crds/ppioinstances.gpus.ppio.com.yaml exists");
    let generated = crd_yaml().expect("renders");
    assert!(
        committed == generated,
        "{CRD_PATH} is out of date: run tools/crd.sh (it regenerates both CRD copies)"
    );
}

#[test]
fn names_columns_and_subresources_follow_the_contract() {
    let crd = PpioInstance::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("ppioinstances.gpus.ppio.com")
    );
    let n = &crd.spec.names;
    assert_eq!(
        (n.kind.as_str(), n.plural.as_str()),
        ("PpioInstance", "ppioinstances")
    );
    assert_eq!(n.singular.as_deref(), Some("ppioinstance"));
    assert_eq!(n.short_names.as_deref(), Some(&["ppioi".to_string()][..]));
    assert_eq!(n.categories.as_deref(), Some(&["ppio".to_string()][..]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert_eq!(v.name, "v1alpha1");
    assert!(
        v.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let cols: Vec<(String, i32)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.to_uppercase(), c.priority.unwrap_or(0)))
        .collect();
    let want = [
        ("INSTANCE", 0),
        ("STATE", 0),
        ("GPUS", 0),
        ("REGION", 0),
        ("READY", 0),
        ("SYNCED", 0),
        ("AGE", 0),
        ("IP", 1),
        ("BILLING", 1),
        ("COST/H", 1),
        ("CURRENCY", 1),
    ];
    assert_eq!(
        cols,
        want.iter()
            .map(|(n, p)| (n.to_string(), *p))
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_spec_and_status_field_is_documented() {
    let schema = schema();
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                if p.get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    missing.push(here.clone());
                }
                walk(&here, p, missing);
                if let Some(items) = p.get("items") {
                    walk(&here, items, missing);
                }
            }
        }
    }
    let mut missing = vec![];
    walk("spec", &schema["properties"]["spec"], &mut missing);
    walk("status", &schema["properties"]["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

fn schema() -> Value {
    let crd = PpioInstance::crd();
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    serde_json::to_value(s).expect("json")
}

/// The OpenAPI checks the API server makes on the spec strings: pattern, minLength, maxLength.
fn openapi_errors(schema: &Value, spec: &Value) -> Vec<String> {
    fn check(path: &str, schema: &Value, value: &Value, out: &mut Vec<String>) {
        if let (Some(props), Some(obj)) = (
            schema.get("properties").and_then(Value::as_object),
            value.as_object(),
        ) {
            for (k, v) in obj {
                if let Some(s) = props.get(k) {
                    check(&format!("{path}.{k}"), s, v, out);
                }
            }
        }
        if let Some(text) = value.as_str() {
            let len = text.chars().count() as u64;
            if schema
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                out.push(format!("{path}: shorter than minLength"));
            }
            if schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                out.push(format!("{path}: longer than maxLength"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && !regex::Regex::new(p)
                    .expect("pattern compiles")
                    .is_match(text)
            {
                out.push(format!("{path}: does not match {p}"));
            }
        }
    }
    let mut out = vec![];
    check("spec", &schema["properties"]["spec"], spec, &mut out);
    out
}

fn object(spec: Value) -> Value {
    json!({"apiVersion": "gpus.ppio.com/v1alpha1", "kind": "PpioInstance", "metadata": {"name": "x", "namespace": "ml"}, "spec": spec})
}

/// All errors the API server would report for creating (old = None) or updating.
fn errors(spec: Value, old: Option<Value>) -> Vec<String> {
    let schema = schema();
    let mut out = openapi_errors(&schema, &spec);
    if let Err(e) = Validator::new().validate(&schema, &object(spec), old.map(object).as_ref()) {
        out.extend(
            e.into_vec()
                .into_iter()
                .map(|e| format!("{}: {}", e.field_path, e.message)),
        );
    }
    out
}

#[test]
fn valid_specs_are_accepted() {
    for spec in [
        json!({"instanceId": "ca338f12f3"}),
        json!({"instanceId": "a"}),
        json!({"instanceId": "A.b_c-9"}),
        json!({"instanceId": "x".repeat(255)}),
        json!({"instanceId": "ca338f12f3", "refreshInterval": "10s", "suspend": true}),
        json!({"instanceId": "ca338f12f3", "refreshInterval": "24h"}),
        json!({"instanceId": "ca338f12f3", "refreshInterval": "1m30s"}),
        json!({"instanceId": "ca338f12f3", "credentialsSecretRef": {"name": "ppio-credentials", "key": "apiKey"}}),
        json!({"instanceId": "ca338f12f3", "credentialsSecretRef": {"name": "a.b-c"}}),
    ] {
        assert_eq!(errors(spec.clone(), None), Vec::<String>::new(), "{spec}");
    }
    let same = json!({"instanceId": "ca338f12f3", "refreshInterval": "30s"});
    assert_eq!(
        errors(same.clone(), Some(json!({"instanceId": "ca338f12f3"}))),
        Vec::<String>::new()
    );
}

#[test]
fn bad_instance_ids_are_rejected() {
    for id in [
        "../x",
        "a/b",
        "%2F",
        "",
        &"x".repeat(256),
        ".hidden",
        "-x",
        "a b",
        "a?b",
    ] {
        let errs = errors(json!({"instanceId": id}), None);
        assert!(
            errs.iter().any(|e| e.starts_with("spec.instanceId")),
            "{id:?} accepted: {errs:?}"
        );
    }
}

#[test]
fn instance_id_is_immutable() {
    let errs = errors(
        json!({"instanceId": "other"}),
        Some(json!({"instanceId": "ca338f12f3"})),
    );
    assert!(errs.iter().any(|e| e.contains("immutable")), "{errs:?}");
}

#[test]
fn bad_refresh_intervals_are_rejected() {
    for ri in [
        "1s", "9s", "abc", "25h", "24h1s", "10", "1.5m", "-10s", "10ms", "",
    ] {
        let errs = errors(
            json!({"instanceId": "ca338f12f3", "refreshInterval": ri}),
            None,
        );
        assert!(
            errs.iter().any(|e| e.contains("refreshInterval")),
            "{ri:?} accepted: {errs:?}"
        );
    }
}

#[test]
fn the_refresh_interval_pattern_is_the_operators_duration_grammar() {
    let crd = serde_json::to_value(PpioInstance::crd()).expect("crd json");
    let pattern =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["refreshInterval"]["pattern"]
            .as_str()
            .expect("refreshInterval has a pattern");
    assert_eq!(pattern, ppio_operator::duration::PATTERN);
    let re = regex::Regex::new(pattern).expect("pattern compiles");
    for text in [
        "30s",
        "5m",
        "1h30m",
        "500ms",
        "1m500ms",
        "10500ms",
        "",
        "1.5m",
        "10",
        "1d",
        "ms",
        "10 s",
        "1hm",
        "1234567890s",
        "-1s",
    ] {
        assert_eq!(
            re.is_match(text),
            ppio_operator::duration::parse_duration(text).is_ok(),
            "{text:?}: the CRD pattern and the operator's parser disagree"
        );
    }
}

#[test]
fn bad_secret_references_are_rejected() {
    for sref in [
        json!({"name": "Bad_Name"}),
        json!({"name": ""}),
        json!({"name": "x", "key": "a/b"}),
        json!({"name": "x".repeat(254)}),
    ] {
        let errs = errors(
            json!({"instanceId": "ca338f12f3", "credentialsSecretRef": sref}),
            None,
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("spec.credentialsSecretRef")),
            "{sref} accepted: {errs:?}"
        );
    }
}
