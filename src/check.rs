//! `ppio-operator check`: what the chart's `helm test` runs (in the operator's own image, which
//! has no shell): the PpioInstance CRD is served to this ServiceAccount, and, when asked, an
//! operator answers `/readyz` with 200. It reads and writes nothing else.

use std::time::Duration;

use clap::Args;
use kube::{Api, Client};

use crate::args::{ConfigError, parse_namespace};
use crate::crd::PpioInstance;

/// How long the readiness request may take.
const READYZ_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of `ppio-operator check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check the CRD within this namespace only (for an operator that watches one namespace).
    #[arg(long, value_parser = parse_namespace)]
    pub namespace: Option<String>,
    /// Also check that this URL (an operator's /readyz, plain HTTP) answers 200.
    #[arg(long, value_name = "URL")]
    pub readyz_url: Option<String>,
}

/// A checked `check` configuration.
#[derive(Debug)]
pub struct CheckConfig {
    pub namespace: Option<String>,
    pub readyz_url: Option<reqwest::Url>,
}

impl CheckArgs {
    pub fn config(self) -> Result<CheckConfig, ConfigError> {
        let readyz_url = match self.readyz_url {
            None => None,
            Some(text) => {
                let url = reqwest::Url::parse(&text)
                    .ok()
                    .filter(|u| u.scheme() == "http" && u.host().is_some())
                    .ok_or_else(|| ConfigError {
                        flag: "--readyz-url",
                        message: format!("'{text}' is not an http:// URL"),
                    })?;
                Some(url)
            }
        };
        Ok(CheckConfig {
            namespace: self.namespace,
            readyz_url,
        })
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config): {0}")]
    KubeConfig(#[source] kube::Error),
    #[error(transparent)]
    Crd(#[from] crate::operator::StartError),
    #[error("{url} did not answer: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}, not 200: the operator is not ready")]
    NotReady { url: String, status: u16 },
}

/// Runs the checks in order and prints what held.
pub async fn run(config: CheckConfig) -> Result<(), CheckError> {
    let client = Client::try_default()
        .await
        .map_err(CheckError::KubeConfig)?;
    let api: Api<PpioInstance> = match &config.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    crate::operator::check_crd(&api, config.namespace.as_deref()).await?;
    println!("ok: the PpioInstance CRD is served");
    if let Some(url) = config.readyz_url {
        let http = reqwest::Client::builder()
            .timeout(READYZ_TIMEOUT)
            .build()
            .map_err(|source| CheckError::Unreachable {
                url: url.to_string(),
                source,
            })?;
        let answer =
            http.get(url.clone())
                .send()
                .await
                .map_err(|source| CheckError::Unreachable {
                    url: url.to_string(),
                    source,
                })?;
        let status = answer.status().as_u16();
        if status != 200 {
            return Err(CheckError::NotReady {
                url: url.to_string(),
                status,
            });
        }
        println!("ok: {url} answered 200");
    }
    Ok(())
}
