//! Exports for in-cluster consumers: what the connection Secret holds and what the Service
//! and its EndpointSlices publish, computed from an observation. Pure: the controller's
//! export step (`controller::export`) compares these with what it wrote and writes the
//! difference.
//!
//! The connection Secret is the one place the instance's passwords go. Everything else
//! here (names, ports, addresses, messages) is safe to show.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::crd::PpioInstanceStatus;
use crate::ppio::wire;
use crate::vocabulary::state;

/// The label on every exported object: the PpioInstance's name.
pub const INSTANCE_LABEL: &str = "gpus.ppio.com/instance";
/// `endpointslice.kubernetes.io/managed-by` of the operator's EndpointSlices.
pub const SLICE_MANAGER: &str = "ppio-operator.gpus.ppio.com";
/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming an EndpointSlice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// What this operator may export (its flags, set by the chart's `exports.*` values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSettings {
    /// Connection Secrets may be written (`--export-connection-secrets`).
    pub connection_secrets: bool,
    /// Services and EndpointSlices may be written (`--export-services`).
    pub services: bool,
    /// Addresses never published, besides loopback, link-local, unspecified, multicast and
    /// broadcast ones (`--export-deny-cidrs`: e.g. the cluster's pod and service ranges).
    pub deny: Vec<Cidr>,
}

/// An IPv4 or IPv6 network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Reads `10.96.0.0/12`, `fd00::/8` or a single address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not a CIDR (e.g. 10.96.0.0/12 or fd00::/8)"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(
                u128::from(n.to_bits()),
                u128::from(a.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(n.to_bits(), a.to_bits(), 128, self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    (a >> shift) == (b >> shift)
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why an address is not published, or `None` when it may be.
pub fn refusal(ip: IpAddr, deny: &[Cidr]) -> Option<String> {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let kind = match mapped {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address"),
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        _ => None,
    };
    if let Some(kind) = kind {
        return Some(format!("{ip} is {kind}"));
    }
    deny.iter()
        .find(|c| c.contains(mapped) || c.contains(ip))
        .map(|c| format!("{ip} is in the denied range {c} (--export-deny-cidrs)"))
}

/// The data of a connection Secret: key to value. The values include the passwords, so it
/// prints only its keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectionData(pub BTreeMap<String, String>);

impl std::fmt::Debug for ConnectionData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The connection Secret's data for a fetched instance (a GET: LIST items lack `tools`).
/// Keys whose value PPIO does not give are left out.
pub fn connection_data(instance: &wire::Instance) -> ConnectionData {
    let mut data = BTreeMap::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) {
            data.insert(key.to_string(), v.to_string());
        }
    };
    let text = |t: &Option<wire::Text>| t.as_ref().map(|t| t.0.clone());
    let tools = instance.tools.as_ref();
    if let Some(ssh) = tools.and_then(|t| t.ssh.as_ref()) {
        let command = text(&ssh.command);
        let parsed = command
            .as_deref()
            .map(parse_ssh_command)
            .unwrap_or_default();
        put("ssh-command", command.as_deref());
        put("ssh-host", parsed.host.as_deref());
        put("ssh-port", parsed.port.map(|p| p.to_string()).as_deref());
        put(
            "ssh-username",
            text(&ssh.username)
                .filter(|u| !u.trim().is_empty())
                .or(parsed.user)
                .as_deref(),
        );
        put(
            "ssh-password",
            ssh.password.as_ref().map(wire::Password::expose),
        );
    }
    if let Some(web) = tools.and_then(|t| t.web_terminal.as_ref()) {
        put("web-terminal-endpoint", text(&web.endpoint).as_deref());
        put("web-terminal-username", text(&web.username).as_deref());
        put(
            "web-terminal-password",
            web.password.as_ref().map(wire::Password::expose),
        );
    }
    if let Some(jupyter) = tools.and_then(|t| t.jupyter.as_ref()) {
        put("jupyter-endpoint", text(&jupyter.endpoint).as_deref());
    }
    for port in instance.ports.iter().flatten() {
        if let Some(n) = port.port.map(|p| p.0) {
            put(
                &format!("port-{n}-endpoint"),
                text(&port.endpoint).as_deref(),
            );
        }
    }
    ConnectionData(data)
}

/// What an ssh command line (`ssh -p 51039 root@host`) says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
}

/// Reads the user, host and port of an ssh command line; the port is 22 when the command
/// names a host and no `-p`.
pub fn parse_ssh_command(command: &str) -> SshTarget {
    let mut words = command.split_whitespace();
    if words.next() != Some("ssh") {
        return SshTarget::default();
    }
    let mut target = SshTarget::default();
    let mut port = None;
    while let Some(w) = words.next() {
        if w == "-p" {
            port = words.next().and_then(|p| p.parse().ok());
        } else if let Some(p) = w.strip_prefix("-p") {
            port = p.parse().ok();
        } else if w == "-l" {
            target.user = words.next().map(str::to_string);
        } else if w.starts_with('-') {
            // Another option: those with a value take the next word.
            if matches!(
                w,
                "-i" | "-o" | "-F" | "-J" | "-L" | "-R" | "-D" | "-c" | "-m"
            ) {
                words.next();
            }
        } else if target.host.is_none() {
            let (user, host) = match w.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, w),
            };
            target.user = target.user.or(user);
            target.host = Some(host.to_string()).filter(|h| !h.is_empty());
        }
    }
    target.port = port.or(target.host.as_ref().map(|_| 22));
    target
}

