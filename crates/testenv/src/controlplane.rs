//! A throw-away local control plane (etcd + the upstream kube-apiserver on 127.0.0.1), the
//! way controller-runtime's envtest runs one. Used by the end-to-end tests and by
//! `ppio-operator demo`. There is no controller-manager: no garbage collection, no pods.
//!
//! Every child runs under a small `sh` guard that reads from a pipe held by this process:
//! when this process exits for any reason (a panic, a kill) the pipe closes and the guard
//! kills the child, so no etcd or kube-apiserver outlives its test run.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// Failures starting the control plane; each says what is missing or what failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{program} not found at {path}; build it with tools/build.sh")]
    MissingProgram { program: String, path: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("generating certificates failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{what} did not become ready within {secs}s; its log is at {log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("{what} exited early ({status}); its log is at {log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("installing CRDs failed: {0}")]
    Crd(String),
}

/// Runs "$@" and exits with it; when stdin (a pipe from this process) closes, sends the child
/// SIGTERM, then SIGKILL 5s later. Writes the child's pid to $GUARD_PIDFILE.
const GUARD_SCRIPT: &str = r#"exec 3<&0
"$@" 3<&- </dev/null &
c=$!
echo "$c" > "$GUARD_PIDFILE"
( read _x <&3; kill -TERM "$c" 2>/dev/null; sleep 5; kill -9 "$c" 2>/dev/null ) &
w=$!
exec 3<&-
wait "$c"; rc=$?
kill "$w" 2>/dev/null
exit "$rc""#;

/// A running child process, killed when dropped (and when this process dies).
pub struct Guarded {
    child: Child,
    pub name: String,
    pub log: PathBuf,
    pidfile: PathBuf,
}

/// What a process started with a clean environment ([`clean_env`]) keeps of this process's
/// environment: nothing else of the caller's (no `PPIO_*`, `KUBECONFIG`, `RUST_LOG`,
/// `WATCH_NAMESPACE`, `HTTP_ADDR`, `KUBERNETES_SERVICE_HOST`...) reaches it.
pub const KEPT_ENV: &[&str] = &["PATH", "HOME", "TMPDIR"];

/// Clears `cmd`'s environment but for [`KEPT_ENV`]; what the caller sets afterwards is
/// passed on. How tests start the operator: as configured by the test alone, whatever the
/// environment they run in.
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    cmd.env_clear();
    for k in KEPT_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd
}

impl Guarded {
    /// Starts `program args` under the guard, with stdout and stderr to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Guarded, EnvError> {
        Self::spawn_with(name, program, args, log, envs, false)
    }

    /// [`Guarded::spawn`] with a clean environment ([`clean_env`]): only `envs` and
    /// [`KEPT_ENV`] reach the program.
    pub fn spawn_clean(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Guarded, EnvError> {
        Self::spawn_with(name, program, args, log, envs, true)
    }

    fn spawn_with(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        envs: &[(&str, &str)],
        clean: bool,
    ) -> Result<Guarded, EnvError> {
        let out = fs::File::create(log)?;
        let pidfile = log.with_extension("pid");
        let _ = fs::remove_file(&pidfile);
        let mut cmd = Command::new("sh");
        if clean {
            clean_env(&mut cmd);
        }
        cmd.arg("-c")
            .arg(GUARD_SCRIPT)
            .arg("sh")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("GUARD_PIDFILE", &pidfile);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        Ok(Guarded {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
            pidfile,
        })
    }

    /// Fails when the process already exited.
    pub fn check_alive(&mut self) -> Result<(), EnvError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(EnvError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: self.log.display().to_string(),
            }),
        }
    }

    /// The pid of the program itself (not of its guard), once it started.
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the program.
    pub fn signal(&self, signal: &str) -> std::io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| std::io::Error::other(format!("{} has no pid yet", self.name)))?;
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "kill -s {signal} {pid} failed"
            )))
        }
    }

    /// Waits up to `limit` for the program to exit; its exit status if it did.
    pub fn wait_timeout(
        &mut self,
        limit: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(Some(s));
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the process to stop (SIGTERM, then SIGKILL after 5s) and waits for it.
    pub fn stop(&mut self) {
        // Closing the pipe makes the guard send SIGTERM and wait up to 5s.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1, for a server that binds it later (a child process).
///
/// The port is free when returned, but another process may take it before the server binds
/// it; [`free_port`] makes that unlikely, and the callers that start a server retry with
/// another port when its bind fails ([`bind_failed`]). Ports come from below the kernel's
/// ephemeral range (so the kernel never gives one to a connection or to a bind of port 0),
/// starting at a place of this process's own (so test binaries running at once rarely meet),
/// and never twice from one process (until the range is used up).
pub fn free_port() -> Result<u16, EnvError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = port_range();
    let span = u32::from(high - low);
    // Knuth's multiplicative hash spreads neighbouring pids over the range.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + u16::try_from((offset + n % span) % span).unwrap_or(0);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    // The range is used up: the kernel's choice.
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The ports [`free_port`] hands out: from 20000 up to the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, usually from 32768).
fn port_range() -> (u16, u16) {
    const LOW: u16 = 20000;
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral >= LOW + 1000 {
        (LOW, ephemeral)
    } else {
        // An unusual ephemeral range: a band of its own below it.
        (1024 + 1000, ephemeral.max(1024 + 2000))
    }
}

/// True when the log of a server that exited says its port was taken (as the operator, the
/// simulator, etcd and kube-apiserver say it): the caller starts it again on another port.
pub fn bind_failed(log: &Path) -> bool {
    fs::read_to_string(log).is_ok_and(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("address already in use") || l.contains("address in use")
    })
}

