//! The command line: `ppio-operator run | crd | simulate | import | check`.
//!
//! Every subcommand has the same shape: its arguments (a clap struct with environment
//! fallbacks) become a checked configuration (`config()`, which starts nothing), and the
//! configuration is run. A bad argument exits with status 2 and a message naming the flag; a
//! failure while running exits with status 1.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::controller::{
    Budget, DEFAULT_BURST, DEFAULT_FULL_REFRESH_INTERVALS, DEFAULT_PAGE_SIZE,
    DEFAULT_REQUESTS_PER_SECOND, MAX_PAGE_SIZE, Observe, Settings,
};
use crate::duration::{Human, MAX_REFRESH, MIN_REFRESH, parse_duration_within};
use crate::leader::LeaderConfig;
use crate::operator::{DEFAULT_CONCURRENCY, RunConfig};
use crate::ppio::ApiKey;
use crate::server::MetricsAuth;
use crate::telemetry::{self, LogFormat, LogLevel};

pub use crate::args::{ConfigError, PpioArgs};
use crate::args::{parse_namespace, parse_timeout};

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
    /// Print a PpioInstance manifest for every instance the key in PPIO_API_KEY can see, as
    /// one YAML stream (or one file per instance); writes nothing to PPIO or to a cluster.
    Import(crate::import::ImportArgs),
    /// Check that the PpioInstance CRD is served to this identity and, with --readyz-url,
    /// that an operator is ready (what the chart's `helm test` runs); changes nothing.
    Check(crate::check::CheckArgs),
}

/// The default refresh interval of PpioInstances without `spec.refreshInterval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// The default lease duration of leader election.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Options of `ppio-operator run`. Each has an environment variable fallback. Durations are
/// written like 30s, 5m, 1h30m or 500ms.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub ppio: PpioArgs,

    /// Watch PpioInstances in this namespace only (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE", value_parser = parse_namespace)]
    pub namespace: Option<String>,

    /// Refresh interval for PpioInstances without spec.refreshInterval (10s..24h).
    #[arg(long, env = "PPIO_DEFAULT_REFRESH_INTERVAL", default_value_t = Human(DEFAULT_REFRESH_INTERVAL), value_parser = parse_refresh, value_name = "DURATION")]
    pub default_refresh_interval: Human,

    /// Namespaces whose PpioInstances may use the default key (PPIO_API_KEY), comma
    /// separated; unset: every watched namespace. Set it when tenants share the cluster.
    #[arg(long, env = "PPIO_DEFAULT_KEY_NAMESPACES", value_delimiter = ',', value_parser = parse_namespace, value_name = "NAMESPACES")]
    pub default_key_namespaces: Option<Vec<String>>,

    /// Namespaces whose credentials Secrets (spec.credentialsSecretRef) may be used, comma
    /// separated; unset: every namespace. A PpioInstance elsewhere that names a Secret reports
    /// CredentialsMissing (the chart sets it with credentialsNamespaces).
    #[arg(long, env = "PPIO_CREDENTIALS_NAMESPACES", value_delimiter = ',', value_parser = parse_namespace, value_name = "NAMESPACES")]
    pub credentials_namespaces: Option<Vec<String>>,

    /// Address of the HTTP server for /metrics, /livez and /readyz.
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Also serve /livez and /readyz (only) on this address, e.g. for a pod's probes on a
    /// port of their own.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,

    /// Who may read /metrics: `none`, anyone who reaches the port; `kubernetes`, a bearer
    /// token that Kubernetes authenticates (TokenReview) of a user allowed `get` on the
    /// non-resource URL /metrics (SubjectAccessReview). The probes are never guarded.
    #[arg(long, env = "METRICS_AUTH", value_enum, default_value = "none")]
    pub metrics_auth: MetricsAuth,

    /// PPIO requests per second allowed per API key, shared by every PpioInstance using that
    /// key (0: unlimited).
    #[arg(long, env = "PPIO_REQUESTS_PER_SECOND", default_value_t = DEFAULT_REQUESTS_PER_SECOND, value_parser = parse_rate)]
    pub ppio_requests_per_second: f64,

    /// Requests per API key that may go at once before the per-second rate applies.
    #[arg(long, env = "PPIO_BURST", default_value_t = DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub ppio_burst: u32,

    /// How instances are observed: `list` walks each API key's paged LIST once per interval
    /// and GETs an instance only when it is new, changed, in transition or due for its full
    /// refresh; `get` sends one GET per PpioInstance per interval.
    #[arg(long, env = "PPIO_OBSERVE", value_enum, default_value = "list")]
    pub ppio_observe: ObserveMode,

    /// Page size of the LIST walks (`--ppio-observe=list`).
    #[arg(long, env = "PPIO_LIST_PAGE_SIZE", default_value_t = DEFAULT_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=MAX_PAGE_SIZE as i64))]
    pub ppio_list_page_size: u32,

    /// With `--ppio-observe=list`, each instance is fetched in full by a GET (for the
    /// endpoints and prices LIST items lack) about every this many refresh intervals; 0 turns
    /// these periodic full GETs off (an instance is then fetched when it is new, changed, in
    /// transition or asked to refresh).
    #[arg(long, env = "PPIO_FULL_REFRESH_INTERVALS", default_value_t = DEFAULT_FULL_REFRESH_INTERVALS, value_parser = clap::value_parser!(u32).range(0..=10000))]
    pub ppio_full_refresh_intervals: u32,

    /// At most this many PpioInstances are reconciled at the same time; they start in the
    /// order they were asked for, and the PpioInstances of one credentials Secret (or of the
    /// default key) hold at most seven eighths of them.
    #[arg(long, env = "PPIO_MAX_CONCURRENT_RECONCILES", default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub max_concurrent_reconciles: u16,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How much the operator logs; the Kubernetes and HTTP client internals stay at `error`
    /// (they can log response bodies). `RUST_LOG`, when set, replaces the whole filter.
    #[arg(long, env = "LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: LogLevel,

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
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value_t = Human(DEFAULT_LEASE_DURATION), value_parser = parse_lease_duration, value_name = "DURATION")]
    pub leader_election_lease_duration: Human,

    /// This replica's identity in the Lease and in Events (default: POD_NAME, else the host
    /// name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    #[command(flatten)]
    pub money: MoneyArgs,

    #[command(flatten)]
    pub exports: ExportArgs,
}

