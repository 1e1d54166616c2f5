//! A real OCI registry for the release tests: the CNCF distribution registry
//! (`tools/build.sh registry`), serving HTTPS on one address with a certificate from a
//! throwaway CA made for it. Clients trust the CA through [`Registry::ca`] (helm `--ca-file`,
//! `SSL_CERT_FILE` for crane and cosign, containerd's `hosts.toml`:
//! [`crate::node::Node::trust_registry`]). Its storage is a folder of the caller's; the
//! process is killed when the [`Registry`] is dropped.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

use crate::controlplane::{EnvError, Guarded, free_port, throwaway_ca};

/// A running registry.
pub struct Registry {
    /// `ip:port`, the registry's host as image references and `hosts.toml` name it.
    pub host: String,
    /// The throwaway CA's certificate (PEM) that signed the registry's.
    pub ca: PathBuf,
    /// The folder with the certificates, the configuration, the storage and the log.
    pub dir: PathBuf,
    _process: Guarded,
}

impl Registry {
    /// Starts `tools/registry` on `ip` (a free port) with its files under `dir` (emptied
    /// first), and waits until it accepts connections.
    pub fn start(tools: &Path, ip: Ipv4Addr, dir: &Path) -> Result<Registry, EnvError> {
        let program = tools.join("registry");
        if !program.is_file() {
            return Err(EnvError::MissingProgram {
                program: "registry".into(),
                path: program.display().to_string(),
            });
        }
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("data"))?;
        let (ca_pem, cert_pem, key_pem) = certificates(ip)?;
        let ca = dir.join("ca.crt");
        fs::write(&ca, ca_pem)?;
        fs::write(dir.join("registry.crt"), cert_pem)?;
        fs::write(dir.join("registry.key"), key_pem)?;
        let port = free_port()?;
        let addr = SocketAddr::from((ip, port));
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  tls:\n    certificate: {crt}\n    key: {key}\n",
                data = dir.join("data").display(),
                crt = dir.join("registry.crt").display(),
                key = dir.join("registry.key").display(),
            ),
        )?;
        let process = Guarded::spawn_clean(
            "registry",
            &program,
            &["serve".into(), config.display().to_string()],
            &dir.join("registry.log"),
            &[],
        )?;
        let log = dir.join("registry.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(EnvError::NotReady {
                    what: format!("the registry on {addr}"),
                    secs: 30,
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Registry {
            host: addr.to_string(),
            ca,
            dir: dir.to_path_buf(),
            _process: process,
        })
    }
}

/// (CA certificate, serving certificate for `ip`, serving key), PEM.
fn certificates(ip: Ipv4Addr) -> Result<(String, String, String), rcgen::Error> {
    let (ca_cert, ca_key) = throwaway_ca("ppio-testenv-registry-ca")?;
    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["localhost".to_string()])?;
    serving
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(IpAddr::V4(ip)));
    serving
        .distinguished_name
        .push(DnType::CommonName, "ppio-testenv-registry");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = serving.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}
