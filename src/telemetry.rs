//! Logging: `tracing` to stderr, filtered by `RUST_LOG`, as text or JSON.

use tracing_subscriber::{EnvFilter, fmt};

/// The filter used when `RUST_LOG` is unset or invalid: `info` for this crate, `warn` for
/// other dependencies, and `error` for the HTTP and Kubernetes client internals (kube,
/// kube_client, kube_runtime, hyper, hyper_util, reqwest, rustls, tower, h2). Those log whole
/// response bodies at WARN (kube's client does on a decode failure), and a body may carry a
/// Secret or another object's data, so they stay quiet unless `RUST_LOG` asks for them.
pub const DEFAULT_FILTER: &str = "warn,ppio_operator=info,kube=error,kube_client=error,kube_runtime=error,hyper=error,hyper_util=error,reqwest=error,rustls=error,tower=error,h2=error";

/// How much the operator itself logs (`--log-level`); the client internals stay at `error`
/// and other dependencies at `warn` whatever it is (see [`DEFAULT_FILTER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// [`DEFAULT_FILTER`] with the operator's own level set to `level`.
fn default_filter(level: LogLevel) -> String {
    DEFAULT_FILTER.replace(
        "ppio_operator=info",
        &format!("ppio_operator={}", level.directive()),
    )
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The filter from `RUST_LOG`'s value, or [`DEFAULT_FILTER`] with the operator at `level`
/// when it is absent or invalid.
fn filter_at(rust_log: Option<&str>, level: LogLevel) -> EnvFilter {
    rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter(level)))
}

/// Installs the global subscriber: the operator at `level`, the client internals at `error`
/// ([`DEFAULT_FILTER`]). `RUST_LOG`, when set, replaces that filter whole (for debugging:
/// it can let the client internals log response bodies).
pub fn init(format: LogFormat, level: LogLevel) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = filter_at(rust_log.as_deref(), level);
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What each target logs at each level under the filter for `rust_log`.
    fn logged(rust_log: Option<&str>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = fmt()
            .with_env_filter(filter_at(rust_log, LogLevel::Info))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "kube_client::client", "kube_client-warn");
            tracing::error!(target: "kube_client::client", "kube_client-error");
            tracing::warn!(target: "kube::client", "kube-warn");
            tracing::warn!(target: "kube_runtime::watcher", "kube_runtime-warn");
            tracing::warn!(target: "hyper_util::client", "hyper_util-warn");
            tracing::warn!(target: "hyper::proto", "hyper-warn");
            tracing::warn!(target: "reqwest::connect", "reqwest-warn");
            tracing::warn!(target: "rustls::conn", "rustls-warn");
            tracing::warn!(target: "tower::buffer", "tower-warn");
            tracing::warn!(target: "other_crate", "other-warn");
            tracing::info!(target: "other_crate", "other-info");
            tracing::info!(target: "ppio_operator::controller", "operator-info");
            tracing::debug!(target: "ppio_operator::controller", "operator-debug");
        });
        String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8")
    }

    #[test]
    fn the_log_level_moves_the_operator_only() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = fmt()
            .with_env_filter(filter_at(None, LogLevel::Debug))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "ppio_operator::controller", "operator-debug");
            tracing::warn!(target: "kube_client::client", "kube_client-warn");
            tracing::info!(target: "other_crate", "other-info");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf8");
        assert!(text.contains("operator-debug"), "{text}");
        assert!(!text.contains("kube_client-warn"), "{text}");
        assert!(!text.contains("other-info"), "{text}");
        assert_eq!(
            default_filter(LogLevel::Error),
            DEFAULT_FILTER.replace("ppio_operator=info", "ppio_operator=error")
        );
    }

    #[test]
    fn the_default_filter_keeps_client_internals_at_error() {
        assert_eq!(
            DEFAULT_FILTER,
            "warn,ppio_operator=info,kube=error,kube_client=error,kube_runtime=error,hyper=error,hyper_util=error,reqwest=error,rustls=error,tower=error,h2=error"
        );
        for text in [logged(None), logged(Some("not a [valid filter"))] {
            for quiet in [
                "kube_client-warn",
                "kube-warn",
                "kube_runtime-warn",
                "hyper_util-warn",
                "hyper-warn",
                "reqwest-warn",
                "rustls-warn",
                "tower-warn",
                "other-info",
                "operator-debug",
            ] {
                assert!(!text.contains(quiet), "{quiet} logged:\n{text}");
            }
            for loud in ["kube_client-error", "other-warn", "operator-info"] {
                assert!(text.contains(loud), "{loud} not logged:\n{text}");
            }
        }
    }

    #[test]
    fn rust_log_still_overrides_the_default() {
        let text = logged(Some("kube_client=warn,ppio_operator=debug"));
        assert!(text.contains("kube_client-warn"), "{text}");
        assert!(text.contains("operator-debug"), "{text}");
    }
}
