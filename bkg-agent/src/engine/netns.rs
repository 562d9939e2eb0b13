//! The agent's hand inside a sandbox's network namespace: one thread of the agent joins it and
//! makes what must belong to it (sockets, the TUN link); the rest of the agent never leaves its
//! own namespace. A socket keeps the namespace it was made in, so the agent's tasks use these
//! sockets from their own threads: the proxy listens on the sandbox's loopback, the port
//! forwarder connects to it, and nothing is configured on the host's network.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("join the sandbox's network namespace: {0}")]
    Join(io::Error),
    #[error("the network namespace worker is gone")]
    WorkerGone,
    #[error("{action}: {source}")]
    Io { action: &'static str, source: io::Error },
}

/// The sandbox's side of its link: it sends everything not on its loopback here.
pub const LINK_NAME: &str = "bkg0";
/// The sandbox's address on the link, and the gateway its default route names (nothing answers
/// there but the agent, which refuses).
pub const LINK_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 2);
pub const LINK_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 253, 0, 1);

type Job = Box<dyn FnOnce() + Send>;

/// A thread of the agent inside one sandbox's network namespace, running jobs until dropped.
pub struct NetnsWorker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl NetnsWorker {
    /// Joins the network namespace of `pid` (the sandbox's pid 1, the agent's child).
    pub fn enter(pid: i32) -> Result<Self, NetnsError> {
        let namespace = File::open(format!("/proc/{pid}/ns/net")).map_err(NetnsError::Join)?;
        let (jobs, inbox) = std::sync::mpsc::channel::<Job>();
        let (joined_tx, joined_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("bkg-netns".into())
            .spawn(move || {
                // Only this thread moves: setns(CLONE_NEWNET) is per thread, and the thread ends
                // when the worker is dropped, never going back to serve anything else.
                let joined = nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
                drop(namespace);
                let failed = joined.is_err();
                let _ = joined_tx.send(joined);
                if failed {
                    return;
                }
                while let Ok(job) = inbox.recv() {
                    job();
                }
            })
            .map_err(NetnsError::Join)?;
        joined_rx.recv().map_err(|_| NetnsError::WorkerGone)?.map_err(NetnsError::Join)?;
        Ok(Self { jobs })
    }

    /// Runs `job` in the namespace and returns what it gives.
    pub async fn call<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, NetnsError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(job());
            }))
            .map_err(|_| NetnsError::WorkerGone)?;
        answered.await.map_err(|_| NetnsError::WorkerGone)
    }

    /// A new TCP socket of the sandbox's namespace, not yet connected (the caller connects it
    /// from its own thread, so a full backlog in the sandbox never holds up the worker).
    pub async fn tcp_socket(&self) -> Result<tokio::net::TcpSocket, NetnsError> {
        let socket = self.call(tokio::net::TcpSocket::new_v4).await?;
        socket.map_err(|source| NetnsError::Io { action: "make a socket in the sandbox", source })
    }
}

fn check(result: libc::c_int, action: &'static str) -> Result<libc::c_int, NetnsError> {
    if result < 0 { Err(NetnsError::Io { action, source: io::Error::last_os_error() }) } else { Ok(result) }
}

fn sockaddr_v4(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(address).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; the kernel reads the
    // family to know which one it is.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn named_request(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

/// Makes the sandbox's link (to be called on the worker): a TUN device with an address and the
/// default route, so every packet not for its loopback reaches the agent, which reports and
/// refuses it. Returns the device's descriptor, non-blocking.
pub fn make_link() -> Result<OwnedFd, NetnsError> {
    let path = CString::new("/dev/net/tun").map_err(|_| NetnsError::WorkerGone)?;
    // SAFETY: a NUL-terminated path and flags; the descriptor is owned below.
    let raw = check(
        unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) },
        "open /dev/net/tun",
    )?;
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = named_request(LINK_NAME);
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq that lives through the call.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &request) }, "create the sandbox's link")?;

    // SAFETY: plain socket(2); owned below.
    let raw = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }, "socket")?;
    // SAFETY: as above.
    let control = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = named_request(LINK_NAME);
    request.ifr_ifru.ifru_addr = sockaddr_v4(LINK_ADDRESS);
    // SAFETY: each of these ioctls reads (or fills) an ifreq that lives through the call.
    check(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFADDR, &request) }, "address the link")?;
    request.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::new(255, 255, 255, 252));
    // SAFETY: as above.
    check(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFNETMASK, &request) }, "mask the link")?;
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above.
    check(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCSIFFLAGS, &request) }, "bring the link up")?;

    let mut device = CString::new(LINK_NAME).map_err(|_| NetnsError::WorkerGone)?.into_bytes_with_nul();
    // SAFETY: rtentry is plain data for which all zeroes is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_v4(LINK_GATEWAY);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    route.rt_dev = device.as_mut_ptr().cast();
    // SAFETY: SIOCADDRT reads the rtentry and the device name it points to, both alive here.
    check(unsafe { libc::ioctl(control.as_raw_fd(), libc::SIOCADDRT, &route) }, "route through the link")?;
    Ok(tun)
}
