//! systemd socket activation (sd_listen_fds(3)): when systemd made the socket
//! (packaging/deb/bkg-agent.socket, with its group and mode), the agent serves the listening
//! socket it was handed as fd 3 instead of binding `--socket` itself. Without LISTEN_PID naming
//! this process nothing changes: the agent binds `--socket` as before.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockType, SockaddrLike, UnixAddr, getsockname, getsockopt, sockopt};

/// SD_LISTEN_FDS_START: the first descriptor systemd passes.
const FIRST_PASSED_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors")]
    BadCount(String),
    #[error(
        "systemd passed {0} sockets; the agent serves exactly one unix socket (one ListenStream= in the .socket unit)"
    )]
    NotOne(usize),
    #[error("the socket systemd passed (fd 3) is not a listening unix stream socket: {0}")]
    NotUnixListener(String),
    #[error("the socket systemd passed (fd 3): {0}")]
    Descriptor(#[from] nix::Error),
}

/// A listening socket made by systemd, and the path it is bound to.
#[derive(Debug)]
pub struct Activated {
    pub listener: UnixListener,
    pub path: PathBuf,
}

/// How many descriptors LISTEN_PID and LISTEN_FDS hand to the process `own_pid`: none when
/// they are absent or name another process (a parent that was activated and did not clear them).
fn passed_count(listen_pid: Option<&str>, listen_fds: Option<&str>, own_pid: u32) -> Result<usize, ActivationError> {
    let Some(pid) = listen_pid else { return Ok(0) };
    if pid.trim().parse::<u32>().ok() != Some(own_pid) {
        return Ok(0);
    }
    let Some(count) = listen_fds else { return Ok(0) };
    count.trim().parse::<usize>().map_err(|_| ActivationError::BadCount(count.to_owned()))
}

/// The socket systemd handed this process, if it handed one. Called once, at start-up.
pub fn take_passed_socket() -> Result<Option<Activated>, ActivationError> {
    let listen_pid = std::env::var("LISTEN_PID").ok();
    let listen_fds = std::env::var("LISTEN_FDS").ok();
    match passed_count(listen_pid.as_deref(), listen_fds.as_deref(), std::process::id())? {
        0 => Ok(None),
        1 => {
            // SAFETY: sd_listen_fds(3): with LISTEN_PID naming this process and LISTEN_FDS=1,
            // fd 3 is open and handed to it; nothing else in the agent opens or owns fd 3 by
            // number, and this runs once at start-up, so ownership is taken exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(FIRST_PASSED_FD) };
            listener_from_fd(fd).map(Some)
        }
        count => Err(ActivationError::NotOne(count)),
    }
}

/// Checks that `fd` is a listening unix stream socket bound to a path, and makes it the
/// agent's: close-on-exec (the sandboxes' init is a child) and non-blocking (for tokio).
pub fn listener_from_fd(fd: OwnedFd) -> Result<Activated, ActivationError> {
    let address: UnixAddr = getsockname(fd.as_raw_fd())?;
    if address.family() != Some(AddressFamily::Unix) {
        return Err(ActivationError::NotUnixListener("not a unix socket".into()));
    }
    if getsockopt(&fd, sockopt::SockType)? != SockType::Stream {
        return Err(ActivationError::NotUnixListener("not a stream socket".into()));
    }
    if !getsockopt(&fd, sockopt::AcceptConn)? {
        return Err(ActivationError::NotUnixListener("not listening".into()));
    }
    let path = address
        .path()
        .map(PathBuf::from)
        .ok_or_else(|| ActivationError::NotUnixListener("not bound to a path".into()))?;
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let listener = UnixListener::from(fd);
    listener.set_nonblocking(true).map_err(|error| ActivationError::NotUnixListener(error.to_string()))?;
    Ok(Activated { listener, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixDatagram, UnixStream};

    #[test]
    fn the_variables_count_only_for_the_process_they_name() -> Result<(), ActivationError> {
        assert_eq!(passed_count(None, None, 42)?, 0);
        assert_eq!(passed_count(Some("42"), Some("1"), 42)?, 1);
        assert_eq!(passed_count(Some("42"), Some("2"), 42)?, 2);
        assert_eq!(passed_count(Some("41"), Some("1"), 42)?, 0, "meant for another process");
        assert_eq!(passed_count(Some("42"), None, 42)?, 0);
        assert!(matches!(passed_count(Some("42"), Some("one"), 42), Err(ActivationError::BadCount(_))));
        Ok(())
    }

    #[test]
    fn a_listening_unix_socket_is_served_from_its_descriptor() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("agent.sock");
        let made_by_systemd = UnixListener::bind(&path)?;
        let activated = listener_from_fd(OwnedFd::from(made_by_systemd))?;
        assert_eq!(activated.path, path);
        let flags = fcntl(&activated.listener, FcntlArg::F_GETFD)?;
        assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC), "children must not inherit it");

        let mut client = UnixStream::connect(&path)?;
        client.write_all(b"ping")?;
        activated.listener.set_nonblocking(false)?;
        let (mut served, _) = activated.listener.accept()?;
        let mut received = [0u8; 4];
        served.read_exact(&mut received)?;
        assert_eq!(&received, b"ping");
        Ok(())
    }

    #[test]
    fn other_descriptors_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let datagram = UnixDatagram::bind(dir.path().join("datagram.sock"))?;
        assert!(matches!(listener_from_fd(OwnedFd::from(datagram)), Err(ActivationError::NotUnixListener(_))));

        let (connected, _peer) = UnixStream::pair()?;
        assert!(listener_from_fd(OwnedFd::from(connected)).is_err(), "a connected, unbound stream");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        assert!(listener_from_fd(OwnedFd::from(tcp)).is_err(), "a TCP listener");

        let file = std::fs::File::create(dir.path().join("file"))?;
        assert!(matches!(listener_from_fd(OwnedFd::from(file)), Err(ActivationError::Descriptor(_))));
        Ok(())
    }
}
