//! The network a sandbox may use: allow-list entries (`bkg exe --net`, cave.yaml's
//! `network: {allow: […]}`, the agent's `--egress-allow` policy that caps them), published ports
//! (`-p`, cave.yaml's `ports`), what a run reports it was refused, and a service's restart policy
//! and health. Parsed here so the CLI and the agent read the same text the same way.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The name under which the host's own loopback services are reachable, on allowed ports only.
pub const HOST_ALIAS: &str = "host.bkg.internal";

/// Where a sandbox with network finds its proxy: on its own loopback.
pub const PROXY_PORT: u16 = 3128;

/// The variables that name the proxy to a sandbox with network: set by bkg, so a run's own
/// (`--env`, cave.yaml's `env:`, a secret) are refused there.
pub const PROXY_VARIABLES: [&str; 6] =
    ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"];

/// Why `name` may not be a variable of a run given network, if it may not.
pub fn refused_with_network(name: &str) -> Option<String> {
    PROXY_VARIABLES.contains(&name).then(|| {
        format!(
            "`{name}` is set by bkg in a run given network (the sandbox's clients reach the hosts it may reach \
             through bkg's proxy): leave it out"
        )
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("`{0}` is not a network rule: use HOST[:PORT], *.DOMAIN[:PORT], *[:PORT] or an IP address")]
    Rule(String),
    #[error("`{0}` is not a port mapping: use [ADDRESS:]HOST_PORT:SANDBOX_PORT, e.g. 127.0.0.1:8080:8000")]
    Port(String),
    /// The form is right, its address is not one (found by a new-user trial: it was told the form).
    #[error("`{address}` in `{mapping}` is not an IP address: give one such as 127.0.0.1, 0.0.0.0 or [::1]")]
    PortAddress { address: String, mapping: String },
    #[error("host port {host} is forwarded twice: `{first}` and `{second}`")]
    PortTwice { host: String, first: String, second: String },
    #[error(
        "`{address}` in `{mapping}` is not an address to listen on: give one of this host's, such as 127.0.0.1, 0.0.0.0 or [::1]"
    )]
    PortAddressNotOwn { address: String, mapping: String },
    #[error("`{0}` forwards to port {PROXY_PORT}, the sandbox's own egress proxy: give its code another port")]
    PortIsTheProxy(String),
    /// Clients reach `localhost` past the proxy (`NO_PROXY`), in the sandbox itself (found by a
    /// new-user trial: `--net localhost:8000` was taken, and its connections refused unsaid).
    #[error(
        "`{rule}`: localhost in a sandbox is the sandbox's own loopback, reached without any network rule; this host's is {instead}"
    )]
    Localhost { rule: String, instead: NetRule },
}

/// Which hosts a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `*`: every host by name, but never `host.bkg.internal` nor an address.
    AnyName,
    /// `*.example.com`: every name below example.com, but never `host.bkg.internal`.
    Below(String),
    /// One name, `host.bkg.internal` included.
    Name(String),
    /// One address, as an admin names a private one.
    Address(IpAddr),
}

