//! The command line: `ppio-operator run | crd | simulate | demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::controller::Settings;
use crate::interval::parse_refresh_interval;
use crate::ppio::{ApiKey, HttpClient, HttpClientConfig};
use crate::telemetry::{self, LogFormat};

/// Mirrors PPIO GPU instances into PpioInstance resources.
#[derive(Debug, Parser)]
#[command(name = "ppio-operator", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (reads PPIO_API_KEY from the environment as the default key).
    Run(RunArgs),
    /// Print the PpioInstance CRD as YAML (pipe it to `kubectl apply --server-side -f -`).
    Crd,
    /// Serve a local PPIO v2 API simulator for tests and demos.
    Simulate(crate::simulator::SimulateArgs),
    /// Start a throw-away local control plane, the simulator and the operator, with samples.
    Demo(crate::demo::DemoArgs),
}

/// Options of `ppio-operator run`. Each has an environment variable fallback.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base URL of the PPIO API.
    #[arg(long, env = "PPIO_BASE_URL", default_value = "https://api.ppio.com", value_parser = parse_base_url)]
    pub ppio_base_url: String,

    /// Watch PpioInstances in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", value_parser = parse_namespace)]
    pub namespace: Option<String>,

    /// Refresh interval for PpioInstances without spec.refreshInterval (10s..24h).
    #[arg(long, env = "PPIO_DEFAULT_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_interval, value_name = "DURATION")]
    pub default_refresh_interval: Duration,

    /// Address of the HTTP server for /metrics, /livez and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Timeout of one PPIO API request (1s..60s).
    #[arg(long, env = "PPIO_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_timeout, value_name = "DURATION")]
    pub ppio_request_timeout: Duration,

    /// PPIO requests per second allowed per API key, shared by every PpioInstance using that
    /// key (0: unlimited).
    #[arg(long, env = "PPIO_REQUESTS_PER_SECOND", default_value_t = crate::controller::DEFAULT_REQUESTS_PER_SECOND, value_parser = parse_rate)]
    pub ppio_requests_per_second: f64,

    /// Requests per API key that may go at once before the per-second rate applies.
    #[arg(long, env = "PPIO_BURST", default_value_t = crate::controller::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub ppio_burst: u32,

    /// At most this many PpioInstances are reconciled at the same time.
    #[arg(long, env = "PPIO_MAX_CONCURRENT_RECONCILES", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_reconciles: u16,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Elect a leader through a coordination.k8s.io Lease; only the leader reconciles (use it
    /// with more than one replica).
    #[arg(long, env = "LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the Lease (default: POD_NAMESPACE, else --namespace, else "default").
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", value_parser = parse_namespace)]
    pub leader_election_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(long, env = "LEADER_ELECTION_NAME", default_value = "ppio-operator", value_parser = parse_lease_name)]
    pub leader_election_name: String,

    /// How long a leader's Lease lasts without renewal (5s..120s); a standby takes over
    /// about this long after the leader died.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration, value_name = "DURATION")]
    pub leader_election_lease_duration: Duration,

    /// This replica's identity in the Lease and in Events (default: POD_NAME, else the host
    /// name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

fn parse_base_url(s: &str) -> Result<String, String> {
    HttpClient::new(&HttpClientConfig {
        base_url: s.to_string(),
        ..Default::default()
    })
    .map(|_| s.to_string())
    .map_err(|e| e.to_string())
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_refresh_interval(s).map_err(|e| e.to_string())
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::from_secs(1), Duration::from_secs(60))
}

fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    parse_duration_within(s, Duration::from_secs(5), Duration::from_secs(120))
}

/// Parses `10s` or `500ms` and checks `min..=max`.
fn parse_duration_within(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = s
        .strip_suffix("ms")
        .and_then(|n| n.parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            s.strip_suffix('s')
                .and_then(|n| n.parse::<u64>().ok())
                .map(Duration::from_secs)
        })
        .ok_or_else(|| format!("'{s}' is not a duration such as 10s or 500ms"))?;
    if !(min..=max).contains(&d) {
        return Err(format!(
            "'{s}' is outside the allowed range {}s..{}s",
            min.as_secs(),
            max.as_secs()
        ));
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r == 0.0 || (0.01..=10000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate between 0.01 and 10000 (or 0 for unlimited)"
        )),
    }
}

fn parse_lease_name(s: &str) -> Result<String, String> {
    let ok =
        !s.is_empty() && s.len() <= 253 && s.split('.').all(|label| parse_namespace(label).is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid Lease name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// This replica's default identity: the host name and the process id.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ppio-operator".into());
    format!("{host}-{}", std::process::id())
}

fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a valid namespace name (lowercase letters, digits and '-')"
        ))
    }
}

/// Runs a parsed command line; the return value is the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Crd => match crate::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => run(args).await,
        Command::Simulate(args) => crate::simulator::main(args).await,
        Command::Demo(args) => crate::demo::main(args).await,
    }
}

async fn run(args: RunArgs) -> ExitCode {
    telemetry::init(args.log_format);
    let http = match HttpClient::new(&HttpClientConfig {
        base_url: args.ppio_base_url.clone(),
        timeout: args.ppio_request_timeout,
        ..Default::default()
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: --ppio-base-url: {e}");
            return ExitCode::from(2);
        }
    };
    let default_key = std::env::var("PPIO_API_KEY")
        .ok()
        .and_then(|k| ApiKey::new(&k));
    let namespace = args.namespace.filter(|n| !n.is_empty());
    let identity = args
        .identity
        .filter(|i| !i.is_empty())
        .unwrap_or_else(default_identity);
    let leader = args.leader_election.then(|| {
        let lease_ns = args
            .leader_election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .or_else(|| namespace.clone())
            .unwrap_or_else(|| "default".into());
        crate::leader::LeaderConfig::new(
            lease_ns,
            args.leader_election_name.clone(),
            identity.clone(),
            args.leader_election_lease_duration,
        )
    });
    let config = crate::operator::RunConfig {
        namespace,
        leader,
        identity,
        settings: Settings {
            default_refresh: args.default_refresh_interval,
            default_key,
            budget: crate::controller::Budget {
                per_second: (args.ppio_requests_per_second > 0.0)
                    .then_some(args.ppio_requests_per_second),
                burst: args.ppio_burst,
            },
        },
        ppio: Arc::new(http),
        concurrency: args.max_concurrent_reconciles,
        http_addr: args.http_addr,
    };
    match crate::operator::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where `demo` and the tests find the upstream programs (see tools/build.sh).
pub fn default_tools_dir() -> PathBuf {
    std::env::var_os("PPIO_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/bin")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (flag, value) in [
            ("--default-refresh-interval", "abc"),
            ("--default-refresh-interval", "1s"),
            ("--ppio-base-url", "not a url"),
            ("--http-addr", "nowhere"),
            ("--namespace", "Bad_NS"),
            ("--ppio-request-timeout", "5m"),
            ("--ppio-requests-per-second", "lots"),
            ("--ppio-requests-per-second", "20000"),
            ("--ppio-burst", "0"),
        ] {
            let err = Cli::try_parse_from(["ppio-operator", "run", flag, value])
                .expect_err("must be refused");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["ppio-operator", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        assert_eq!(args.ppio_base_url, "https://api.ppio.com");
        assert_eq!(args.default_refresh_interval, Duration::from_secs(60));
        assert_eq!(args.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.ppio_request_timeout, Duration::from_secs(10));
    }
}