/// How many times a server is started on a new port when its port was taken.
pub const PORT_ATTEMPTS: usize = 5;

/// The Services' addresses of a control plane that serves a node (its
/// `--service-cluster-ip-range`; the node's kube-proxy and teardown know it as
/// `node::SERVICE_CIDR`).
pub const NODE_SERVICE_CIDR: &str = "10.0.0.0/24";

/// How [`ControlPlane::start_with`] sets up kube-apiserver. The default is the control plane
/// of the end-to-end tests: loopback only, RBAC only, no ServiceAccount admission and no
/// `kubernetes` Service endpoints (no pod ever runs).
#[derive(Debug, Clone, Default)]
pub struct ApiServerOptions {
    /// Serve a real node (see [`crate::node`]) whose address is this IP: listen on every
    /// address and advertise this one (the `kubernetes` Service's endpoint, which pods reach
    /// through 10.0.0.1), a serving certificate for it, 127.0.0.1, 10.0.0.1 and
    /// `kubernetes.default.svc[.cluster.local]`, the ServiceAccount admission plugin on (pods
    /// get their token) and `Node,RBAC` authorization.
    pub node_ip: Option<Ipv4Addr>,
}

/// The running etcd and kube-apiserver.
pub struct ControlPlane {
    /// The kubeconfig of a `system:masters` admin.
    pub kubeconfig: PathBuf,
    /// The apiserver URL.
    pub server: String,
    /// The folder with certificates, data and logs.
    pub dir: PathBuf,
    /// kubectl, kube-apiserver, etcd (and helm) live here.
    pub tools: PathBuf,
    // Field order: the apiserver stops before etcd.
    apiserver: Guarded,
    etcd: Guarded,
    // Signs the client certificates of [`ControlPlane::user_kubeconfig`].
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    _tmp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from `tools`, waits for readiness and the `default`
    /// namespace, and installs every CRD YAML in `crds` (if given). `dir`: where to keep
    /// state; `None` for a temporary folder removed on drop.
    pub async fn start(
        tools: &Path,
        dir: Option<&Path>,
        crds: Option<&Path>,
    ) -> Result<ControlPlane, EnvError> {
        Self::start_with(tools, dir, crds, &ApiServerOptions::default()).await
    }

