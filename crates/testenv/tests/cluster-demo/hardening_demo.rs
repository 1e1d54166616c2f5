//! The demo's state folder holds the local cluster's admin kubeconfig and keys: it is a folder
//! of the current user's only, and so are the files in it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use clap::Parser;
use ppio_testenv::controlplane::write_private;
use ppio_testenv::demo::{DemoArgs, current_uid, default_state_dir, prepare_state_dir};
use ppio_testenv::{ControlPlane, tools_dir};

const DEMO: &str = env!("CARGO_BIN_EXE_ppio-demo");

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("metadata").mode() & 0o777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The owner of a file this process creates: the uid, found without `/proc`.
fn my_uid() -> u32 {
    tempfile::tempfile()
        .expect("tmp file")
        .metadata()
        .expect("metadata")
        .uid()
}

#[test]
fn the_default_state_dir_is_per_user() {
    let uid = my_uid();
    assert_eq!(current_uid().expect("uid"), uid);
    let expected = std::env::temp_dir().join(format!("ppio-operator-demo-{uid}"));
    assert_eq!(default_state_dir(), expected);
    assert_eq!(DemoArgs::parse_from(["ppio-demo"]).state_dir, expected);
}

#[test]
fn a_new_state_dir_is_created_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("nested/state");
    prepare_state_dir(&dir).expect("prepared");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(std::fs::metadata(&dir).expect("meta").uid(), my_uid());
    assert_eq!(mode(&dir.join(".ppio-operator-demo")), 0o600);

    // An earlier demo's folder is emptied and stays private.
    std::fs::write(dir.join("kubeconfig"), "old").expect("write");
    prepare_state_dir(&dir).expect("prepared again");
    assert!(!dir.join("kubeconfig").exists());
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn a_folder_other_users_may_access_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tmp");
    for m in [0o755, 0o750, 0o701, 0o777, 0o1777] {
        let dir = tmp.path().join(format!("open-{m:o}"));
        std::fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, m);
        let e = prepare_state_dir(&dir).expect_err("refused");
        assert!(e.contains("open to other users"), "{m:o}: {e}");
        assert_eq!(
            std::fs::metadata(&dir).expect("meta").mode() & 0o7777,
            m,
            "mode changed"
        );
        assert!(
            std::fs::read_dir(&dir).expect("dir").next().is_none(),
            "written into"
        );
    }
}

#[test]
fn a_folder_of_another_user_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = if my_uid() == 0 {
        // As root: a private folder handed to `nobody`.
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o700);
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        dir
    } else {
        Path::new("/").to_path_buf()
    };
    let e = prepare_state_dir(&dir).expect_err("refused");
    assert!(e.contains("belongs to another user"), "{e}");
    assert!(!dir.join(".ppio-operator-demo").exists());
}

#[test]
fn a_symbolic_link_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    chmod(&real, 0o700);
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let e = prepare_state_dir(&link).expect_err("refused");
    assert!(e.contains("symbolic link"), "{e}");
    assert!(std::fs::read_dir(&real).expect("dir").next().is_none());
}

#[test]
fn the_demo_refuses_an_open_state_dir_before_starting_anything() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o777);
    let out = Command::new(DEMO)
        .args(["--state-dir", &dir.display().to_string(), "--once"])
        .output()
        .expect("the demo runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("open to other users"), "{err}");
    assert!(std::fs::read_dir(&dir).expect("dir").next().is_none());
}

#[test]
fn private_files_are_0600_even_when_they_existed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = tmp.path().join("kubeconfig");
    std::fs::write(&p, "old").expect("write");
    chmod(&p, 0o644);
    write_private(&p, b"new").expect("written");
    assert_eq!(mode(&p), 0o600);
    assert_eq!(std::fs::read_to_string(&p).expect("read"), "new");
}

#[ppio_test_macros::test]
async fn the_kubeconfig_and_keys_of_the_control_plane_are_private() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("state");
    prepare_state_dir(&dir).expect("prepared");
    let mut cp = ControlPlane::start(&tools_dir(), Some(&dir), None)
        .await
        .expect("control plane");
    assert_eq!(mode(&cp.kubeconfig), 0o600, "the admin kubeconfig");
    let pki = dir.join("pki");
    assert_eq!(mode(&pki), 0o700);
    for f in [
        "ca.crt",
        "apiserver.crt",
        "apiserver.key",
        "sa.key",
        "sa.pub",
    ] {
        assert_eq!(mode(&pki.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir), 0o700);
    cp.stop();
}
