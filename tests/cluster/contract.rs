//! Promises of CONTRACT.md that users rely on and no other test pins: `spec.instanceId` is
//! required; `run` takes its settings from the environment (`PPIO_BASE_URL`,
//! `WATCH_NAMESPACE`, `HTTP_ADDR`) when no flag is given; Kubernetes access falls back to
//! `~/.kube/config`; `import` prints its manifests and writes nothing anywhere else.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use ppio_operator::crd::PpioInstance;

use crate::support::*;

/// A sample instance of the simulator (the seed's example).
const SAMPLE: &str = "ca338f12f3";

#[ppio_test_macros::test]
async fn a_ppio_instance_without_an_instance_id_is_refused_by_the_api_server() {
    let client = client().await;
    let ns = namespace(&client, "contract-id").await;
    let manifest = format!(
        "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: no-id\n  namespace: {ns}\nspec:\n  refreshInterval: 60s\n"
    );
    let out = kubectl(&["apply", "-f", "-"], Some(&manifest));
    assert!(
        !out.status.success(),
        "a PpioInstance without instanceId was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.instanceId") && err.contains("Required value"),
        "the refusal names the missing field: {err}"
    );
    let api: Api<PpioInstance> = Api::namespaced(client, &ns);
    assert!(
        api.get_opt("no-id").await.expect("get").is_none(),
        "nothing was stored"
    );
}

