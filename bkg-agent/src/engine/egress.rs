//! A run's network, enforced from outside its sandbox (docs/security.md, "Egress"). A sandbox
//! given hosts gets two things in its network namespace, both made by the agent's netns worker
//! (`netns.rs`): a proxy listening on its loopback (`HTTP(S)_PROXY`), which allows by host
//! name (the CONNECT target, or the absolute URL of a plain HTTP request), resolves names itself
//! and connects from the agent, never to an internal address an admin did not name; and a TUN
//! link carrying its default route, on which the agent reads every other packet (a TCP
//! connection to an address, UDP), reports it as a denial and refuses it (a reset, an ICMP
//! port-unreachable). Forwarded ports are the other way round: a listener on the host whose
//! connections the agent opens to the sandbox's loopback.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bkg_schema::egress::{
    HOST_ALIAS, NetRule, NetworkDenial, PROXY_PORT, PROXY_VARIABLES, PortMapping, Transport, is_internal,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::netns::{NetnsError, NetnsWorker, make_link};

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("host port {host} cannot be used: {source}: {}", port_fix(source))]
    PortTaken { host: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What to do about a host port that cannot be bound: an address this host does not have is no
/// port to free (found by a new-user trial: `1.2.3.4:8000` was told "free it").
fn port_fix(source: &std::io::Error) -> &'static str {
    match source.kind() {
        std::io::ErrorKind::AddrNotAvailable => {
            "the address is not one of this host's: forward a port of one it has (127.0.0.1, 0.0.0.0 for all) \
             (`ports:` in cave.yaml, `bkg exe -p`)"
        }
        _ => "free it, or forward another host port (`ports:` in cave.yaml, `bkg exe -p`)",
    }
}

/// What a run may reach and which host ports lead into it, checked against the policy.
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    /// The run's rules; empty: no network beyond the forwarded ports.
    pub allow: Vec<NetRule>,
    /// The agent's `--egress-allow`: the internal addresses it names are the only ones reachable.
    pub policy: Arc<Vec<NetRule>>,
    pub ports: Vec<PortMapping>,
}

/// The environment that sends a sandbox's HTTP clients to its proxy: each of
/// `PROXY_VARIABLES`, the `NO_PROXY` ones naming the sandbox's own loopback.
pub fn proxy_env() -> Vec<(String, String)> {
    let proxy = format!("http://127.0.0.1:{PROXY_PORT}");
    let local = "localhost,127.0.0.1,::1";
    PROXY_VARIABLES
        .iter()
        .map(|name| {
            let value = if name.eq_ignore_ascii_case("NO_PROXY") { local.to_owned() } else { proxy.clone() };
            ((*name).to_owned(), value)
        })
        .collect()
}

/// The most distinct denials one run keeps (each with its count).
const MAX_DENIALS: usize = 100;
/// How long a proxy client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request head the proxy reads.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How long connecting to an allowed host may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections refused during one run, each destination once with its count.
#[derive(Default)]
pub struct Denials(Mutex<Vec<NetworkDenial>>);

impl Denials {
    fn note(&self, transport: Transport, destination: String, reason: &str) {
        tracing::info!(transport = transport.as_str(), %destination, reason, "egress refused");
        let Ok(mut denials) = self.0.lock() else { return };
        if let Some(seen) =
            denials.iter_mut().find(|denial| denial.transport == transport && denial.destination == destination)
        {
            seen.count = seen.count.saturating_add(1);
        } else if denials.len() < MAX_DENIALS {
            denials.push(NetworkDenial { transport, destination, reason: reason.to_owned(), count: 1 });
        }
    }

    fn take(&self) -> Vec<NetworkDenial> {
        self.0.lock().map(|mut denials| std::mem::take(&mut *denials)).unwrap_or_default()
    }
}

/// A run's network while it runs; `finish` (or drop) ends it.
pub struct NetworkSession {
    worker: Arc<NetnsWorker>,
    denials: Arc<Denials>,
    tasks: Vec<JoinHandle<()>>,
}