    /// [`ControlPlane::start`] with kube-apiserver set up by `options`.
    pub async fn start_with(
        tools: &Path,
        dir: Option<&Path>,
        crds: Option<&Path>,
        options: &ApiServerOptions,
    ) -> Result<ControlPlane, EnvError> {
        for p in ["etcd", "kube-apiserver"] {
            if !tools.join(p).is_file() {
                return Err(EnvError::MissingProgram {
                    program: p.into(),
                    path: tools.join(p).display().to_string(),
                });
            }
        }
        let (tmp, dir) = match dir {
            Some(d) => {
                // A new folder is private; an existing one keeps its mode (the demo checks).
                use std::os::unix::fs::DirBuilderExt;
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)?;
                (None, d.to_path_buf())
            }
            None => {
                let t = tempfile::Builder::new().prefix("ppio-testenv-").tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let pki = dir.join("pki");
        create_private_dir(&pki)?;
        let certs = Certs::generate(options.node_ip)?;
        // Keys and certificates alike: only this user may read the folder's files.
        let write = |name: &str, body: &str| -> Result<PathBuf, EnvError> {
            let p = pki.join(name);
            write_private(&p, body.as_bytes())?;
            Ok(p)
        };
        let ca = write("ca.crt", &certs.ca_pem)?;
        let serving_crt = write("apiserver.crt", &certs.serving_pem)?;
        let serving_key = write("apiserver.key", &certs.serving_key)?;
        let sa_key = write("sa.key", &certs.sa_key)?;
        let sa_pub = write("sa.pub", &certs.sa_pub)?;

        // A port taken between free_port and the bind: again on other ports.
        let mut attempt = 1;
        let (etcd, etcd_url) = loop {
            let etcd_port = free_port()?;
            let peer_port = free_port()?;
            let etcd_url = format!("http://127.0.0.1:{etcd_port}");
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let mut etcd = Guarded::spawn(
                "etcd",
                &tools.join("etcd"),
                &[
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls={etcd_url}"),
                    format!("--advertise-client-urls={etcd_url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster=default={peer_url}"),
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ],
                &dir.join("etcd.log"),
                &[],
            )?;
            match wait_tcp(&mut etcd, etcd_port, Duration::from_secs(30)).await {
                Ok(()) => break (etcd, etcd_url),
                Err(EnvError::Exited { .. })
                    if attempt < PORT_ATTEMPTS && bind_failed(&etcd.log) =>
                {
                    attempt += 1;
                    drop(etcd);
                    let _ = fs::remove_dir_all(dir.join("etcd"));
                }
                Err(e) => return Err(e),
            }
        };

        let mut attempt = 1;
        let (apiserver, server, kubeconfig, client) = loop {
            let port = free_port()?;
            let server = format!("https://127.0.0.1:{port}");
            let mut args = vec![
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", serving_crt.display()),
                format!("--tls-private-key-file={}", serving_key.display()),
                format!("--client-ca-file={}", ca.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                // Room for a Service per PpioInstance in the exports benchmark; the test
                // node's range is its own (kube-proxy and the teardown know it).
                format!(
                    "--service-cluster-ip-range={}",
                    if options.node_ip.is_some() {
                        NODE_SERVICE_CIDR
                    } else {
                        "10.0.0.0/16"
                    }
                ),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
                "--v=0".into(),
            ];
            match options.node_ip {
                None => args.extend([
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    "--authorization-mode=RBAC".into(),
                    "--disable-admission-plugins=ServiceAccount".into(),
                    "--endpoint-reconciler-type=none".into(),
                ]),
                Some(ip) => args.extend([
                    "--bind-address=0.0.0.0".into(),
                    format!("--advertise-address={ip}"),
                    "--authorization-mode=Node,RBAC".into(),
                ]),
            }
            let mut apiserver = Guarded::spawn(
                "kube-apiserver",
                &tools.join("kube-apiserver"),
                &args,
                &dir.join("kube-apiserver.log"),
                &[],
            )?;

            let kubeconfig = dir.join("kubeconfig");
            write_kubeconfig(&kubeconfig, &server, &certs)?;
            let started = async {
                wait_tcp(&mut apiserver, port, Duration::from_secs(60)).await?;
                let client = client_for(&kubeconfig).await?;
                wait_ready(&mut apiserver, &client, Duration::from_secs(90)).await?;
                Ok::<Client, EnvError>(client)
            };
            match started.await {
                Ok(client) => break (apiserver, server, kubeconfig, client),
                Err(EnvError::Exited { .. })
                    if attempt < PORT_ATTEMPTS && bind_failed(&apiserver.log) =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let cp = ControlPlane {
            kubeconfig,
            server,
            dir,
            tools: tools.to_path_buf(),
            apiserver,
            etcd,
            ca_cert: certs.ca_cert,
            ca_key: certs.ca_key,
            _tmp: tmp,
        };
        if let Some(crds) = crds {
            install_crds(&client, crds).await?;
        }
        Ok(cp)
    }

    /// A new client for the admin kubeconfig.
    pub async fn client(&self) -> Result<Client, EnvError> {
        client_for(&self.kubeconfig).await
    }

    /// Writes a kubeconfig (0600) at `path` for a client certificate of `user` in `groups`,
    /// signed by this control plane's CA: how the node's programs authenticate (e.g.
    /// `system:node:<name>` in `system:nodes` for the kubelet).
    pub fn user_kubeconfig(
        &self,
        path: &Path,
        user: &str,
        groups: &[&str],
    ) -> Result<(), EnvError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key)?;
        write_kubeconfig_for(
            path,
            &self.server,
            &self.ca_cert.pem(),
            &cert.pem(),
            &key.serialize_pem(),
        )
    }

    /// Fails when etcd or the apiserver died.
    pub fn check_alive(&mut self) -> Result<(), EnvError> {
        self.etcd.check_alive()?;
        self.apiserver.check_alive()
    }

    /// Runs the real kubectl against this control plane.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.tools.join("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    /// Stops the apiserver, then etcd.
    pub fn stop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

/// A self-signed CA made for one test run: its certificate and key.
pub(crate) fn throwaway_ca(
    common_name: &str,
) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, common_name);
    let cert = ca.self_signed(&key)?;
    Ok((cert, key))
}

struct Certs {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_pem: String,
    serving_pem: String,
    serving_key: String,
    client_pem: String,
    client_key: String,
    sa_key: String,
    sa_pub: String,
}

impl Certs {
    /// `node_ip`: also serve the node at this address (see [`ApiServerOptions::node_ip`]).
    fn generate(node_ip: Option<Ipv4Addr>) -> Result<Certs, rcgen::Error> {
        let (ca_cert, ca_key) = throwaway_ca("ppio-testenv-ca")?;

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec!["localhost".to_string()])?;
        serving
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        if let Some(ip) = node_ip {
            // Pods reach the API server as https://10.0.0.1 (the first service IP), through
            // kube-proxy at the advertised node IP, or by the Service's DNS names.
            for ip in [ip, Ipv4Addr::new(10, 0, 0, 1)] {
                serving
                    .subject_alt_names
                    .push(rcgen::SanType::IpAddress(IpAddr::V4(ip)));
            }
            for name in [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ] {
                serving
                    .subject_alt_names
                    .push(rcgen::SanType::DnsName(name.try_into()?));
            }
        }
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &ca_cert, &ca_key)?;