/// What PpioInstances may export into the cluster (each also needs the RBAC for it).
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write the connection Secrets PpioInstances ask for (spec.connectionSecret); needs
    /// create/update on Secrets. Off: such PpioInstances read Exported=False ExportsDisabled.
    #[arg(long, env = "PPIO_EXPORT_CONNECTION_SECRETS", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub export_connection_secrets: bool,

    /// Write the Services and EndpointSlices PpioInstances ask for (spec.service); needs
    /// create/update on Services and EndpointSlices.
    #[arg(long, env = "PPIO_EXPORT_SERVICES", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub export_services: bool,

    /// Addresses never published in an EndpointSlice, as comma-separated CIDRs (e.g. the
    /// cluster's pod and service ranges), besides loopback, link-local, unspecified,
    /// multicast and broadcast addresses, which never are.
    #[arg(long, env = "PPIO_EXPORT_DENY_CIDRS", value_delimiter = ',', value_parser = parse_cidr, value_name = "CIDR,...")]
    pub export_deny_cidrs: Vec<crate::export::Cidr>,
}

impl ExportArgs {
    pub fn settings(&self) -> crate::export::ExportSettings {
        crate::export::ExportSettings {
            connection_secrets: self.export_connection_secrets,
            services: self.export_services,
            deny: self.export_deny_cidrs.clone(),
        }
    }
}

fn parse_cidr(s: &str) -> Result<crate::export::Cidr, String> {
    crate::export::Cidr::parse(s)
}

