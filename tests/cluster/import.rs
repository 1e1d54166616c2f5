//! `ppio-operator import` as a user runs it against the simulator: every page is walked, the
//! manifests are valid and stable, the real API server accepts them, and the operator observes
//! every imported instance.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;
use kube::Api;
use kube::api::ListParams;
use ppio_operator::crd::PpioInstance;
use serde::Deserialize;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../fixtures/get-instance.json");
const KEY: &str = "key-import";

/// `n` instances: many distinct names, some clashing, some that are no Kubernetes name at all.
fn instances(n: usize) -> Vec<Value> {
    let base: Value = serde_json::from_str(FIXTURE).expect("fixture");
    (0..n)
        .map(|i| {
            let mut v = base.clone();
            v["id"] = json!(format!("imp{i:04}x"));
            v["name"] = json!(match i % 10 {
                0 => "shared name".to_string(),
                1 => format!("GPU Box #{i} (prod)"),
                2 => String::new(),
                _ => format!("trainer-{i}"),
            });
            v["region"] = json!(if i % 3 == 0 {
                "us-east-1"
            } else {
                "cn-south-1"
            });
            v["status"]["status"] = json!(if i % 4 == 0 { "exited" } else { "running" });
            v
        })
        .collect()
}

fn import(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(OPERATOR);
    // Nothing of the caller's environment (PPIO_API_KEY, PPIO_BASE_URL...) reaches it.
    clean_env(&mut cmd).arg("import").args(args);
    if let Some(k) = key {
        cmd.env("PPIO_API_KEY", k);
    }
    cmd.output().expect("import runs")
}

fn docs(stream: &str) -> Vec<PpioInstance> {
    if stream.trim().is_empty() {
        return Vec::new();
    }
    serde_yaml::Deserializer::from_str(stream)
        .map(|d| PpioInstance::deserialize(d).expect("a PpioInstance manifest"))
        .collect()
}

fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_walks_every_page_and_the_operator_observes_every_manifest() {
    let client = client().await;
    let ns = namespace(&client, "import").await;
    let (sim, addr) = simulator_with(instances(250), &[KEY]).await;
    let url = format!("http://{addr}");
    let args = [
        "--namespace",
        ns.as_str(),
        "--ppio-base-url",
        url.as_str(),
        "--page-size",
        "100",
    ];

    let first = import(&args, Some(KEY));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(sim.counts().list, 3, "250 instances in pages of 100");
    assert!(sim.counts().instances.is_empty(), "import sends no GET");
    let stream = String::from_utf8(first.stdout.clone()).expect("utf-8");
    let objects = docs(&stream);
    assert_eq!(objects.len(), 250);
    let names: BTreeSet<String> = objects
        .iter()
        .map(|o| o.metadata.name.clone().expect("name"))
        .collect();
    assert_eq!(names.len(), 250, "names are unique");
    assert!(names.iter().all(|n| is_dns_label(n)), "{names:?}");
    let ids: BTreeSet<&str> = objects
        .iter()
        .map(|o| o.spec.instance_id.as_str())
        .collect();
    assert_eq!(ids.len(), 250);
    assert!(
        objects
            .iter()
            .all(|o| o.metadata.namespace.as_deref() == Some(ns.as_str()))
    );
    let a = objects
        .iter()
        .find(|o| o.spec.instance_id == "imp0001x")
        .expect("imp0001x");
    let ann = a.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("gpus.ppio.com/instance-name").map(String::as_str),
        Some("GPU Box #1 (prod)")
    );
    assert_eq!(
        ann.get("gpus.ppio.com/region").map(String::as_str),
        Some("cn-south-1")
    );

    // The same instances give the same bytes.
    let second = import(&args, Some(KEY));
    assert!(second.status.success());
    assert_eq!(second.stdout, first.stdout, "a second run differs");

    // One file per instance, each the same manifest as in the stream.
    let dir = tempfile::tempdir().expect("tmp");
    let out_dir = dir.path().join("manifests");
    let mut with_dir = args.to_vec();
    let out_dir_s = out_dir.display().to_string();
    with_dir.extend(["--output-dir", out_dir_s.as_str()]);
    let files = import(&with_dir, Some(KEY));
    assert!(files.status.success());
    assert!(
        files.stdout.is_empty(),
        "nothing on stdout with --output-dir"
    );
    let written: Vec<_> = std::fs::read_dir(&out_dir).expect("dir").collect();
    assert_eq!(written.len(), 250);
    let mut from_files = String::new();
    for n in &names {
        let text =
            std::fs::read_to_string(out_dir.join(format!("{n}.yaml"))).expect("file per name");
        // The import's marker line, then the manifest.
        let (marker, manifest) = text.split_once('\n').expect("lines");
        assert!(
            marker.starts_with("# written by ppio-operator import for instance imp"),
            "{marker}"
        );
        from_files.push_str("---\n");
        from_files.push_str(manifest);
    }
    let mut sorted_stream: Vec<(String, String)> = stream
        .split("---\n")
        .filter(|d| !d.is_empty())
        .map(|d| {
            (
                docs(d)[0].metadata.name.clone().unwrap_or_default(),
                d.to_string(),
            )
        })
        .collect();
    sorted_stream.sort();
    let stream_by_name: String = sorted_stream
        .iter()
        .map(|(_, d)| format!("---\n{d}"))
        .collect();
    assert_eq!(from_files, stream_by_name);

    // The real API server accepts every manifest.
    kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(&stream));
    let api: Api<PpioInstance> = Api::namespaced(client.clone(), &ns);
    assert!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "a dry run creates nothing"
    );

    // Applied for real, the operator observes every one of them.
    let _op = Operator::start(
        &ns,
        addr,
        Some(KEY),
        &["--ppio-requests-per-second", "200", "--ppio-burst", "200"],
    )
    .await;
    kubectl_ok(&["apply", "-f", "-"], Some(&stream));
    let deadline = Deadline::new("every imported PpioInstance observed", WAIT);
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        let observed = list
            .items
            .iter()
            .filter(|o| has(o, "Synced", "True", "Observed"))
            .count();
        if list.items.len() == 250 && observed == 250 {
            break;
        }
        deadline.check(|| format!("{observed} of {} observed", list.items.len()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_filters_like_the_api_and_fails_clearly() {
    let (sim, addr) = simulator_with(instances(40), &[KEY]).await;
    let url = format!("http://{addr}");
    let base = ["--namespace", "ml", "--ppio-base-url", url.as_str()];

    let mut filtered = base.to_vec();
    filtered.extend(["--state", "exited", "--region", "us-east-1"]);
    let out = import(&filtered, Some(KEY));
    assert!(out.status.success());
    let expected = instances(40)
        .iter()
        .filter(|v| v["status"]["status"] == "exited" && v["region"] == "us-east-1")
        .count();
    assert!(expected > 0);
    assert_eq!(docs(&String::from_utf8_lossy(&out.stdout)).len(), expected);

    let mut by_name = base.to_vec();
    by_name.extend(["--name", "imp0001"]);
    let out = import(&by_name, Some(KEY));
    let names: Vec<String> = docs(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|o| o.spec.instance_id.clone())
        .collect();
    assert_eq!(names, ["imp0001x"]);
    let mut by_billing = base.to_vec();
    by_billing.extend(["--billing-mode", "postpaid"]);
    let out = import(&by_billing, Some(KEY));
    assert!(out.status.success());
    assert!(
        docs(&String::from_utf8_lossy(&out.stdout)).is_empty(),
        "every instance here is prepaid"
    );
    by_billing.pop();
    by_billing.push("prepaid");
    let out = import(&by_billing, Some(KEY));
    assert_eq!(docs(&String::from_utf8_lossy(&out.stdout)).len(), 40);

    let mut with_secret = base.to_vec();
    with_secret.extend([
        "--credentials-secret",
        "team-key",
        "--credentials-key",
        "token",
    ]);
    let out = import(&with_secret, Some(KEY));
    let objects = docs(&String::from_utf8_lossy(&out.stdout));
    assert!(objects.iter().all(|o| {
        o.spec
            .credentials_secret_ref
            .as_ref()
            .is_some_and(|r| r.name == "team-key" && r.key.as_deref() == Some("token"))
    }));

    // A wrong key: a clear error, nothing on stdout, no key in the message.
    let out = import(&base, Some("sk-wrong-key-marker"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(!err.contains("marker"), "{err}");
    assert!(out.stdout.is_empty());

    // No key at all: refused before any request, naming the variable.
    let before = sim.counts().list;
    let out = import(&base, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("PPIO_API_KEY"), "{err}");
    assert_eq!(sim.counts().list, before);

    // Unreachable: a port held, where nothing listens.
    let (_held, port) = closed_port();
    let closed = format!("http://127.0.0.1:{port}");
    let out = import(
        &["--namespace", "ml", "--ppio-base-url", closed.as_str()],
        Some(KEY),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not connect"), "{err}");

    // Rate limited.
    sim.set_fault("*", ppio_operator::simulator::Fault::status(429));
    let out = import(&base, Some(KEY));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 429"), "{err}");
}

/// Instance names that YAML 1.1 (kubectl's, Argo CD's and Flux's YAML) reads as booleans,
/// null, numbers or dates: the manifests still apply, with the names as strings.
#[ppio_test_macros::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_yaml_1_1_vocabulary_import_and_apply() {
    let client = client().await;
    let ns = namespace(&client, "import-yaml11").await;
    let base: Value = serde_json::from_str(FIXTURE).expect("fixture");
    let words = [
        "yes",
        "on",
        "No",
        "off",
        "y",
        "n",
        "~",
        "true",
        "null",
        "12345",
        "2024-01-01",
        "1e3",
    ];
    let listed: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut v = base.clone();
            v["id"] = json!(format!("yaml11x{i:02}"));
            v["name"] = json!(w);
            v["region"] = json!(if i % 2 == 0 { "on" } else { "2024-01-01" });
            v
        })
        .collect();
    let (_sim, addr) = simulator_with(listed, &[KEY]).await;
    let url = format!("http://{addr}");
    let out = import(
        &["--namespace", ns.as_str(), "--ppio-base-url", url.as_str()],
        Some(KEY),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = String::from_utf8(out.stdout).expect("utf-8");
    // The real API server, through the real kubectl, takes every manifest.
    let applied = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&stream));
    assert!(
        applied.status.success(),
        "kubectl refused the import:\n{}\n{stream}",
        String::from_utf8_lossy(&applied.stderr)
    );
    // And the words stay strings: the annotations carry them as PPIO named them.
    let objects = docs(&stream);
    assert_eq!(objects.len(), words.len());
    let names: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| {
            o.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("gpus.ppio.com/instance-name").cloned())
        })
        .collect();
    let want: BTreeSet<String> = words.iter().map(|w| w.to_string()).collect();
    assert_eq!(names, want, "{stream}");
}

