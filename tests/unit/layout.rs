//! What ships: the operator's crate depends on nothing that only tests or the demo need, and
//! its binary offers exactly `run`, `crd`, `simulate`, `import` and `check`.

use std::process::Command;

const OPERATOR: &str = env!("CARGO_BIN_EXE_ppio-operator");

#[test]
fn the_product_depends_on_no_test_or_demo_tooling() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "ppio-operator",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"kube"), "unexpected tree:\n{tree}");
    for tooling in ["rcgen", "tempfile", "tower-test", "ppio-testenv"] {
        assert!(
            !crates.contains(&tooling),
            "{tooling} is a normal dependency of the operator:\n{tree}"
        );
    }
}

#[test]
fn the_binary_offers_run_crd_simulate_import_and_check_only() {
    let out = Command::new(OPERATOR).arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["run", "crd", "simulate", "import", "check", "help"],
        "{help}"
    );
    let out = Command::new(OPERATOR).arg("demo").output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "demo is not a subcommand");
}