        let client_key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "testenv-admin");
        client
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key)?;

        let sa = KeyPair::generate()?;
        Ok(Certs {
            ca_pem: ca_cert.pem(),
            serving_pem: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            client_pem: client_cert.pem(),
            client_key: client_key.serialize_pem(),
            sa_key: sa.serialize_pem(),
            sa_pub: sa.public_key_pem(),
            ca_cert,
            ca_key,
        })
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn write_kubeconfig(path: &Path, server: &str, certs: &Certs) -> Result<(), EnvError> {
    write_kubeconfig_for(
        path,
        server,
        &certs.ca_pem,
        &certs.client_pem,
        &certs.client_key,
    )
}

fn write_kubeconfig_for(
    path: &Path,
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), EnvError> {
    let body = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: testenv-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: testenv-admin
    namespace: default
current-context: testenv
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    );
    write_private(path, body.as_bytes())
}

/// Writes a file only its owner may read or write (0600), replacing an earlier one: the
/// mode is set before any byte is written, also when the file existed with a wider mode.
pub fn write_private(path: &Path, body: &[u8]) -> Result<(), EnvError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(body)?;
    Ok(())
}

/// Creates a folder (and its parents) that only its owner may enter (0700); an existing
/// folder is narrowed to 0700.
pub fn create_private_dir(path: &Path) -> Result<(), EnvError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client, EnvError> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| EnvError::Kubeconfig(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| EnvError::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(|e| EnvError::Kubeconfig(e.to_string()))
}

async fn wait_tcp(p: &mut Guarded, port: u16, limit: Duration) -> Result<(), EnvError> {
    let start = Instant::now();
    while start.elapsed() < limit {
        p.check_alive()?;
        if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(EnvError::NotReady {
        what: p.name.clone(),
        secs: limit.as_secs(),
        log: p.log.display().to_string(),
    })
}

async fn wait_ready(p: &mut Guarded, client: &Client, limit: Duration) -> Result<(), EnvError> {
    let start = Instant::now();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    while start.elapsed() < limit {
        p.check_alive()?;
        let ready = match http::Request::get("/readyz").body(Vec::new()) {
            Ok(req) => client
                .request_text(req)
                .await
                .map(|t| t.trim() == "ok")
                .unwrap_or(false),
            Err(_) => false,
        };
        if ready && matches!(namespaces.get_opt("default").await, Ok(Some(_))) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(EnvError::NotReady {
        what: p.name.clone(),
        secs: limit.as_secs(),
        log: p.log.display().to_string(),
    })
}

/// Server-side applies every `*.yaml` CRD in `dir` and waits until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<(), EnvError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = fs::read_to_string(path)?;
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
            .map_err(|e| EnvError::Crd(format!("{}: {e}", path.display())))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("ppio-testenv").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| EnvError::Crd(format!("{name}: {e}")))?;
        names.push(name);
    }
    let start = Instant::now();
    for name in names {
        loop {
            let established = api.get_opt(&name).await.ok().flatten().is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(EnvError::Crd(format!(
                    "{name} was not Established within 30s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