impl NetworkSession {
    /// Opens the forwarded ports on the host (first, so a taken port fails the run before the
    /// sandbox is touched), then the proxy and the link in the sandbox of pid `pid`.
    pub async fn open(plan: &NetworkPlan, pid: i32) -> Result<Self, EgressError> {
        let mut listeners = Vec::new();
        for mapping in &plan.ports {
            let host = SocketAddr::new(mapping.address, mapping.host_port);
            let listener = TcpListener::bind(host).await.map_err(|source| EgressError::PortTaken { host, source })?;
            listeners.push((listener, mapping.sandbox_port));
        }
        let worker = Arc::new(NetnsWorker::enter(pid)?);
        let denials = Arc::new(Denials::default());
        let mut tasks = Vec::new();
        for (listener, sandbox_port) in listeners {
            tasks.push(tokio::spawn(forward(listener, Arc::clone(&worker), sandbox_port)));
        }
        if !plan.allow.is_empty() {
            let bound = worker.call(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT))).await?;
            let proxy = bound
                .and_then(|listener| {
                    listener.set_nonblocking(true)?;
                    TcpListener::from_std(listener)
                })
                .map_err(|source| NetnsError::Io { action: "listen for the sandbox's proxy", source })?;
            let link = worker.call(make_link).await??;
            // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped,
            // after it is deregistered.
            let link = unsafe { AsyncFd::register(link) }
                .map_err(|error| NetnsError::Io { action: "watch the link", source: error.into() })?;
            let context = Arc::new(ProxyContext {
                allow: plan.allow.clone(),
                policy: Arc::clone(&plan.policy),
                host_addresses: host_addresses(),
                denials: Arc::clone(&denials),
            });
            tasks.push(tokio::spawn(serve_proxy(proxy, context)));
            tasks.push(tokio::spawn(refuse_on_link(link, Arc::clone(&denials))));
        }
        Ok(Self { worker, denials, tasks })
    }

    /// The worker in the sandbox's namespace, for health probes while the run goes on.
    pub fn worker(&self) -> Arc<NetnsWorker> {
        Arc::clone(&self.worker)
    }

    /// Closes everything and returns what was refused.
    pub fn finish(self) -> Vec<NetworkDenial> {
        self.denials.take()
    }
}

impl Drop for NetworkSession {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether the sandbox of `worker` accepts TCP connections on `port` of its loopback now.
pub async fn accepts(worker: &NetnsWorker, port: u16) -> bool {
    let Ok(socket) = worker.tcp_socket().await else { return false };
    let connect = socket.connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    matches!(tokio::time::timeout(Duration::from_secs(2), connect).await, Ok(Ok(_)))
}

/// Forwards each connection to `listener` to `sandbox_port` on the sandbox's loopback.
async fn forward(listener: TcpListener, worker: Arc<NetnsWorker>, sandbox_port: u16) {
    // Dropped with this task, which aborts every connection it carries.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let worker = Arc::clone(&worker);
                connections.spawn(async move {
                    let Ok(socket) = worker.tcp_socket().await else { return };
                    let inside = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sandbox_port);
                    if let Ok(mut sandbox) = socket.connect(inside).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut sandbox).await;
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

struct ProxyContext {
    allow: Vec<NetRule>,
    policy: Arc<Vec<NetRule>>,
    host_addresses: HashSet<IpAddr>,
    denials: Arc<Denials>,
}

/// Why a name on the list got no connection: not a refusal by the policy, so the proxy answers
/// it as a gateway's failure (502), as one that does not connect.
const UNRESOLVED: &str = "the name does not resolve";

impl ProxyContext {
    /// Where a request for `host`:`port` may go, or why not.
    async fn decide(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, &'static str> {
        if !self.allow.iter().any(|rule| rule.matches(host, port)) {
            return Err(if host.parse::<IpAddr>().is_ok() {
                "an address, not a host name on the allow list"
            } else {
                "not on the allow list"
            });
        }
        if host == HOST_ALIAS {
            return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]);
        }
        let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, port)],
            Err(_) => match tokio::net::lookup_host((host, port)).await {
                Ok(found) => found.collect(),
                Err(_) => return Err(UNRESOLVED),
            },
        };
        let reachable: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| {
                let ip = address.ip();
                let internal = is_internal(ip) || self.host_addresses.contains(&ip);
                !internal || self.policy.iter().any(|rule| rule.names_address(ip, port))
            })
            .collect();
        if reachable.is_empty() {
            return Err("it resolves to an internal address the agent's policy does not name");
        }
        Ok(reachable)
    }
}

/// How many connections one run's proxy serves at once; one more is closed as it comes. Each
/// holds two of the agent's descriptors (found by a new-user trial: a run that opened thousands
/// took all of them, and the agent could accept no other caller until it ended).
const PROXY_CONNECTIONS: usize = 128;

