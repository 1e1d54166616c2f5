//! The chart's alerting rules and Grafana dashboard, proven with the real promtool and a real
//! Prometheus (tools/prometheus): the rules pass `promtool check rules` and their unit tests
//! (tests/fixtures/prometheus-rules.test.yaml); a Prometheus scraping the operator (run as
//! its own process against the simulator, honouring its labels as the chart's ServiceMonitor
//! does) answers every dashboard query with data, and fires the sync-failing alert for an
//! instance whose PPIO answers 503, never for a suspended one, and clears it after the fault.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ppio_operator::simulator::Fault;
use serde_json::Value;

use super::chart::{docs, render};
use crate::support::*;

/// The scrape job the chart's rules select for release "rel" (its metrics Service).
const JOB: &str = "rel-ppio-operator-metrics";

/// The rules as the chart's PrometheusRule carries them, as a Prometheus rules file.
fn rendered_rules() -> String {
    let d = docs(&render(&["metrics.prometheusRule.enabled=true"]));
    let rule = d
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    serde_yaml::to_string(&rule["spec"]).expect("yaml")
}

/// The dashboard as the chart's ConfigMap carries it.
fn rendered_dashboard() -> Value {
    let d = docs(&render(&["metrics.grafanaDashboard.enabled=true"]));
    let cm = d
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("the dashboard ConfigMap");
    serde_json::from_str(cm["data"]["ppio-operator.json"].as_str().expect("json")).expect("json")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = clean_env(&mut Command::new(tools_dir().join("promtool")))
        .args(args)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("rules.yaml"), rendered_rules()).expect("rules");
    let tests = dir.path().join("rules.test.yaml");
    std::fs::copy(
        Path::new(REPO).join("tests/fixtures/prometheus-rules.test.yaml"),
        &tests,
    )
    .expect("tests");
    let rules = dir.path().join("rules.yaml");
    let (ok, text) = promtool(&["check", "rules", rules.to_str().expect("path")]);
    assert!(ok, "promtool check rules:\n{text}");
    let (ok, text) = promtool(&["test", "rules", tests.to_str().expect("path")]);
    assert!(ok, "promtool test rules:\n{text}");
}

/// Every query of the dashboard, with Grafana's variables as a Prometheus query reads them:
/// every job, and a rate window that a short test run fills.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("=~\"$job\"", "=~\".+\"")
                .replace("$__rate_interval", "1m");
            assert!(
                !expr.contains('$'),
                "{title}: an unknown variable in {expr}"
            );
            out.push((title.clone(), expr));
        }
    }
    out
}

/// A real Prometheus on 127.0.0.1 scraping `target` every second, with `rules`.
struct Prometheus {
    _process: Guarded,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: {JOB}\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let log: PathBuf = dir.path().join("prometheus.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port().expect("port")));
            let args: Vec<String> = vec![
                format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".into(),
            ];
            let mut process = Guarded::spawn_clean(
                "prometheus",
                &tools_dir().join("prometheus"),
                &args,
                &log,
                &[],
            )
            .expect("prometheus starts");
            let deadline = Deadline::new("prometheus ready", WAIT);
            let ready = loop {
                if process.check_alive().is_err() {
                    break false;
                }
                if http_get(addr, "/-/ready")
                    .await
                    .is_some_and(|(code, _)| code == 200)
                {
                    break true;
                }
                deadline.check(|| std::fs::read_to_string(&log).unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if ready {
                return Prometheus {
                    _process: process,
                    addr,
                    _dir: dir,
                };
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < PORT_ATTEMPTS && bind_failed(&log),
                "prometheus exited:\n{text}"
            );
        }
    }

    /// The result vector of an instant query.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!(
            "/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC)
        );
        let (code, body) = http_get(self.addr, &path)
            .await
            .expect("prometheus answers");
        assert_eq!(code, 200, "{expr}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns at least one series.
    async fn wait_for(&self, what: &str, expr: &str) -> Vec<Value> {
        let deadline = Deadline::new(what, Duration::from_secs(180));
        loop {
            let r = self.query(expr).await;
            if !r.is_empty() {
                return r;
            }
            deadline.check(|| format!("{expr} returned nothing"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The rules with every `for` shortened to 2s, so that an alert fires and clears within a
/// test; their expressions, labels and annotations are the chart's.
fn quick(rules: &str) -> String {
    rules
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                let indent = l.len() - l.trim_start().len();
                format!("{}for: 2s", " ".repeat(indent))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[ppio_test_macros::test(deadline = 600)]
async fn a_real_prometheus_answers_every_dashboard_query_and_fires_and_clears_the_sync_alert() {
    let Scene {
        ns, op, api, sim, ..
    } = scene("prom", "key-prom", &[]).await;
    apply_instance(&ns, "healthy", "instanceId: ca338f12f3");
    apply_instance(&ns, "faulty", "instanceId: b7e2c91d04");
    apply_instance(&ns, "parked", "instanceId: ca338f12f3\nsuspend: true");
    wait_fetched(&api, "healthy").await;
    wait_fetched(&api, "faulty").await;
    wait_for(&api, "parked", "Synced=False Suspended", |o| {
        has(o, "Synced", "False", "Suspended")
    })
    .await;

    let prom = Prometheus::start(op.http, &quick(&rendered_rules())).await;
    prom.wait_for("the operator scraped", &format!("up{{job=\"{JOB}\"}} == 1"))
        .await;
    // The per-instance series keep the PpioInstance's namespace (honorLabels).
    let synced = prom
        .wait_for(
            "per-instance series",
            &format!("ppio_instance_synced{{namespace=\"{ns}\", name=\"healthy\"}}"),
        )
        .await;
    assert_eq!(synced[0]["metric"]["job"], JOB);

    // A 503 for one instance: it fails, and only it fires.
    sim.set_fault("b7e2c91d04", Fault::status(503));
    let firing = prom
        .wait_for(
            "PpioInstanceSyncFailing firing for faulty",
            &format!(
                "ALERTS{{alertname=\"PpioInstanceSyncFailing\", alertstate=\"firing\", namespace=\"{ns}\", name=\"faulty\"}}"
            ),
        )
        .await;
    assert_eq!(firing[0]["metric"]["severity"], "warning");
    // Every dashboard query has data now (a failure included).
    for (title, expr) in dashboard_queries(&rendered_dashboard()) {
        let r = prom.wait_for(&format!("panel {title:?}"), &expr).await;
        assert!(!r.is_empty(), "{title}: {expr}");
    }
    // The suspended instance never fired, nor was pending.
    let parked = prom
        .query(&format!(
            "max_over_time(ALERTS{{alertname=\"PpioInstanceSyncFailing\", namespace=\"{ns}\", name=\"parked\"}}[1h])"
        ))
        .await;
    assert_eq!(parked, Vec::<Value>::new(), "a suspended instance alerted");

    // The fault clears: the instance is observed again and the alert goes.
    sim.clear_fault("b7e2c91d04");
    wait_for(&api, "faulty", "Synced=True again", |o| {
        has(o, "Synced", "True", "Observed")
    })
    .await;
    let deadline = Deadline::new("PpioInstanceSyncFailing cleared", Duration::from_secs(180));
    loop {
        let r = prom
            .query(&format!(
                "ALERTS{{alertname=\"PpioInstanceSyncFailing\", namespace=\"{ns}\", name=\"faulty\"}}"
            ))
            .await;
        if r.is_empty() {
            break;
        }
        deadline.check(|| format!("{r:?}"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(op);
}
