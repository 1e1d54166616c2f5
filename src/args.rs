//! What the subcommands share: how to reach the PPIO API (`PpioArgs`), the error of a
//! value that cannot be used, and the checks of a few values. The subcommands (`run`,
//! `import`, `check`, the simulator) use it; `cli` puts them together.

use std::time::Duration;

use clap::Args;

use crate::duration::{Human, parse_duration_within};
use crate::ppio::{DEFAULT_BASE_URL, DEFAULT_REQUEST_TIMEOUT, HttpClient, HttpClientConfig};

/// How to reach the PPIO API: the options `run` and `import` share.
#[derive(Debug, Args)]
pub struct PpioArgs {
    /// Base URL of the PPIO API.
    #[arg(long, env = "PPIO_BASE_URL", default_value = DEFAULT_BASE_URL, value_parser = parse_base_url)]
    pub ppio_base_url: String,

    /// Accept an http:// base URL for a host other than loopback (the API key then travels
    /// unencrypted; only for a trusted proxy on a private network).
    #[arg(long, env = "PPIO_ALLOW_INSECURE_HTTP")]
    pub ppio_allow_insecure_http: bool,

    /// Timeout of one PPIO API request (1s..60s).
    #[arg(long, env = "PPIO_REQUEST_TIMEOUT", default_value_t = Human(DEFAULT_REQUEST_TIMEOUT), value_parser = parse_timeout, value_name = "DURATION")]
    pub ppio_request_timeout: Human,

    /// A PEM file of certificate authorities to trust for the PPIO API besides the built-in
    /// (Mozilla) roots, e.g. a corporate TLS proxy's.
    #[arg(long, env = "PPIO_CA_FILE", value_name = "PATH")]
    pub ppio_ca_file: Option<std::path::PathBuf>,
}

impl PpioArgs {
    /// The PPIO client these options describe.
    pub fn client(&self) -> Result<HttpClient, ConfigError> {
        let extra_roots = match &self.ppio_ca_file {
            None => Vec::new(),
            Some(path) => read_roots(path).map_err(|message| ConfigError {
                flag: "--ppio-ca-file",
                message,
            })?,
        };
        HttpClient::new(&HttpClientConfig {
            base_url: self.ppio_base_url.clone(),
            timeout: self.ppio_request_timeout.0,
            allow_insecure_http: self.ppio_allow_insecure_http,
            extra_roots,
            ..Default::default()
        })
        .map_err(|e| ConfigError {
            flag: "--ppio-base-url",
            message: e.to_string(),
        })
    }
}

/// The certificates of a PEM bundle; at least one, or why not.
fn read_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| format!("{} is not a PEM bundle of certificates", path.display()))?;
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(roots)
}

/// A command-line value that passed clap's parsing but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub message: String,
}

/// Checks the URL's form; whether plain http:// is allowed is decided with
/// --ppio-allow-insecure-http when the configuration is built.
pub fn parse_base_url(s: &str) -> Result<String, String> {
    HttpClient::new(&HttpClientConfig {
        base_url: s.to_string(),
        allow_insecure_http: true,
        ..Default::default()
    })
    .map(|_| s.to_string())
    .map_err(|e| e.to_string())
}

/// A timeout of 1s..60s.
pub fn parse_timeout(s: &str) -> Result<Human, String> {
    parse_duration_within(s, Duration::from_secs(1), Duration::from_secs(60))
        .map(Human)
        .map_err(|e| e.to_string())
}

/// A namespace name (an RFC 1123 label).
pub fn parse_namespace(s: &str) -> Result<String, String> {
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
