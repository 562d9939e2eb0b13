//! Messages between the agent and a sandbox's init over their private socket pair:
//! `[length: u32 big-endian][JSON]`, one message at a time.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::AsyncWriteExt;

use super::plan::SandboxPlan;

/// The init finds its control socket here.
pub const CONTROL_FD: i32 = 3;

/// No message comes near this; a longer one means a confused or hostile peer.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToInit {
    Prepare(Box<SandboxPlan>),
    Go(GoOrder),
}

/// What to run, sent when a prepared sandbox is claimed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoOrder {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub files: Vec<PlacedFile>,
    /// Directories to empty before the code starts.
    pub clear: Vec<String>,
    /// Directories to make (the sandbox user's) before the code starts; paths as for `files`.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Keep pid 1, and so the sandbox's mounts, after the code has ended, until the agent kills
    /// it: the agent still reads the sandbox's files.
    #[serde(default)]
    pub hold_after_exit: bool,
    /// How many CPUs the code may run on: its CPU limit rounded up. The init pins the code to
    /// that many of its own CPUs and shows only those as online (engine/init.rs, `pin_cpus`).
    pub cpus: usize,
    /// Run the code on a pseudo-terminal of this size instead of pipes: pid 1 opens it in the
    /// sandbox's own devpts and hands the agent its master (`FromInit::Terminal`).
    #[serde(default)]
    pub terminal: Option<bkg_schema::terminal::TerminalSize>,
    /// The code's stderr is its stdout's pipe (`RunRequest::stderr_to_stdout`).
    #[serde(default)]
    pub stderr_to_stdout: bool,
}