/// One port of the Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePort {
    /// `port-<N>`, or `port-<N>-udp` / `port-<N>-sctp`.
    pub name: String,
    /// The instance's port number (the Service's port).
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Where it is reached: the endpoint's address and port.
    pub address: IpAddr,
    pub target: i32,
}

/// The Service and EndpointSlices an instance's status asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServicePlan {
    /// The ports that are published, sorted by name.
    pub ports: Vec<ServicePort>,
    /// Whether the endpoints are ready: the instance is running.
    pub ready: bool,
    /// Why some ports are not published (empty: all are).
    pub refused: Vec<String>,
}

impl ServicePlan {
    /// The EndpointSlices: one per address, in address order, each with the ports found
    /// there.
    pub fn slices(&self) -> Vec<(IpAddr, Vec<&ServicePort>)> {
        let mut by_address: BTreeMap<IpAddr, Vec<&ServicePort>> = BTreeMap::new();
        for p in &self.ports {
            by_address.entry(p.address).or_default().push(p);
        }
        by_address.into_iter().collect()
    }
}

/// The Service plan of a status: each port of `endpoints.ports` whose endpoint is an IP
/// address the operator publishes.
pub fn service_plan(status: &PpioInstanceStatus, deny: &[Cidr]) -> ServicePlan {
    let mut plan = ServicePlan {
        ready: status.state.as_deref() == Some(state::RUNNING),
        ..ServicePlan::default()
    };
    let ports = status.endpoints.as_ref().map(|e| e.ports.as_slice());
    let mut names = std::collections::BTreeSet::new();
    for port in ports.unwrap_or_default() {
        let Some(endpoint) = port.endpoint.as_deref().filter(|e| !e.is_empty()) else {
            continue;
        };
        let number = port.port.and_then(|p| i32::try_from(p).ok());
        let (host, endpoint_port) = match split_endpoint(endpoint) {
            Some(parts) => parts,
            None => {
                plan.refused.push(format!(
                    "port {}: the endpoint '{endpoint}' has no host",
                    show(number)
                ));
                continue;
            }
        };
        let address = match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                plan.refused.push(format!(
                    "port {}: the endpoint host '{host}' is a hostname; only IP addresses are published",
                    show(number)
                ));
                continue;
            }
        };
        if let Some(why) = refusal(address, deny) {
            plan.refused.push(format!("port {}: {why}", show(number)));
            continue;
        }
        let Some(target) = endpoint_port.or(number).filter(|p| (1..=65535).contains(p)) else {
            plan.refused.push(format!(
                "port {}: the endpoint '{endpoint}' has no port",
                show(number)
            ));
            continue;
        };
        let port_number = number.filter(|p| (1..=65535).contains(p)).unwrap_or(target);
        let protocol = match port
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("udp") => "UDP",
            Some("sctp") => "SCTP",
            _ => "TCP",
        };
        let name = match protocol {
            "TCP" => format!("port-{port_number}"),
            other => format!("port-{port_number}-{}", other.to_ascii_lowercase()),
        };
        if !names.insert(name.clone()) {
            continue;
        }
        plan.ports.push(ServicePort {
            name,
            port: port_number,
            protocol: protocol.to_string(),
            address,
            target,
        });
    }
    plan.ports.sort();
    plan
}

fn show(port: Option<i32>) -> String {
    port.map_or_else(|| "?".to_string(), |p| p.to_string())
}

/// The host and port of an endpoint: a URL (`http://1.2.3.4:8080/path`) or `host:port`.
fn split_endpoint(endpoint: &str) -> Option<(String, Option<i32>)> {
    let with_scheme = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("tcp://{endpoint}")
    };
    let url = reqwest::Url::parse(&with_scheme).ok()?;
    let host = url.host_str()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    Some((host, url.port_or_known_default().map(i32::from)))
}