/// How money is read and shown.
#[derive(Debug, Args)]
pub struct MoneyArgs {
    /// The ISO 4217 currency of every amount (e.g. CNY, USD). Default: from the base URL's
    /// host (PPIO's: CNY, Novita's: USD); with any other host amounts carry no currency.
    #[arg(long, env = "PPIO_CURRENCY", value_parser = parse_currency, value_name = "CODE")]
    pub currency: Option<String>,

    /// How often each API key's products catalogue is read to calibrate hourly costs (0:
    /// never, no hourly cost).
    #[arg(long, env = "PPIO_CATALOGUE_REFRESH_INTERVAL", default_value_t = Human(Duration::from_secs(6 * 3600)), value_parser = parse_money_interval, value_name = "DURATION")]
    pub catalogue_refresh_interval: Human,

    /// How often each API key's bills (month to date) and balance are read (0: never).
    #[arg(long, env = "PPIO_BILLING_REFRESH_INTERVAL", default_value_t = Human(Duration::from_secs(3600)), value_parser = parse_money_interval, value_name = "DURATION")]
    pub billing_refresh_interval: Human,

    /// Expiring=True PrepaidEnding this long before a prepaid term without auto-renew ends.
    #[arg(long, env = "PPIO_PREPAID_EXPIRY_HORIZON", default_value_t = Human(crate::money::status::DEFAULT_PREPAID_HORIZON), value_parser = parse_horizon, value_name = "DURATION")]
    pub prepaid_expiry_horizon: Human,

    /// A key's first catalogue read this long after its first use, its first bill read three
    /// times as long after (default: the catalogue at once, the bills after a minute): for
    /// tests and demos.
    #[arg(long, env = "PPIO_MONEY_FIRST_READ", value_parser = parse_timeout, value_name = "DURATION", hide = true)]
    pub money_first_read: Option<Human>,
}

impl MoneyArgs {
    /// The money settings, the currency defaulting to the base URL's host's.
    pub fn settings(&self, base_url: &str) -> crate::controller::ledger::MoneySettings {
        let from_host = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| u.host_str().and_then(crate::money::currency_for_host));
        crate::controller::ledger::MoneySettings {
            currency: self
                .currency
                .clone()
                .or_else(|| from_host.map(str::to_string)),
            catalogue_every: self.catalogue_refresh_interval.0,
            bills_every: self.billing_refresh_interval.0,
            horizon: self.prepaid_expiry_horizon.0,
            first_read: self
                .money_first_read
                .map_or(crate::controller::ledger::FIRST_READ, |d| d.0),
            first_bills: self
                .money_first_read
                .map_or(crate::controller::ledger::FIRST_BILLS, |d| {
                    d.0.saturating_mul(3)
                }),
        }
    }
}

fn parse_currency(s: &str) -> Result<String, String> {
    if crate::money::valid_currency(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not an ISO 4217 currency code (three capital letters, e.g. CNY or USD)"
        ))
    }
}

/// 0 (off), or 1m..30d.
fn parse_money_interval(s: &str) -> Result<Human, String> {
    if s.trim() == "0" {
        return Ok(Human(Duration::ZERO));
    }
    parse_duration_within(
        s,
        Duration::from_secs(60),
        Duration::from_secs(30 * 24 * 3600),
    )
    .map(Human)
    .map_err(|e| format!("{e} (or 0 to turn it off)"))
}

fn parse_horizon(s: &str) -> Result<Human, String> {
    parse_duration_within(
        s,
        Duration::from_secs(60),
        Duration::from_secs(365 * 24 * 3600),
    )
    .map(Human)
    .map_err(|e| e.to_string())
}

/// `--ppio-observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObserveMode {
    /// Sweeps of each API key's LIST, GETs for what LIST items lack.
    List,
    /// One GET per PpioInstance per interval.
    Get,
}