/// A file the init writes into the sandbox before the code starts. Paths were validated by the
/// agent: absolute, under /workspace or /tmp, no `..`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacedFile {
    pub path: String,
    pub content_base64: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromInit {
    /// The sandbox's pid 1 exists, as the agent's child, with this host pid.
    Forked { pid: i32 },
    /// The sandbox is built and waits for `Go`; its disk is attached to this loop device
    /// (`/dev/loopN`), which the agent watches for its release once the sandbox is gone.
    Ready { disk_device: PathBuf },
    /// The code's pseudo-terminal: its master comes with this message (`SCM_RIGHTS`), read
    /// with [`ControlSocket::read_with_fd`].
    Terminal,
    /// The code was started; `prestarted`: by the interpreter pid 1 had started ahead
    /// (engine/prestart.rs), `from_zygote`: one the zygote forked (engine/zygote.rs).
    Running { prestarted: bool, from_zygote: bool },
    /// The code could not be executed; `errno` from execve.
    ExecFailed { errno: i32 },
    /// The code ended. `denied_syscalls`: how often each system call number was refused by
    /// the seccomp policy (pid 1 answers the refusals, engine/denials.rs).
    Exited {
        exit_code: Option<i32>,
        signal: Option<i32>,
        disk_used_bytes: u64,
        disk_full: bool,
        #[serde(default)]
        denied_syscalls: Vec<(i64, u64)>,
    },
    /// Building the sandbox failed at `stage`.
    Failed { stage: String, message: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("control message of {0} bytes is too long")]
    TooLong(usize),
    #[error("control message: {0}")]
    Passing(#[from] nix::errno::Errno),
}

/// `message` as a frame: its length (u32, big-endian), then its JSON.
fn frame_of<T: Serialize>(message: &T) -> Result<Vec<u8>, ControlError> {
    let body = serde_json::to_vec(message)?;
    let len = u32::try_from(body.len()).map_err(|_| ControlError::TooLong(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

pub fn write_blocking<T: Serialize>(stream: &mut impl Write, message: &T) -> Result<(), ControlError> {
    stream.write_all(&frame_of(message)?)?;
    Ok(())
}

pub fn read_blocking<T: DeserializeOwned>(stream: &mut impl Read) -> Result<T, ControlError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(ControlError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Writes `message` with `fd` attached to its first byte (`SCM_RIGHTS`), in one `sendmsg`.
pub fn write_with_fd_blocking<T: Serialize>(
    stream: &mut std::os::unix::net::UnixStream,
    message: &T,
    fd: RawFd,
) -> Result<(), ControlError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let frame = frame_of(message)?;
    let fds = [fd];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(&frame)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    // The descriptor went with the first byte; the rest, if the kernel took less, follows plainly.
    stream.write_all(&frame[sent..])?;
    Ok(())
}

/// Reads one message like [`read_blocking`], and the descriptor that came with it, if any.
pub fn read_with_fd_blocking<T: DeserializeOwned>(
    stream: &std::os::unix::net::UnixStream,
) -> Result<(T, Option<OwnedFd>), ControlError> {
    let mut frame = FrameWithFd::default();
    while let Some(missing) = frame.missing() {
        let mut chunk = vec![0u8; missing];
        let (read, fd) = recv_with_fd(stream.as_raw_fd(), &mut chunk)?;
        frame.take(&chunk[..read], fd)?;
    }
    frame.finish()
}

/// One message being read in pieces that may carry a descriptor: its length, then its body.
#[derive(Default)]
struct FrameWithFd {
    frame: Vec<u8>,
    /// The body's length, once the first four bytes are in.
    body: Option<usize>,
    fd: Option<OwnedFd>,
}

impl FrameWithFd {
    /// How many bytes are still to come, if any.
    fn missing(&self) -> Option<usize> {
        let wanted = 4 + self.body.unwrap_or(0);
        (self.frame.len() < wanted).then(|| wanted - self.frame.len())
    }

    fn take(&mut self, chunk: &[u8], fd: Option<OwnedFd>) -> Result<(), ControlError> {
        if chunk.is_empty() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if let Some(fd) = fd {
            self.fd = Some(fd);
        }
        self.frame.extend_from_slice(chunk);
        if self.body.is_none() && self.frame.len() == 4 {
            let len = u32::from_be_bytes([self.frame[0], self.frame[1], self.frame[2], self.frame[3]]) as usize;
            if len > MAX_MESSAGE {
                return Err(ControlError::TooLong(len));
            }
            self.body = Some(len);
        }
        Ok(())
    }

    fn finish<T: DeserializeOwned>(self) -> Result<(T, Option<OwnedFd>), ControlError> {
        Ok((serde_json::from_slice(&self.frame[4..])?, self.fd))
    }
}

/// One `recvmsg`: the bytes read and a descriptor passed with them.
fn recv_with_fd(socket: RawFd, buffer: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let message =
        recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(std::io::Error::from)?;
    let mut fd = None;
    for control in message.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            for raw in fds {
                // SAFETY: the kernel just installed this descriptor in our table for us; nothing
                // else owns it. Extra ones (a confused peer) are closed as they drop.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                fd.get_or_insert(owned);
            }
        }
    }
    Ok((message.bytes, fd))
}

/// The agent's end of a sandbox's control socket. Its reads are cancel-safe: a message read in
/// part when its future is dropped (in a `select!` another branch won) stays here, and the next
/// read finishes it. Found by CI: the run watcher's `select!` dropped a read between a message's
/// length and its body while the code's output flooded in, read the body as the next length, and
/// took the sandbox for gone ("killed from outside the agent").
pub struct ControlSocket {
    stream: tokio::net::UnixStream,
    /// The message being read, as far as it has come.
    partial: FrameWithFd,
}

impl ControlSocket {
    pub fn new(stream: tokio::net::UnixStream) -> Self {
        Self { stream, partial: FrameWithFd::default() }
    }

    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<(), ControlError> {
        self.stream.write_all(&frame_of(message)?).await?;
        Ok(())
    }

    /// Reads one message (a descriptor sent with it is closed).
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, ControlError> {
        Ok(self.read_with_fd().await?.0)
    }

    /// Reads one message and the descriptor that came with it, if any.
    pub async fn read_with_fd<T: DeserializeOwned>(&mut self) -> Result<(T, Option<OwnedFd>), ControlError> {
        while let Some(missing) = self.partial.missing() {
            // Not the whole of a long message at once: this runs again at each poll.
            let mut chunk = vec![0u8; missing.min(64 * 1024)];
            let stream = &self.stream;
            let (read, fd) =
                stream.async_io(tokio::io::Interest::READABLE, || recv_with_fd(stream.as_raw_fd(), &mut chunk)).await?;
            // No await between the read and keeping what it read: cancelled, nothing is lost.
            self.partial.take(&chunk[..read], fd)?;
        }
        std::mem::take(&mut self.partial).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn messages_round_trip_over_a_byte_stream() {
        let mut wire = Vec::new();
        let sent = FromInit::Exited {
            exit_code: Some(3),
            signal: None,
            disk_used_bytes: 4096,
            disk_full: false,
            denied_syscalls: vec![(101, 2)],
        };
        write_blocking(&mut wire, &sent).unwrap_or_default();
        let received: FromInit =
            read_blocking(&mut wire.as_slice()).unwrap_or(FromInit::Running { prestarted: true, from_zygote: false });
        assert_eq!(received, sent);
    }

    #[test]
    fn a_truncated_message_is_an_error() {
        let mut wire = Vec::new();
        write_blocking(&mut wire, &FromInit::Running { prestarted: false, from_zygote: false }).unwrap_or_default();
        wire.pop();
        assert!(read_blocking::<FromInit>(&mut wire.as_slice()).is_err());
    }

    /// The run watcher reads pid 1's messages in a `select!` beside the code's output: a read
    /// dropped after a message's length came in must not lose it.
    #[test]
    fn a_read_dropped_halfway_through_a_message_is_finished_by_the_next() -> Result<(), Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let (agent_end, mut init_end) = std::os::unix::net::UnixStream::pair()?;
            agent_end.set_nonblocking(true)?;
            let mut socket = ControlSocket::new(tokio::net::UnixStream::from_std(agent_end)?);
            let mut frame = Vec::new();
            let sent = FromInit::Running { prestarted: true, from_zygote: true };
            write_blocking(&mut frame, &sent)?;
            let (length, body) = frame.split_at(4);
            init_end.write_all(length)?;
            let dropped = tokio::time::timeout(Duration::from_millis(200), socket.read::<FromInit>()).await;
            assert!(dropped.is_err(), "the read ended without the body: {dropped:?}");
            assert_eq!(socket.partial.frame.len(), 4, "the length was read before the read was dropped");
            init_end.write_all(body)?;
            write_blocking(&mut init_end, &FromInit::Terminal)?;
            // Bounded: a read that lost the length waits for a body that never comes.
            let next = Duration::from_secs(10);
            assert_eq!(tokio::time::timeout(next, socket.read::<FromInit>()).await??, sent);
            assert_eq!(tokio::time::timeout(next, socket.read::<FromInit>()).await??, FromInit::Terminal);
            Ok(())
        })
    }
}
