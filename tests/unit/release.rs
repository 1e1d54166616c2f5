//! What a release is made of, checked before anything is built: one version everywhere (the
//! crate, the chart's version and appVersion, the Dockerfile, the newest CHANGELOG section),
//! the project's licence, and `tools/release.sh` refusing what it cannot publish safely
//! (another version, a registry reference it cannot use, plain HTTP to a remote registry) with
//! a message and exit status 2, before building anything. The release itself runs in the node
//! tier (tests/node), against a real registry.

use std::path::Path;
use std::process::Command;

use crate::support::code_and_output;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of the top-level `key:` of a YAML file's text.
fn yaml_field(text: &str, key: &str) -> String {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).expect("YAML");
    doc[key].as_str().map(str::to_string).unwrap_or_default()
}

#[test]
fn one_version_names_the_crate_the_chart_the_dockerfile_and_the_changelog() {
    let chart = read("charts/ppio-operator/Chart.yaml");
    assert_eq!(
        yaml_field(&chart, "version"),
        VERSION,
        "the chart's version"
    );
    assert_eq!(
        yaml_field(&chart, "appVersion"),
        VERSION,
        "the chart's appVersion"
    );
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("org.opencontainers.image.version=\"{VERSION}\""))
            && dockerfile.contains(&format!("ARG RELEASE=target/release/{VERSION}")),
        "the Dockerfile names {VERSION}"
    );
    let changelog = read("CHANGELOG.md");
    let newest = changelog
        .lines()
        .find(|l| l.starts_with("## [") && !l.starts_with("## [Unreleased]"))
        .expect("a released section");
    assert!(
        newest.starts_with(&format!("## [{VERSION}] - ")),
        "the newest CHANGELOG section is this version: {newest}"
    );
    assert!(
        changelog.contains("## [Unreleased]"),
        "a section for what comes next"
    );
}

#[test]
fn the_project_is_apache_2_0_and_says_so_everywhere() {
    let license = read("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(read("Cargo.toml").contains("license = \"Apache-2.0\""));
    assert!(read("Dockerfile").contains("org.opencontainers.image.licenses=\"Apache-2.0\""));
    // The dependency policy and the licence texts accept the same licences.
    let deny: toml_like::Lists = toml_like::lists(&read("deny.toml"));
    let about: toml_like::Lists = toml_like::lists(&read("about.toml"));
    assert_eq!(deny.get("allow"), about.get("accepted"));
    assert!(
        deny.get("allow")
            .is_some_and(|l| !l.iter().any(|x| x.contains("GPL")))
    );
}

/// Just enough TOML for the string lists of deny.toml and about.toml.
mod toml_like {
    use std::collections::BTreeMap;
    pub type Lists = BTreeMap<String, Vec<String>>;
    pub fn lists(text: &str) -> Lists {
        let mut out = Lists::new();
        let mut current: Option<(String, Vec<String>)> = None;
        for line in text.lines().map(str::trim) {
            if let Some((key, list)) = current.as_mut() {
                if line.starts_with(']') {
                    out.insert(key.clone(), std::mem::take(list));
                    current = None;
                } else if let Some(item) = line.strip_prefix('"') {
                    list.push(item.split('"').next().unwrap_or("").to_string());
                }
            } else if let Some(key) = line.strip_suffix("= [") {
                current = Some((key.trim().to_string(), Vec::new()));
            }
        }
        out
    }
}

/// `tools/release.sh args`: (exit status, stdout and stderr).
fn release_sh(args: &[&str]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(Path::new(REPO).join("tools/release.sh"))
        .args(args)
        .output()
        .expect("tools/release.sh runs");
    code_and_output(&out)
}

#[test]
fn the_release_command_refuses_what_it_cannot_publish_before_building() {
    for (args, says) in [
        (vec![], "VERSION is required"),
        (
            vec!["9.9.9", "registry.example.com"],
            "is not the crate's version",
        ),
        (vec![VERSION], "REGISTRY is required"),
        (
            vec![VERSION, "https://registry.example.com"],
            "is not host[:port][/path]",
        ),
        (
            vec![VERSION, "registry.example.com/Team"],
            "is not host[:port][/path]",
        ),
        (
            vec![VERSION, "registry.example.com/team", "--plain-http"],
            "only allowed for a registry on a loopback address",
        ),
        (
            vec![
                VERSION,
                "registry.example.com",
                "--key",
                "/nonexistent/cosign.key",
            ],
            "no such file",
        ),
        (
            vec![VERSION, "--no-push", "registry.example.com"],
            "--no-push takes no REGISTRY",
        ),
        (vec![VERSION, "--bogus"], "unknown option '--bogus'"),
    ] {
        let (code, out) = release_sh(&args);
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?} says {says:?}: {out}");
        assert!(
            !out.contains("==> building"),
            "{args:?}: nothing was built: {out}"
        );
    }
    let (code, out) = release_sh(&["--help"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("tools/release.sh VERSION REGISTRY"), "{out}");
}