/// `HOST[:PORT]`: a host pattern and a port (any when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl NetRule {
    pub fn parse(text: &str) -> Result<Self, EgressError> {
        let refuse = || EgressError::Rule(text.to_owned());
        let trimmed = text.trim();
        let (host, port) = if let Some(rest) = trimmed.strip_prefix('[') {
            let (address, after) = rest.split_once(']').ok_or_else(refuse)?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(refuse)?),
            };
            (address, port)
        } else if trimmed.parse::<Ipv6Addr>().is_ok() {
            (trimmed, None)
        } else {
            match trimmed.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (trimmed, None),
            }
        };
        let port = match port {
            Some(port) => Some(port.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(refuse)?),
            None => None,
        };
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        if host == "localhost" || host.ends_with(".localhost") {
            return Err(EgressError::Localhost { rule: text.to_owned(), instead: Self::on_the_hosts_loopback(port) });
        }
        let pattern = if host == "*" {
            HostPattern::AnyName
        } else if let Ok(address) = host.parse::<IpAddr>() {
            HostPattern::Address(address)
        } else if let Some(domain) = host.strip_prefix("*.") {
            if !is_host_name(domain) {
                return Err(refuse());
            }
            HostPattern::Below(domain.to_owned())
        } else if is_host_name(host) {
            HostPattern::Name(host.to_owned())
        } else {
            return Err(refuse());
        };
        Ok(Self { host: pattern, port })
    }

    /// The rule for `port` (any when none) of the host's own loopback, [`HOST_ALIAS`]: what a
    /// rule naming the sandbox's own loopback most often meant.
    pub fn on_the_hosts_loopback(port: Option<u16>) -> Self {
        Self { host: HostPattern::Name(HOST_ALIAS.to_owned()), port }
    }

    /// Parses a comma-separated list, as `--net a.com,b.com:443` gives it.
    pub fn parse_list(texts: &[String]) -> Result<Vec<Self>, EgressError> {
        texts.iter().flat_map(|text| text.split(',')).filter(|part| !part.trim().is_empty()).map(Self::parse).collect()
    }

    /// Whether this rule (of the agent's policy) allows everything `asked` (a run's rule) allows.
    pub fn covers(&self, asked: &NetRule) -> bool {
        let port = match (self.port, asked.port) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        };
        let host = match (&self.host, &asked.host) {
            (HostPattern::AnyName, HostPattern::Name(name)) => name != HOST_ALIAS,
            (HostPattern::AnyName, HostPattern::AnyName | HostPattern::Below(_)) => true,
            (HostPattern::Below(mine), HostPattern::Below(theirs)) => is_below_or_at(theirs, mine),
            (HostPattern::Below(mine), HostPattern::Name(name)) => name != HOST_ALIAS && is_below(name, mine),
            (HostPattern::Name(mine), HostPattern::Name(theirs)) => mine == theirs,
            (HostPattern::Address(mine), HostPattern::Address(theirs)) => mine == theirs,
            _ => false,
        };
        port && host
    }

    /// Whether a connection to `host` (a name or an address as the client wrote it) on `port`
    /// is allowed by this rule.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|mine| mine != port) {
            return false;
        }
        let address = host.parse::<IpAddr>().ok();
        match &self.host {
            HostPattern::AnyName => address.is_none() && host != HOST_ALIAS,
            // Nor by a domain's wildcard (found by a new-user trial: `*.internal` reached every
            // port of the host's loopback): only a rule that names it does.
            HostPattern::Below(domain) => address.is_none() && host != HOST_ALIAS && is_below(host, domain),
            HostPattern::Name(name) => name == host,
            HostPattern::Address(mine) => address == Some(*mine),
        }
    }

    /// Whether this rule names `address` on `port`: an admin's way to open a private address.
    pub fn names_address(&self, address: IpAddr, port: u16) -> bool {
        self.host == HostPattern::Address(address) && self.port.is_none_or(|mine| mine == port)
    }
}

impl fmt::Display for NetRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::AnyName => f.write_str("*")?,
            HostPattern::Below(domain) => write!(f, "*.{domain}")?,
            HostPattern::Name(name) => f.write_str(name)?,
            HostPattern::Address(IpAddr::V6(address)) if self.port.is_some() => write!(f, "[{address}]")?,
            HostPattern::Address(address) => write!(f, "{address}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn is_below(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain).is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

fn is_below_or_at(name: &str, domain: &str) -> bool {
    name == domain || is_below(name, domain)
}

/// A DNS name: dot-separated labels of letters, digits and `-`.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Addresses no sandbox reaches unless an admin names them: loopback, private and shared
/// ranges, link-local (cloud metadata at 169.254.169.254), multicast, unspecified, documentation
/// and benchmarking ranges, and their IPv6 counterparts. The host's own public addresses are
/// checked apart (the agent knows them).
pub fn is_internal(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal_v4(v4),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
                    || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                    || first == 0x0064 // NAT64, which reaches IPv4 addresses of any kind
            }
        },
    }
}

fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, _, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_unspecified()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240
}

/// A host port forwarded into a sandbox: `[ADDRESS:]HOST_PORT:SANDBOX_PORT`, or one `PORT` for
/// both; the address is 127.0.0.1 unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub address: IpAddr,
    pub host_port: u16,
    pub sandbox_port: u16,
}

impl PortMapping {
    /// Each of `texts` parsed, refused when one is not a mapping or two take the same host port
    /// (`8080:80` is `127.0.0.1:8080:80`; `0.0.0.0:8080:81` takes it too).
    pub fn parse_all(texts: &[String]) -> Result<Vec<Self>, EgressError> {
        let mut mappings: Vec<(Self, &String)> = Vec::new();
        for text in texts {
            let mapping = Self::parse(text)?;
            if let Some((seen, first)) = mappings.iter().find(|(seen, _)| seen.takes_the_port_of(&mapping)) {
                // The wider of the two is the one named.
                let address = if mapping.address.is_unspecified() { mapping.address } else { seen.address };
                let host = match address {
                    IpAddr::V6(address) => format!("[{address}]:{}", seen.host_port),
                    IpAddr::V4(address) => format!("{address}:{}", seen.host_port),
                };
                return Err(EgressError::PortTwice { host, first: (*first).clone(), second: text.clone() });
            }
            mappings.push((mapping, text));
        }
        Ok(mappings.into_iter().map(|(mapping, _)| mapping).collect())
    }

