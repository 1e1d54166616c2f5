//! `tools/test.sh` as a user meets it before anything is built: without root it stops at once
//! and names the two ways on; under `CI=true` it refuses to leave a tier out; a bad argument is
//! refused. (Its runs themselves are what CI does.)

use std::path::Path;
use std::process::Command;

use crate::support::code_and_output;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `tools/test.sh args` as user id `uid` (a stand-in `id` on PATH), with `ci` as CI.
fn test_sh(args: &[&str], uid: u32, ci: Option<&str>) -> (i32, String) {
    let stub = tempfile::tempdir().expect("tmp");
    let id = stub.path().join("id");
    std::fs::write(&id, format!("#!/bin/sh\necho {uid}\n")).expect("stub");
    let mut perms = std::fs::metadata(&id).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&id, perms).expect("chmod");
    let path = format!(
        "{}:{}",
        stub.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(REPO).join("tools/test.sh"))
        .args(args)
        .env("PATH", path)
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    let out = cmd.output().expect("tools/test.sh runs");
    code_and_output(&out)
}

#[test]
fn without_root_it_stops_before_building_and_names_the_ways_on() {
    let (code, out) = test_sh(&[], 1000, None);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the node tier needs root"), "{out}");
    assert!(out.contains("tools/test.sh --no-node"), "{out}");
    assert!(out.contains("sudo"), "{out}");
    // Nothing was built or run: no cargo or Go step was started.
    assert!(!out.contains("==> "), "{out}");
    // Naming the node tier alone as a user does the same.
    let (code, out) = test_sh(&["node"], 1000, None);
    assert_eq!(code, 2, "{out}");
}

#[test]
fn under_ci_no_tier_may_be_left_out() {
    for args in [&["--no-node"][..], &["unit"][..], &["unit", "cluster"][..]] {
        let (code, out) = test_sh(args, 0, Some("true"));
        assert_eq!(code, 2, "{args:?}: {out}");
        assert!(
            out.contains("under CI=true every tier runs"),
            "{args:?}: {out}"
        );
    }
}

#[test]
fn a_bad_argument_is_refused_naming_it() {
    let (code, out) = test_sh(&["everything"], 0, None);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("unknown argument 'everything'"), "{out}");
}