impl RunArgs {
    /// The checked configuration of `run`. Reads the default key from `PPIO_API_KEY` (never a
    /// flag, so that it does not show in the process list).
    pub fn config(self) -> Result<RunConfig, ConfigError> {
        let http = self.ppio.client()?;
        let default_key = std::env::var("PPIO_API_KEY")
            .ok()
            .and_then(|k| ApiKey::new(&k));
        let namespace = self.namespace.filter(|n| !n.is_empty());
        let identity = self
            .identity
            .filter(|i| !i.is_empty())
            .unwrap_or_else(default_identity);
        let leader = self.leader_election.then(|| {
            let lease_ns = self
                .leader_election_namespace
                .clone()
                .or_else(|| {
                    std::env::var("POD_NAMESPACE")
                        .ok()
                        .filter(|n| !n.is_empty())
                })
                .or_else(|| namespace.clone())
                .unwrap_or_else(|| "default".into());
            LeaderConfig::new(
                lease_ns,
                self.leader_election_name.clone(),
                identity.clone(),
                self.leader_election_lease_duration.0,
            )
        });
        Ok(RunConfig {
            namespace,
            leader,
            identity,
            settings: Settings {
                default_refresh: self.default_refresh_interval.0,
                default_key,
                default_key_namespaces: self
                    .default_key_namespaces
                    .map(|list| list.into_iter().collect()),
                credentials_namespaces: self
                    .credentials_namespaces
                    .map(|list| list.into_iter().collect()),
                budget: Budget {
                    per_second: (self.ppio_requests_per_second > 0.0)
                        .then_some(self.ppio_requests_per_second),
                    burst: self.ppio_burst,
                },
                observe: match self.ppio_observe {
                    ObserveMode::List => Observe::List {
                        page_size: self.ppio_list_page_size,
                        full_refresh_intervals: self.ppio_full_refresh_intervals,
                    },
                    ObserveMode::Get => Observe::Get,
                },
                money: self.money.settings(&self.ppio.ppio_base_url),
                exports: self.exports.settings(),
            },
            ppio: Arc::new(http),
            concurrency: self.max_concurrent_reconciles,
            http_addr: self.http_addr,
            health_addr: self.health_addr,
            metrics_auth: self.metrics_auth,
        })
    }
}

fn parse_refresh(s: &str) -> Result<Human, String> {
    parse_duration_within(s, MIN_REFRESH, MAX_REFRESH)
        .map(Human)
        .map_err(|e| e.to_string())
}

fn parse_lease_duration(s: &str) -> Result<Human, String> {
    parse_duration_within(s, Duration::from_secs(5), Duration::from_secs(120))
        .map(Human)
        .map_err(|e| e.to_string())
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

/// Runs a parsed command line; the return value is the process exit code.
pub async fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => {
            let (format, level) = (args.log_format, args.log_level);
            launch(args.config(), |config| async move {
                telemetry::init(format, level);
                crate::operator::run(config).await
            })
            .await
        }
        Command::Crd => launch(Ok(()), |()| async { crate::crd::print() }).await,
        Command::Simulate(args) => launch(args.config(), crate::simulator::run).await,
        Command::Import(args) => launch(args.config(), crate::import::run).await,
        Command::Check(args) => launch(args.config(), crate::check::run).await,
    }
}