    /// Whether this and `other` cannot both be listened on: the same host port, on the same
    /// address or one of them every address (found by a new-user trial: `-p 8080:80 -p
    /// 0.0.0.0:8080:80` failed at the second bind, told to free the port of the first).
    fn takes_the_port_of(&self, other: &Self) -> bool {
        self.host_port == other.host_port
            && (self.address == other.address || self.address.is_unspecified() || other.address.is_unspecified())
    }

    pub fn parse(text: &str) -> Result<Self, EgressError> {
        let refuse = || EgressError::Port(text.to_owned());
        let port = |part: &str| part.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(refuse);
        let parts: Vec<&str> = text.trim().rsplitn(3, ':').collect();
        let (address, host_port, sandbox_port) = match parts.as_slice() {
            [only] => (IpAddr::V4(Ipv4Addr::LOCALHOST), port(only)?, port(only)?),
            [sandbox, host] => (IpAddr::V4(Ipv4Addr::LOCALHOST), port(host)?, port(sandbox)?),
            [sandbox, host, address] => {
                let address = address.trim_start_matches('[').trim_end_matches(']');
                let parsed = address.parse().map_err(|_| EgressError::PortAddress {
                    address: address.to_owned(),
                    mapping: text.trim().to_owned(),
                })?;
                (parsed, port(host)?, port(sandbox)?)
            }
            _ => return Err(refuse()),
        };
        // Found by a new-user trial: a multicast address was listened on, and a forward to the
        // proxy let the host's callers use the run's network allowance.
        if address.is_multicast() || address == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return Err(EgressError::PortAddressNotOwn {
                address: address.to_string(),
                mapping: text.trim().to_owned(),
            });
        }
        if sandbox_port == PROXY_PORT {
            return Err(EgressError::PortIsTheProxy(text.trim().to_owned()));
        }
        Ok(Self { address, host_port, sandbox_port })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V6(address) => write!(f, "[{address}]:{}:{}", self.host_port, self.sandbox_port),
            IpAddr::V4(address) => write!(f, "{address}:{}:{}", self.host_port, self.sandbox_port),
        }
    }
}

/// How a refused connection left the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Through the proxy, by name (HTTP or CONNECT).
    Proxy,
    /// A TCP connection to an address, past the proxy.
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One destination a run was refused, with how many times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkDenial {
    pub transport: Transport,
    /// `HOST:PORT` as the sandbox asked for it.
    pub destination: String,
    pub reason: String,
    pub count: u32,
}

/// What a detached run of a persistent sandbox does when it fails (cave.yaml's `restart`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    /// Start it again when it ends other than by success or by a stop.
    OnFailure,
}

/// Where a detached service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    Running,
    /// It failed and will be started again after a pause.
    Restarting,
    /// It ended by success, or failed without a restart policy.
    Exited,
    /// `bkg stop` or the agent's shutdown ended it.
    Stopped,
}

/// A forwarded port and whether the sandbox accepts connections on it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PortHealth {
    /// `ADDRESS:HOST_PORT:SANDBOX_PORT`.
    pub mapping: String,
    pub accepting: bool,
}

