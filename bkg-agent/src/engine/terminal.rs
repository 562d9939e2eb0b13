//! The agent's end of a run's pseudo-terminal: the master pid 1 opened in the sandbox's own
//! devpts and passed over the control socket (engine/init.rs, `open_terminal`). The agent reads
//! the screen's output from it, writes the caller's keys into it and sets its size; the line
//! discipline inside turns Ctrl-C into SIGINT and a new size into SIGWINCH.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use bkg_schema::terminal::TerminalSize;
use tokio::io::unix::AsyncFd;

/// A pseudo-terminal master, non-blocking, shared by the reader (the run's watch) and the
/// writer (the task that feeds it the caller's input).
#[derive(Clone)]
pub struct TerminalMaster(Arc<AsyncFd<OwnedFd>>);

impl TerminalMaster {
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the AsyncFd owns `master` (an OwnedFd), which stays open and the same
        // descriptor until the AsyncFd drops it.
        let registered = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Self(Arc::new(registered)))
    }

    /// Reads what the code wrote; 0 once every slave is closed (the kernel answers EIO then).
    pub async fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), buffer).map_err(io::Error::from)) {
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes` as the terminal's input, waiting while the code does not read.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let mut ready = self.0.writable().await?;
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), bytes).map_err(io::Error::from)) {
                Ok(Ok(written)) => bytes = &bytes[written..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Hangs the terminal up as one that closes is hung up (`TIOCVHANGUP` on its other end): the
    /// kernel sends its session SIGHUP and SIGCONT, and a read of it ends, which wakes a shell
    /// waiting for a key. A SIGHUP alone that came while bash was between two commands only set
    /// its flag, and bash then waited for input through the whole grace (found as a flaky test,
    /// `terminals::a_shell_whose_client_is_gone_is_hung_up`: bash 5.2 in `pselect` of its
    /// terminal, killed 5 s later).
    pub fn hang_up(&self) -> io::Result<()> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor of the terminal's
        // other end (opened through the master's own devpts, no path), or -1.
        let peer = unsafe { libc::ioctl(self.0.get_ref().as_raw_fd(), libc::TIOCGPTPEER, flags) };
        if peer < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor was just returned to us and is owned by nothing else.
        let peer = unsafe { OwnedFd::from_raw_fd(peer) };
        // SAFETY: TIOCVHANGUP takes no argument.
        if unsafe { libc::ioctl(peer.as_raw_fd(), libc::TIOCVHANGUP) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives the terminal a new size; the kernel signals its foreground process group.
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        let winsize = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize struct, valid for the call, from the pointer.
        if unsafe { libc::ioctl(self.0.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &winsize) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