/// Runs `ppio-operator run` with no flag but `run`: every setting from `envs` (and a clean
/// environment otherwise), and waits until `/readyz` on `http` answers 200.
async fn operator_from_env(name: &str, http: SocketAddr, envs: &[(&str, &str)]) -> Operator {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let log = dir.join(format!("{name}-{}.log", http.port()));
    let args = vec!["run".to_string()];
    let process = Guarded::spawn_clean("ppio-operator", Path::new(OPERATOR), &args, &log, envs)
        .expect("operator starts");
    let mut op = Operator { process, http, log };
    let deadline = Deadline::new(
        "the operator's /readyz on HTTP_ADDR",
        Duration::from_secs(60),
    );
    loop {
        op.assert_running();
        if http_get(http, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
        {
            return op;
        }
        deadline.check(|| op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[ppio_test_macros::test]
async fn run_takes_the_base_url_the_namespace_and_the_http_address_from_the_environment() {
    let client = client().await;
    let watched = namespace(&client, "contract-env").await;
    let other = namespace(&client, "contract-other").await;
    let (sim, sim_addr) = simulator(&["key-env"]).await;
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
    let base_url = format!("http://{sim_addr}");
    let http_addr = http.to_string();
    let kc = kubeconfig().display().to_string();
    let mut op = operator_from_env(
        "contract-env",
        http,
        &[
            ("KUBECONFIG", &kc),
            ("PPIO_API_KEY", "key-env"),
            ("PPIO_BASE_URL", &base_url),
            ("WATCH_NAMESPACE", &watched),
            ("HTTP_ADDR", &http_addr),
            ("PPIO_DEFAULT_REFRESH_INTERVAL", "10s"),
        ],
    )
    .await;
    // HTTP_ADDR: /readyz answered above, and /metrics is there too.
    let (code, _) = http_get(http, "/metrics").await.expect("metrics answer");
    assert_eq!(code, 200);

    apply_instance(&watched, "in-watched", &format!("instanceId: {SAMPLE}"));
    apply_instance(&other, "in-other", &format!("instanceId: {SAMPLE}"));
    // PPIO_BASE_URL: observed from the simulator at that address.
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &watched);
    let seen = wait_observed(&api, "in-watched").await;
    assert_eq!(
        seen.status.as_ref().and_then(|s| s.instance_id.as_deref()),
        Some(SAMPLE)
    );
    assert!(
        observations(&sim, SAMPLE) > 0,
        "the simulator at PPIO_BASE_URL was asked"
    );
    // WATCH_NAMESPACE: the other namespace's PpioInstance is never touched. Its sibling in
    // the watched namespace was observed, and the operator handles both alike, so one more
    // observation of the watched one means the other was passed over, not merely not yet seen.
    let before = observations(&sim, SAMPLE);
    let deadline = Deadline::new("another observation of in-watched", Duration::from_secs(60));
    while observations(&sim, SAMPLE) == before {
        deadline.check(|| op.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let other_api: Api<PpioInstance> = Api::namespaced(client.clone(), &other);
    let untouched = other_api.get("in-other").await.expect("get");
    // The CRD's default status ({observedGeneration: 0}) only, and no field of the operator's.
    let status = untouched.status.clone().unwrap_or_default();
    assert!(
        status.instance_id.is_none() && status.state.is_none() && status.conditions.is_empty(),
        "a PpioInstance outside WATCH_NAMESPACE got a status: {status:?}"
    );
    let managers: Vec<String> = untouched
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(
        !managers.iter().any(|m| m == "ppio-operator"),
        "the operator wrote to a PpioInstance outside WATCH_NAMESPACE: {managers:?}"
    );
    assert!(
        !op.log().contains(&other),
        "the operator logged about a namespace it does not watch"
    );
    op.assert_running();
}

#[ppio_test_macros::test]
async fn run_reads_the_kubeconfig_in_the_home_folder_when_kubeconfig_is_unset() {
    let client = client().await;
    let ns = namespace(&client, "contract-home").await;
    let (_sim, sim_addr) = simulator(&["key-home"]).await;
    let home = tempfile::tempdir().expect("home");
    std::fs::create_dir_all(home.path().join(".kube")).expect(".kube");
    std::fs::copy(kubeconfig(), home.path().join(".kube/config")).expect("kubeconfig");
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
    let base_url = format!("http://{sim_addr}");
    let http_addr = http.to_string();
    let home_dir = home.path().display().to_string();
    let mut op = operator_from_env(
        "contract-home",
        http,
        &[
            ("HOME", &home_dir),
            ("PPIO_API_KEY", "key-home"),
            ("PPIO_BASE_URL", &base_url),
            ("WATCH_NAMESPACE", &ns),
            ("HTTP_ADDR", &http_addr),
        ],
    )
    .await;
    apply_instance(&ns, "from-home", &format!("instanceId: {SAMPLE}"));
    let api: Api<PpioInstance> = Api::namespaced(client, &ns);
    wait_observed(&api, "from-home").await;
    op.assert_running();
}

/// Every file and folder under `dir`, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[ppio_test_macros::test]
async fn import_prints_manifests_and_writes_nothing_anywhere_else() {
    let client = client().await;
    let (sim, sim_addr) = simulator(&["key-import"]).await;
    let all: Api<PpioInstance> = Api::all(client);
    let before = all
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .len();
    // Its working folder, home and temporary folder are empty, and it may reach the cluster.
    let cwd = tempfile::tempdir().expect("cwd");
    let home = tempfile::tempdir().expect("home");
    let tmp = tempfile::tempdir().expect("tmp");
    let out = Command::new(OPERATOR)
        .args(["import", "--namespace", "imported", "--ppio-base-url"])
        .arg(format!("http://{sim_addr}"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PPIO_API_KEY", "key-import")
        .env("HOME", home.path())
        .env("TMPDIR", tmp.path())
        .env("KUBECONFIG", kubeconfig())
        .current_dir(cwd.path())
        .output()
        .expect("import runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stream.contains("kind: PpioInstance") && stream.contains(SAMPLE),
        "{stream}"
    );
    assert!(sim.counts().list > 0, "it read the instances from the key");
    for (what, dir) in [
        ("working folder", cwd.path()),
        ("home", home.path()),
        ("temporary folder", tmp.path()),
    ] {
        assert_eq!(
            tree(dir),
            Vec::<String>::new(),
            "import wrote into its {what}"
        );
    }
    let after = all.list(&ListParams::default()).await.expect("list").items;
    assert!(
        after
            .iter()
            .all(|o| o.metadata.namespace.as_deref() != Some("imported")),
        "import created objects in the cluster"
    );
    // Other tests create PpioInstances meanwhile; none of them is in `imported`.
    assert!(after.len() >= before);
}

/// `ppio-operator check` with `args` against the shared control plane: (exit code, output).
fn check(args: &[&str]) -> (i32, String) {
    let out = clean_env(&mut Command::new(OPERATOR))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("check runs");
    code_and_output(&out)
}

#[ppio_test_macros::test]
async fn check_says_whether_the_crd_is_served_and_the_operator_ready() {
    let Scene { op, .. } = scene("contract-check", "key-check", &[]).await;
    let readyz = format!("--readyz-url=http://{}/readyz", op.http);
    let (code, out) = check(&[&readyz]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: the PpioInstance CRD is served"), "{out}");
    assert!(out.contains("/readyz answered 200"), "{out}");
    // Nothing answers there: exit 1, naming the URL.
    let (_socket, port) = closed_port();
    let (code, out) = check(&[&format!("--readyz-url=http://127.0.0.1:{port}/readyz")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    // A URL that is not plain http: refused before anything is asked (exit 2).
    let (code, out) = check(&["--readyz-url=ftp://example/readyz"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--readyz-url"), "{out}");
    // No cluster configuration: exit 1, saying so.
    let out = clean_env(&mut Command::new(OPERATOR))
        .arg("check")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("check runs");
    assert_eq!(out.status.code(), Some(1));
}
