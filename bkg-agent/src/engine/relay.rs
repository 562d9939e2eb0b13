//! The only network of an install sandbox: its package index. For each host and port the index
//! needs, the agent opens a listener inside the sandbox's own network namespace (on its
//! loopback, at the address the sandbox's /etc/hosts gives that host) and relays each connection
//! to that host and port, connected from the agent's side. TLS passes through untouched. The
//! sandbox can reach nothing else: its namespace has no other interface, and the agent connects
//! only to the targets named here. (Run sandboxes get no relay; their egress is a policy of its
//! own.)

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use tokio::task::{JoinHandle, JoinSet};

use super::EngineError;

/// One upstream the sandbox may reach, and where it reaches it inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// The host name or address the agent connects to.
    pub host: String,
    pub port: u16,
    /// The loopback address the sandbox connects to (`127.0.0.1` for an index on this host's
    /// loopback, so its URL works unchanged; `127.0.0.N` for a name, via /etc/hosts).
    pub inside: Ipv4Addr,
}

/// Relays running until dropped.
pub struct Relay {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens every target's listener in the network namespace of `pid_one` (a sandbox's pid 1) and
/// starts relaying. A target that cannot be reached is said once on `told` (the install's own
/// output): the installer inside sees only a connection closed, and blames TLS or a proxy.
pub fn open(
    pid_one: nix::unistd::Pid,
    targets: &[RelayTarget],
    told: Option<tokio::sync::mpsc::Sender<super::run::RunOutput>>,
) -> Result<Relay, EngineError> {
    let addresses: Vec<(Ipv4Addr, u16)> = targets.iter().map(|target| (target.inside, target.port)).collect();
    // setns applies to the calling thread only: a thread of its own enters the namespace, binds,
    // and ends; the sockets stay in the namespace they were made in.
    let listeners = std::thread::spawn(move || -> std::io::Result<Vec<std::net::TcpListener>> {
        let namespace = std::fs::File::open(format!("/proc/{pid_one}/ns/net"))?;
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        addresses
            .into_iter()
            .map(|address| {
                let listener = std::net::TcpListener::bind(address)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .collect()
    })
    .join()
    .map_err(|_| EngineError::io("open the package index relay")(std::io::Error::other("its thread panicked")))?
    .map_err(EngineError::io("open the package index relay in the sandbox"))?;

    let mut tasks = Vec::new();
    for (listener, target) in listeners.into_iter().zip(targets) {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(EngineError::io("register the relay"))?;
        tasks.push(tokio::spawn(serve(listener, target.host.clone(), target.port, told.clone())));
    }
    Ok(Relay { tasks })
}

/// Accepts the sandbox's connections and joins each to a new one to the target. Ends (with every
/// connection) when its task is aborted.
async fn serve(
    listener: tokio::net::TcpListener,
    host: String,
    port: u16,
    told: Option<tokio::sync::mpsc::Sender<super::run::RunOutput>>,
) {
    let mut connections = JoinSet::new();
    let said = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let Ok((mut inside, _)) = listener.accept().await else { return };
        let (host, told, said) = (host.clone(), told.clone(), std::sync::Arc::clone(&said));
        connections.spawn(async move {
            match tokio::net::TcpStream::connect((host.as_str(), port)).await {
                Ok(mut outside) => {
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                }
                Err(error) => {
                    tracing::warn!(%host, port, %error, "the package index is unreachable");
                    if let Some(told) = told
                        && !said.swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        let line =
                            format!("the agent cannot reach {host}:{port}, where its packages come from: {error}");
                        let _ = told.try_send(super::run::RunOutput::Progress(line));
                    }
                }
            }
        });
        // Finished connections are collected as new ones come.
        while connections.try_join_next().is_some() {}
    }
}
