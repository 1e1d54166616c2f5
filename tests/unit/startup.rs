//! Start-up as a user meets it: bad flags and a missing CRD exit non-zero with a message that
//! says what to do.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use crate::support::{Deadline, PORT_ATTEMPTS, WAIT, bind_failed, clean_env};

const OPERATOR: &str = env!("CARGO_BIN_EXE_ppio-operator");

/// Runs the operator with `args` and nothing of the caller's environment but `envs` (and
/// PATH, HOME, TMPDIR): its exit code and stderr.
fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(OPERATOR);
    clean_env(&mut cmd).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the operator runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_flag_exits_non_zero_naming_the_flag() {
    for (args, flag) in [
        (
            vec!["run", "--default-refresh-interval", "1s"],
            "--default-refresh-interval",
        ),
        (
            vec!["run", "--default-refresh-interval", "abc"],
            "--default-refresh-interval",
        ),
        (vec!["run", "--ppio-base-url", "ftp://x"], "--ppio-base-url"),
        (vec!["run", "--http-addr", "localhost"], "--http-addr"),
        (vec!["run", "--no-such-flag"], "--no-such-flag"),
    ] {
        let (code, err) = run(&args, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    // Environment fallbacks are checked the same way.
    let (code, err) = run(&["run"], &[("PPIO_DEFAULT_REFRESH_INTERVAL", "25h")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--default-refresh-interval"), "{err}");
}

#[test]
fn crd_prints_the_committed_file() {
    let out = Command::new(OPERATOR).arg("crd").output().expect("runs");
    assert!(out.status.success());
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/ppioinstances.gpus.ppio.com.yaml"
    ))
    .expect("file");
    assert!(
        out.stdout == committed,
        "`ppio-operator crd` differs from crds/: run tools/crd.sh"
    );
}

/// An API server that knows no PpioInstance CRD: every request is a Kubernetes 404.
async fn api_without_the_crd() -> SocketAddr {
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "the server could not find the requested resource", "reason": "NotFound", "details": {}, "code": 404})),
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_exits_non_zero_with_the_install_command() {
    let addr = api_without_the_crd().await;
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{addr}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        ),
    )
    .expect("kubeconfig");
    let kc = kubeconfig.display().to_string();
    let (code, err) = tokio::task::spawn_blocking(move || {
        run(
            &["run", "--http-addr", "127.0.0.1:0"],
            &[("KUBECONFIG", &kc)],
        )
    })
    .await
    .expect("join");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ppioinstances.gpus.ppio.com"), "{err}");
    assert!(
        err.contains("ppio-operator crd | kubectl apply --server-side -f -"),
        "{err}"
    );
}

#[test]
fn no_cluster_configuration_is_a_clear_error() {
    let (code, err) = run(
        &["run", "--http-addr", "127.0.0.1:0"],
        &[
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
            ("HOME", "/nonexistent"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("KUBECONFIG"), "{err}");
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_serves_the_samples_and_refuses_bad_fixtures() {
    let dir = tempfile::tempdir().expect("tmp");
    let client = reqwest::Client::new();
    // Started again on another port when its port was taken before it bound it.
    let mut attempt = 1;
    let (mut sim, body) = loop {
        let port = ppio_testenv::free_port().expect("port");
        let log = dir.path().join(format!("simulate-{port}.log"));
        let mut sim = ppio_testenv::Guarded::spawn_clean(
            "ppio-operator simulate",
            std::path::Path::new(OPERATOR),
            &[
                "simulate".into(),
                "--addr".into(),
                format!("127.0.0.1:{port}"),
                "--api-key".into(),
                "k".into(),
            ],
            &log,
            &[],
        )
        .expect("starts");
        let url = format!("http://127.0.0.1:{port}/gpus/v2/instances/b7e2c91d04");
        let deadline = Deadline::new("the simulator answers", WAIT);
        let body = loop {
            match client.get(&url).bearer_auth("k").send().await {
                Ok(r) if r.status().is_success() && sim.check_alive().is_ok() => {
                    break Some(r.text().await.expect("body"));
                }
                _ => {
                    if let Err(e) = sim.check_alive() {
                        if attempt < PORT_ATTEMPTS && bind_failed(&log) {
                            break None;
                        }
                        panic!("the simulator exited: {e}");
                    }
                    deadline.check(|| std::fs::read_to_string(&log).unwrap_or_default());
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        match body {
            Some(body) => break (sim, body),
            None => attempt += 1,
        }
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["status"]["status"], "starting");
    sim.signal("TERM").expect("term");
    // Hang protection, not a claim about speed.
    let status = sim.wait_timeout(WAIT).expect("wait").expect("exits");
    assert!(status.success());

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"instances": [{"name": "no id"}]}"#).expect("write");
    let (code, err) = tokio::task::spawn_blocking(move || {
        run(
            &[
                "simulate",
                "--api-key",
                "k",
                "--addr",
                "127.0.0.1:0",
                "--fixtures",
                &bad.display().to_string(),
            ],
            &[],
        )
    })
    .await
    .expect("join");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--fixtures"), "{err}");
    let (code, err) = run(&["simulate", "--addr", "127.0.0.1:0"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--api-key"), "{err}");
}