/// The health of a sandbox's detached run, as `bkg status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceHealth {
    pub state: ServiceState,
    pub restart: RestartPolicy,
    /// Its newest run: the one going on, or the last one that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Times it was started again after a failure.
    pub restarts: u32,
    /// The exit code of its last failed run, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_code: Option<i32>,
    /// The limit that ended its last failed run, if one did (`timeout`, `memory`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_killed_by: Option<crate::KilledBy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortHealth>,
    /// Why it was not started again when its policy or an agent's restart called for it (a host
    /// port taken meanwhile, a volume gone, its key revoked); while it is `restarting`, what holds
    /// its sandbox meanwhile (a session, a file transfer), which it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_restarted: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> NetRule {
        NetRule::parse(text).expect(text)
    }

    #[test]
    fn rules_parse_and_print_back() {
        for text in ["example.com", "example.com:443", "*", "*:443", "*.pypi.org", "10.0.0.5:5432", "[::1]:80", "::1"] {
            assert_eq!(rule(text).to_string(), text);
        }
        assert_eq!(rule("Example.COM.").to_string(), "example.com");
        for bad in ["", "a b", "x:0", "x:70000", "x:y", "*.*", "-a.com", "a..b", "[::1", "http://a.com"] {
            assert!(NetRule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(NetRule::parse_list(&["a.com,b.com:443".into(), "c.com".into()]).expect("list").len(), 3);
    }

    #[test]
    fn localhost_is_refused_with_the_hosts_name_for_it() {
        for (text, alias) in [
            ("localhost:8000", "host.bkg.internal:8000"),
            ("LOCALHOST.", "host.bkg.internal"),
            ("db.localhost:5432", "host.bkg.internal:5432"),
        ] {
            let error = NetRule::parse(text).expect_err(text).to_string();
            assert!(
                error.starts_with(&format!("`{text}`: localhost in a sandbox is the sandbox's own loopback")),
                "{error}"
            );
            assert!(error.ends_with(&format!("this host's is {alias}")), "{error}");
        }
        assert!(NetRule::parse("notlocalhost.com").is_ok());
    }

    #[test]
    fn the_policy_covers_only_what_it_names() {
        assert!(rule("*").covers(&rule("pypi.org:443")));
        assert!(rule("*").covers(&rule("*.pypi.org")));
        assert!(!rule("*").covers(&rule(HOST_ALIAS)));
        assert!(!rule("*").covers(&rule("10.0.0.5")));
        assert!(!rule("*:443").covers(&rule("pypi.org")));
        assert!(rule("*:443").covers(&rule("pypi.org:443")));
        assert!(rule("*.pypi.org").covers(&rule("files.pypi.org")));
        assert!(!rule("*.pypi.org").covers(&rule("pypi.org")));
        assert!(!rule("*.pypi.org").covers(&rule("evilpypi.org")));
        assert!(rule("host.bkg.internal").covers(&rule("host.bkg.internal:5432")));
        assert!(!rule("host.bkg.internal:5432").covers(&rule("host.bkg.internal:22")));
    }

    #[test]
    fn connections_match_names_not_addresses() {
        assert!(rule("example.com:443").matches("example.com", 443));
        assert!(!rule("example.com:443").matches("example.com", 80));
        assert!(!rule("*").matches("93.184.216.34", 80));
        assert!(!rule("*").matches(HOST_ALIAS, 80));
        for wildcard in ["*.internal", "*.bkg.internal", "*.bkg.internal:80"] {
            assert!(!rule(wildcard).matches(HOST_ALIAS, 80), "{wildcard}");
            assert!(!rule(wildcard).covers(&rule("host.bkg.internal:80")), "{wildcard}");
        }
        assert!(rule("*.internal").matches("db.internal", 80));
        assert!(rule("*.example.com").matches("a.example.com", 1));
        assert!(!rule("*.example.com").matches("aexample.com", 1));
        assert!(rule("10.0.0.5").matches("10.0.0.5", 22));
    }

    #[test]
    fn internal_addresses() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(internal.parse().expect(internal)), "{internal}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(!is_internal(public.parse().expect(public)), "{public}");
        }
    }

    #[test]
    fn port_mappings() {
        let parse = |text: &str| PortMapping::parse(text).map(|mapping| mapping.to_string());
        assert_eq!(parse("127.0.0.1:8080:8000"), Ok("127.0.0.1:8080:8000".into()));
        assert_eq!(parse("8080:8000"), Ok("127.0.0.1:8080:8000".into()));
        assert_eq!(parse("8000"), Ok("127.0.0.1:8000:8000".into()));
        assert_eq!(parse("[::1]:8080:80"), Ok("[::1]:8080:80".into()));
        for bad in [
            "",
            "0",
            "a:1",
            "1:2:3:4",
            "x:1:2",
            "70000:1",
            "224.0.0.1:8080:80",
            "255.255.255.255:8080:80",
            "[ff02::1]:8080:80",
            "8080:3128",
            "3128",
        ] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
        let all = |texts: &[&str]| {
            PortMapping::parse_all(&texts.iter().map(|text| text.to_string()).collect::<Vec<_>>())
                .map(|mappings| mappings.len())
                .map_err(|error| error.to_string())
        };
        assert_eq!(
            all(&["18704:8000", "0.0.0.0:18704:8000"]),
            Err("host port 0.0.0.0:18704 is forwarded twice: `18704:8000` and `0.0.0.0:18704:8000`".into())
        );
        assert!(all(&["[::]:9000:1", "127.0.0.2:9000:2"]).is_err());
        assert_eq!(all(&["127.0.0.1:9000:1", "127.0.0.2:9000:2", "127.0.0.1:9001:1"]), Ok(3));
        // The form right, the address not one: the address is named, not the form.
        let said = PortMapping::parse("999.0.0.1:8080:80").err().map(|error| error.to_string()).unwrap_or_default();
        assert_eq!(
            said,
            "`999.0.0.1` in `999.0.0.1:8080:80` is not an IP address: give one such as 127.0.0.1, 0.0.0.0 or [::1]"
        );
    }
}