/// `import --output-dir DIR [--prune]` against the simulator at `addr`.
fn import_into(addr: std::net::SocketAddr, dir: &std::path::Path, prune: bool) -> Output {
    let url = format!("http://{addr}");
    let dir_s = dir.display().to_string();
    let mut args = vec![
        "--namespace",
        "ml",
        "--ppio-base-url",
        &url,
        "--output-dir",
        &dir_s,
    ];
    if prune {
        args.push("--prune");
    }
    import(&args, Some(KEY))
}

/// The names [`import_into`] writes (it succeeds), without their `.yaml`.
fn run_into(addr: std::net::SocketAddr, dir: &std::path::Path, prune: bool) -> BTreeSet<String> {
    let out = import_into(addr, dir, prune);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".yaml").map(str::to_string))
        .collect()
}

#[ppio_test_macros::test]
async fn output_dir_names_stay_put_symlinks_are_not_followed_and_prune_removes_only_its_own() {
    let all = instances(12);
    let (_twelve, twelve) = simulator_with(all.clone(), &[KEY]).await;
    // The same account later: two instances gone (one of them with a clashing name), and one
    // new that clashes with a name kept.
    let mut later: Vec<Value> = all[..10]
        .iter()
        .filter(|v| v["id"] != "imp0000x")
        .cloned()
        .collect();
    let mut newcomer = all[3].clone();
    newcomer["id"] = json!("imp0100x");
    later.push(newcomer);
    let (_later, later_addr) = simulator_with(later, &[KEY]).await;

    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ppio");
    let before = run_into(twelve, &dir, false);
    assert_eq!(before.len(), 12);

    // A file of someone else's, and a symlink where the import will write, pointing outside.
    std::fs::write(dir.join("notes.yaml"), "kept: true\n").expect("write");
    let outside = tmp.path().join("outside.txt");
    std::fs::write(&outside, "not the import's\n").expect("write");
    let victim = before
        .iter()
        .find(|n| n.ends_with("imp0001x"))
        .expect("imp0001x")
        .clone();
    let victim_path = dir.join(format!("{victim}.yaml"));
    std::fs::remove_file(&victim_path).expect("rm");
    std::os::unix::fs::symlink(&outside, &victim_path).expect("symlink");

    let after = run_into(later_addr, &dir, true);
    // The symlink was replaced by the manifest, its target untouched.
    assert_eq!(
        std::fs::read_to_string(&outside).expect("read"),
        "not the import's\n"
    );
    let meta = std::fs::symlink_metadata(&victim_path).expect("meta");
    assert!(meta.file_type().is_file(), "a regular file now");
    // Instances that stayed keep their file names, whatever came and went.
    let kept: BTreeSet<String> = before
        .iter()
        .filter(|n| {
            !n.ends_with("imp0000x") && !n.ends_with("imp0010x") && !n.ends_with("imp0011x")
        })
        .cloned()
        .collect();
    assert!(kept.is_subset(&after), "{kept:?} not in {after:?}");
    // Pruned: the files of the gone instances; kept: the other file.
    for gone in ["imp0000x", "imp0010x", "imp0011x"] {
        assert!(
            !after.iter().any(|n| n.ends_with(gone)),
            "{gone} not pruned: {after:?}"
        );
    }
    assert!(after.contains("notes"), "another file was removed");
    assert!(after.iter().any(|n| n.ends_with("imp0100x")));
    assert_eq!(after.len(), 9 + 1 + 1, "{after:?}");
    // A file written by hand (or by an older import, without the marker) for an instance
    // written now under another name is named on standard error, and left alone.
    std::fs::write(
        dir.join("old-name.yaml"),
        "apiVersion: gpus.ppio.com/v1alpha1\nkind: PpioInstance\nmetadata:\n  name: old-name\nspec:\n  instanceId: imp0002x\n",
    )
    .expect("write");
    let out = import_into(later_addr, &dir, true);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("old-name.yaml also declares instance imp0002x"),
        "{err}"
    );
    assert!(dir.join("old-name.yaml").exists());
    // An account that lists nothing (a wrong key, a filter): --prune refuses, nothing goes.
    let (_empty, empty_addr) = simulator_with(Vec::new(), &[KEY]).await;
    let before_refusal = std::fs::read_dir(&dir).expect("dir").count();
    let out = import_into(empty_addr, &dir, true);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prune would remove every file"));
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        before_refusal
    );
    // No temporary file left behind.
    let hidden = std::fs::read_dir(&dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

#[ppio_test_macros::test]
async fn a_ca_file_is_trusted_for_the_ppio_api_and_a_bad_one_is_refused_by_name() {
    // A TLS server with a private CA: the test cluster's API server, asked for PPIO's path.
    let _ = client().await;
    let kc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).expect("kubeconfig"))
            .expect("yaml");
    let cluster = &kc["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().expect("server").to_string();
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(cluster["certificate-authority-data"].as_str().expect("ca"))
        .expect("base64");
    let dir = tempfile::tempdir().expect("tmp");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write");
    let ca_s = ca_file.display().to_string();
    let base = ["--namespace", "ml", "--ppio-base-url", server.as_str()];

    // Without it, the server's certificate is not trusted.
    let out = import(&base, Some(KEY));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tls") || err.contains("certificate"), "{err}");
    // With it, the connection is made and the answer (the API server refusing the key) is
    // what fails.
    let mut with_ca = base.to_vec();
    with_ca.extend(["--ppio-ca-file", ca_s.as_str()]);
    let out = import(&with_ca, Some(KEY));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("tls") && !err.contains("certificate"),
        "{err}"
    );
    assert!(err.contains("401"), "{err}");
    // A file that is not a PEM bundle: refused before anything is sent, naming the flag.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let junk_s = junk.display().to_string();
    let mut with_junk = base.to_vec();
    with_junk.extend(["--ppio-ca-file", junk_s.as_str()]);
    let out = import(&with_junk, Some(KEY));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--ppio-ca-file"), "{err}");
}