/// Whether `name` may name a Service (an RFC 1035 label: lower-case letters, digits and
/// '-', starting with a letter, at most 63 characters).
pub fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// The name of the `n`th EndpointSlice (from 0) of a Service.
pub fn slice_name(service: &str, n: usize) -> String {
    if n == 0 {
        service.to_string()
    } else {
        format!("{service}-{}", n + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Endpoints, Port};

    fn status(state: &str, ports: &[(i64, &str, &str)]) -> PpioInstanceStatus {
        PpioInstanceStatus {
            state: Some(state.into()),
            endpoints: Some(Endpoints {
                ports: ports
                    .iter()
                    .map(|(p, proto, e)| Port {
                        port: Some(*p),
                        protocol: Some(proto.to_string()),
                        endpoint: Some(e.to_string()),
                    })
                    .collect(),
                ..Endpoints::default()
            }),
            ..PpioInstanceStatus::default()
        }
    }

    #[test]
    fn ssh_commands_give_user_host_and_port() {
        assert_eq!(
            parse_ssh_command("ssh -p 51039 root@proxy.example.com"),
            SshTarget {
                user: Some("root".into()),
                host: Some("proxy.example.com".into()),
                port: Some(51039)
            }
        );
        assert_eq!(
            parse_ssh_command("ssh -o StrictHostKeyChecking=no root@1.2.3.4"),
            SshTarget {
                user: Some("root".into()),
                host: Some("1.2.3.4".into()),
                port: Some(22)
            }
        );
        assert_eq!(parse_ssh_command("mosh x"), SshTarget::default());
    }

    #[test]
    fn the_connection_data_has_the_contract_keys_and_prints_only_keys() {
        let body = r#"{"ports":[{"port":8080,"protocol":"tcp","endpoint":"http://1.2.3.4:8080"}],
            "tools":{"jupyter":{"endpoint":"https://j.example.com/x"},
            "ssh":{"command":"ssh -p 51039 root@proxy.example.com","username":"","password":"pw-ssh"},
            "web_terminal":{"endpoint":"wss://t.example.com/x","username":"root","password":"pw-web"}}}"#;
        let instance: wire::Instance = serde_json::from_str(body).expect("decode");
        let data = connection_data(&instance);
        let keys: Vec<&str> = data.0.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "jupyter-endpoint",
                "port-8080-endpoint",
                "ssh-command",
                "ssh-host",
                "ssh-password",
                "ssh-port",
                "ssh-username",
                "web-terminal-endpoint",
                "web-terminal-password",
                "web-terminal-username"
            ]
        );
        assert_eq!(data.0["ssh-password"], "pw-ssh");
        assert_eq!(data.0["ssh-username"], "root");
        assert_eq!(data.0["ssh-port"], "51039");
        assert_eq!(data.0["port-8080-endpoint"], "http://1.2.3.4:8080");
        let printed = format!("{data:?} {instance:?}");
        assert!(!printed.contains("pw-"), "{printed}");
    }

    #[test]
    fn the_plan_publishes_ip_endpoints_and_says_why_others_are_not() {
        let deny = [Cidr::parse("10.96.0.0/12").expect("cidr")];
        let s = status(
            "running",
            &[
                (8080, "tcp", "http://1.2.3.4:8080"),
                (53, "udp", "1.2.3.4:30053"),
                (22, "tcp", "127.0.0.1:22"),
                (80, "tcp", "http://example.com:80"),
                (443, "tcp", "https://10.100.0.1"),
                (9000, "tcp", "[2001:db8::1]:9000"),
            ],
        );
        let plan = service_plan(&s, &deny);
        assert!(plan.ready);
        let got: Vec<(&str, i32, &str, String, i32)> = plan
            .ports
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.port,
                    p.protocol.as_str(),
                    p.address.to_string(),
                    p.target,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("port-53-udp", 53, "UDP", "1.2.3.4".into(), 30053),
                ("port-8080", 8080, "TCP", "1.2.3.4".into(), 8080),
                ("port-9000", 9000, "TCP", "2001:db8::1".into(), 9000),
            ]
        );
        assert_eq!(plan.slices().len(), 2);
        assert_eq!(plan.refused.len(), 3, "{:?}", plan.refused);
        assert!(plan.refused[0].contains("loopback"));
        assert!(plan.refused[1].contains("hostname"));
        assert!(plan.refused[2].contains("10.96.0.0/12"));
        assert!(!service_plan(&status("exited", &[]), &[]).ready);
    }

    #[test]
    fn refused_addresses() {
        for ip in [
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(refusal(ip.parse().expect("ip"), &[]).is_some(), "{ip}");
        }
        for ip in ["1.2.3.4", "192.168.1.10", "2001:db8::1"] {
            assert!(refusal(ip.parse().expect("ip"), &[]).is_none(), "{ip}");
        }
        let deny = [
            Cidr::parse("192.168.0.0/16").expect("cidr"),
            Cidr::parse("fd00::/8").expect("cidr"),
        ];
        assert!(refusal("192.168.1.10".parse().expect("ip"), &deny).is_some());
        assert!(refusal("fd12::1".parse().expect("ip"), &deny).is_some());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .expect("cidr")
                .contains("8.8.8.8".parse().expect("ip"))
        );
    }

    #[test]
    fn service_names() {
        assert!(valid_service_name("trainer-a"));
        assert!(!valid_service_name("trainer.a"));
        assert!(!valid_service_name("1trainer"));
        assert!(!valid_service_name(&"a".repeat(64)));
        assert_eq!(slice_name("svc", 0), "svc");
        assert_eq!(slice_name("svc", 1), "svc-2");
    }
}
