//! The demo as a user runs it (`tools/demo.sh` runs `ppio-demo`): it shows the sample
//! PpioInstances with their observed state, its control plane dies with it, and it never
//! empties a folder it did not make.

use std::process::Command;
use std::time::Duration;

use ppio_testenv::cluster::Deadline;
use ppio_testenv::{Guarded, tools_dir};

const DEMO: &str = env!("CARGO_BIN_EXE_ppio-demo");

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(DEMO);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the demo runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[ppio_test_macros::test]
async fn the_demo_runs_and_leaves_no_process_behind_when_killed() {
    let state = tempfile::Builder::new()
        .prefix("ppio-demo-test-")
        .tempdir()
        .expect("tmp");
    let dir = state.path().join("demo");
    let log = state.path().join("demo.log");
    let mut demo = Guarded::spawn(
        "ppio-demo",
        std::path::Path::new(DEMO),
        &["--state-dir".into(), dir.display().to_string()],
        &log,
        &[("PPIO_TOOLS_BIN", &tools_dir().display().to_string())],
    )
    .expect("the demo starts");
    let deadline = Deadline::new("the demo up", Duration::from_secs(180));
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("The demo runs until Ctrl-C") {
            break text;
        }
        demo.check_alive()
            .unwrap_or_else(|e| panic!("the demo died: {e}\n{text}"));
        deadline.check(|| format!("the demo did not come up:\n{text}"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The sample PpioInstances are shown with their observed state.
    for row in [
        "trainer-a    ca338f12f3   running",
        "notebook-c   c0ffee1234   exited",
        "retired-d    d00000dead   NotFound",
    ] {
        assert!(text.contains(row), "missing {row:?} in:\n{text}");
    }
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.join(format!("{name}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    };
    let children = [pid("etcd"), pid("kube-apiserver")];
    let alive = |p: u32| std::path::Path::new(&format!("/proc/{p}")).exists();
    assert!(children.iter().all(|p| alive(*p)));
    // SIGKILL: no clean-up code runs in the demo, yet its etcd and kube-apiserver must go.
    demo.signal("KILL").expect("kill");
    let deadline = Deadline::new(
        "etcd and kube-apiserver gone with the demo",
        Duration::from_secs(60),
    );
    while children.iter().any(|p| alive(*p)) {
        deadline.check(|| "etcd or kube-apiserver outlived the demo");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_demo_never_empties_a_folder_it_did_not_make() {
    let dir = tempfile::tempdir().expect("tmp");
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write");
    let (code, err) = run(
        &["--state-dir", &dir.path().display().to_string(), "--once"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--state-dir") && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&precious).expect("still there"),
        "keep me"
    );
}