async fn serve_proxy(listener: TcpListener, context: Arc<ProxyContext>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if clients.len() >= PROXY_CONNECTIONS {
                    drop(client);
                    continue;
                }
                clients.spawn(proxy_one(client, Arc::clone(&context)));
            }
            Some(_) = clients.join_next() => {}
        }
    }
}

/// A request head as the proxy read it, with any bytes the client sent after it.
struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<String>,
    rest: Vec<u8>,
}

async fn read_head(client: &mut TcpStream) -> Option<Head> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let read = client.read(&mut chunk).await.ok().filter(|read| *read > 0)?;
        bytes.extend_from_slice(&chunk[..read]);
        if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        if bytes.len() > MAX_HEAD_BYTES {
            return None;
        }
    };
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
    let mut request_line = lines.next()?.split(' ');
    let (method, target, version) = (request_line.next()?, request_line.next()?, request_line.next()?);
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers: lines.map(str::to_owned).collect(),
        rest: bytes[end..].to_vec(),
    })
}

/// `host:port` (or `[v6]:port`) with the port defaulting to `default_port`.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    let host = host.to_ascii_lowercase();
    Some((host.strip_suffix('.').unwrap_or(&host).to_owned(), port))
}

async fn answer(client: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
}

async fn proxy_one(mut client: TcpStream, context: Arc<ProxyContext>) {
    let Ok(Some(head)) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await else { return };
    let tunnel = head.method.eq_ignore_ascii_case("CONNECT");
    let destination = if tunnel {
        split_authority(&head.target, 443).map(|(host, port)| (host, port, String::new()))
    } else {
        head.target.strip_prefix("http://").and_then(|rest| {
            let (authority, path) = rest.find('/').map_or((rest, "/"), |slash| (&rest[..slash], &rest[slash..]));
            split_authority(authority, 80).map(|(host, port)| (host, port, path.to_owned()))
        })
    };
    let Some((host, port, path)) = destination else {
        answer(&mut client, "400 Bad Request", "bkg: the proxy takes CONNECT or absolute http:// requests\n").await;
        return;
    };
    let shown = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let addresses = match context.decide(&host, port).await {
        Ok(addresses) => addresses,
        Err(reason) => {
            context.denials.note(Transport::Proxy, shown.clone(), reason);
            match reason {
                UNRESOLVED => answer(&mut client, "502 Bad Gateway", &format!("bkg: {shown}: {reason}\n")).await,
                _ => answer(&mut client, "403 Forbidden", &format!("bkg: egress to {shown} refused: {reason}\n")).await,
            }
            return;
        }
    };
    let mut upstream = None;
    for address in addresses {
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            upstream = Some(stream);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        answer(&mut client, "502 Bad Gateway", &format!("bkg: {shown} did not accept the connection\n")).await;
        return;
    };
    if tunnel {
        if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_err() {
            return;
        }
    } else {
        // One request per connection: a second one on it could name another host.
        let mut forwarded = format!("{} {path} {}\r\n", head.method, head.version);
        for header in &head.headers {
            let name = header.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
            if !matches!(name.as_str(), "connection" | "proxy-connection" | "proxy-authorization" | "keep-alive") {
                forwarded.push_str(header);
                forwarded.push_str("\r\n");
            }
        }
        forwarded.push_str("Connection: close\r\n\r\n");
        if upstream.write_all(forwarded.as_bytes()).await.is_err() {
            return;
        }
    }
    if upstream.write_all(&head.rest).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// The host's own addresses: never reachable through the proxy unless an admin names them.
fn host_addresses() -> HashSet<IpAddr> {
    let mut found = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs made, alive until freeifaddrs.
        let node = unsafe { &*entry };
        if !node.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*node.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let inet = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in>() };
                found.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(inet.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let inet6 = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in6>() };
                found.insert(IpAddr::V6(std::net::Ipv6Addr::from(inet6.sin6_addr.s6_addr)));
            }
        }
        entry = node.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// Reads what the sandbox sends on its link: every packet is a connection past the proxy.