/// The common tail of every subcommand: a configuration error exits 2, a run error 1.
async fn launch<C, E, F, Fut>(config: Result<C, ConfigError>, run: F) -> ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
            ("--health-addr", "nowhere"),
            ("--namespace", "Bad_NS"),
            ("--ppio-request-timeout", "5m"),
            ("--ppio-request-timeout", "10"),
            ("--leader-election-lease-duration", "1h"),
            ("--ppio-requests-per-second", "lots"),
            ("--ppio-requests-per-second", "20000"),
            ("--ppio-burst", "0"),
            ("--currency", "yuan"),
            ("--currency", "usd"),
            ("--billing-refresh-interval", "10s"),
            ("--catalogue-refresh-interval", "60d"),
            ("--prepaid-expiry-horizon", "0"),
        ] {
            let err = Cli::try_parse_from(["ppio-operator", "run", flag, value])
                .expect_err("must be refused");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from(["ppio-operator", "run"].iter().chain(args)).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        args
    }

    #[test]
    fn the_currency_comes_from_the_flag_else_from_the_host() {
        let money = |args: &[&str]| {
            let a = run_args(args);
            a.money.settings(&a.ppio.ppio_base_url)
        };
        assert_eq!(money(&[]).currency.as_deref(), Some("CNY"));
        assert_eq!(
            money(&["--ppio-base-url", "https://api.novita.ai"])
                .currency
                .as_deref(),
            Some("USD")
        );
        assert_eq!(
            money(&["--ppio-base-url", "http://127.0.0.1:8090"]).currency,
            None
        );
        assert_eq!(
            money(&[
                "--ppio-base-url",
                "https://api.novita.ai",
                "--currency",
                "EUR"
            ])
            .currency
            .as_deref(),
            Some("EUR")
        );
        let defaults = money(&[]);
        assert_eq!(defaults.bills_every, Duration::from_secs(3600));
        assert_eq!(defaults.catalogue_every, Duration::from_secs(6 * 3600));
        assert_eq!(defaults.horizon, Duration::from_secs(72 * 3600));
        let off = money(&[
            "--billing-refresh-interval",
            "0",
            "--catalogue-refresh-interval",
            "0",
        ]);
        assert!(off.bills_every.is_zero() && off.catalogue_every.is_zero());
    }

    #[test]
    fn full_refreshes_can_be_turned_off() {
        let args = run_args(&["--ppio-full-refresh-intervals", "0"]);
        assert_eq!(args.ppio_full_refresh_intervals, 0);
        let err = Cli::try_parse_from([
            "ppio-operator",
            "run",
            "--ppio-full-refresh-intervals",
            "10001",
        ])
        .expect_err("refused");
        assert!(
            err.to_string().contains("--ppio-full-refresh-intervals"),
            "{err}"
        );
    }

    #[test]
    fn defaults_match_the_contract() {
        let args = run_args(&[]);
        assert_eq!(args.ppio.ppio_base_url, "https://api.ppio.com");
        assert_eq!(args.default_refresh_interval.0, Duration::from_secs(60));
        assert_eq!(args.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.health_addr, None);
        assert_eq!(args.ppio.ppio_request_timeout.0, Duration::from_secs(10));
        assert_eq!(args.max_concurrent_reconciles, 16);
        let help = Cli::command()
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        for shown in ["[default: 60s]", "[default: 10s]", "[default: 15s]"] {
            assert!(help.contains(shown), "help lacks {shown}:\n{help}");
        }
    }

    #[test]
    fn plain_http_to_a_remote_host_needs_the_opt_in() {
        let refused = run_args(&["--ppio-base-url", "http://proxy.example:8080"])
            .config()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.starts_with("--ppio-base-url:")
                && refused.contains("--ppio-allow-insecure-http"),
            "{refused}"
        );
        assert!(
            run_args(&[
                "--ppio-base-url",
                "http://proxy.example:8080",
                "--ppio-allow-insecure-http"
            ])
            .config()
            .is_ok()
        );
        assert!(
            run_args(&["--ppio-base-url", "http://127.0.0.1:8090"])
                .config()
                .is_ok()
        );
    }

    #[test]
    fn every_duration_flag_reads_the_same_grammar() {
        let args = run_args(&[
            "--default-refresh-interval",
            "1m30s",
            "--ppio-request-timeout",
            "1m",
            "--leader-election-lease-duration",
            "1m30s",
        ]);
        assert_eq!(args.default_refresh_interval.0, Duration::from_secs(90));
        assert_eq!(args.ppio.ppio_request_timeout.0, Duration::from_secs(60));
        assert_eq!(
            args.leader_election_lease_duration.0,
            Duration::from_secs(90)
        );
        let args = run_args(&["--ppio-request-timeout", "2500ms"]);
        assert_eq!(
            args.ppio.ppio_request_timeout.0,
            Duration::from_millis(2500)
        );
    }
}