/// Each is reported and refused at once, so the code sees an error instead of waiting.
async fn refuse_on_link(link: AsyncFd<OwnedFd>, denials: Arc<Denials>) {
    let mut packet = vec![0u8; 65_536];
    loop {
        let Ok(mut ready) = link.readable().await else { return };
        let read = ready.try_io(|fd| {
            // SAFETY: reads into our buffer, at most its length.
            let read = unsafe { libc::read(fd.as_raw_fd(), packet.as_mut_ptr().cast(), packet.len()) };
            if read < 0 { Err(std::io::Error::last_os_error()) } else { Ok(read as usize) }
        });
        let length = match read {
            Ok(Ok(length)) => length,
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        };
        if let Some(reply) = refuse(&packet[..length], &denials) {
            // SAFETY: writes our reply buffer to the device; a lost reply only delays an error.
            let _ = unsafe { libc::write(link.get_ref().as_raw_fd(), reply.as_ptr().cast(), reply.len()) };
        }
    }
}

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// Notes the denial a packet stands for and builds its refusal: a TCP reset for a connection
/// attempt, an ICMP port-unreachable for UDP. Other packets get nothing.
fn refuse(packet: &[u8], denials: &Denials) -> Option<Vec<u8>> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let header_length = usize::from(packet[0] & 0x0f) * 4;
    let protocol = packet[9];
    let source: [u8; 4] = packet[12..16].try_into().ok()?;
    let destination: [u8; 4] = packet[16..20].try_into().ok()?;
    let payload = packet.get(header_length..)?;
    let port = u16::from_be_bytes(payload.get(2..4)?.try_into().ok()?);
    let shown = format!("{}:{port}", Ipv4Addr::from(destination));
    match protocol {
        TCP if payload.len() >= 20 => {
            let flags = payload[13];
            let (syn, ack, rst) = (flags & 0x02 != 0, flags & 0x10 != 0, flags & 0x04 != 0);
            if !syn || ack || rst {
                return None;
            }
            denials.note(Transport::Tcp, shown, "a connection to an address, past the proxy");
            let their_seq = u32::from_be_bytes(payload[4..8].try_into().ok()?);
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&payload[2..4]);
            tcp[2..4].copy_from_slice(&payload[0..2]);
            tcp[8..12].copy_from_slice(&their_seq.wrapping_add(1).to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x14; // RST, ACK
            let mut pseudo = Vec::with_capacity(32);
            pseudo.extend_from_slice(&destination);
            pseudo.extend_from_slice(&source);
            pseudo.extend_from_slice(&[0, TCP, 0, 20]);
            pseudo.extend_from_slice(&tcp);
            let sum = checksum(&pseudo);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            Some(ipv4(destination, source, TCP, &tcp))
        }
        UDP => {
            denials.note(Transport::Udp, shown, "UDP does not leave a sandbox");
            let quoted = &packet[..(header_length + 8).min(packet.len())];
            let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0]; // destination unreachable, port unreachable
            icmp.extend_from_slice(quoted);
            let sum = checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            Some(ipv4(destination, source, ICMP, &icmp))
        }
        _ => None,
    }
}

fn ipv4(source: [u8; 4], destination: [u8; 4], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut packet = vec![0x45, 0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol, 0, 0]);
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&destination);
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|pair| u32::from(u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_is_answered_with_a_reset_and_noted() {
        let denials = Denials::default();
        let mut syn = ipv4([10, 253, 0, 2], [1, 1, 1, 1], TCP, &{
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
            tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x02;
            tcp
        });
        let reply = refuse(&syn, &denials).expect("a reset");
        assert_eq!(checksum(&reply[..20]), 0, "IP header checksum");
        assert_eq!(&reply[12..16], &[1, 1, 1, 1]);
        assert_eq!(reply[20 + 13], 0x14);
        assert_eq!(&reply[20 + 8..20 + 12], &8u32.to_be_bytes());
        syn[20 + 13] = 0x10; // a bare ACK is not a new connection
        assert!(refuse(&syn, &denials).is_none());
        assert_eq!(
            denials.take(),
            vec![NetworkDenial {
                transport: Transport::Tcp,
                destination: "1.1.1.1:443".into(),
                reason: "a connection to an address, past the proxy".into(),
                count: 1,
            }]
        );
    }

    #[test]
    fn authorities() {
        assert_eq!(split_authority("Example.com:8443", 443), Some(("example.com".into(), 8443)));
        assert_eq!(split_authority("example.com", 80), Some(("example.com".into(), 80)));
        assert_eq!(split_authority("[::1]:80", 443), Some(("::1".into(), 80)));
        assert_eq!(split_authority("a:b", 80), None);
    }
}
