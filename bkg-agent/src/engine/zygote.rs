//! The zygote (issue 16 item 3; docs/testing.md, "The zygote"): one Python interpreter, started
//! by the agent on the host and initialised once, whose forks become the prestarted code
//! processes of pool sandboxes, so a pool sandbox no longer pays for an interpreter's start.
//! A generation serves at most [`MAX_FORKS`] forks and lives at most [`GENERATION_LIFETIME`];
//! what its forks share is in docs/security.md ("The zygote").
//!
//! A pool sandbox's pid 1 asks for its code process over a connection that its outer init made
//! to the zygote's socket (engine/init.rs, `AskedZygote`), as it starts, before it builds the
//! sandbox's root. The zygote forks (A); A joins the run's cgroups and pid 1's namespaces but
//! the mount one and forks (B, inside the sandbox's pid namespace, at a pid out of turn); B
//! forks the code (C, pid 2 there, as a cold run's code is) and exits, so C is orphaned inside
//! the sandbox and adopted by pid 1, its parent as in a cold run. C copies the pages it shares
//! with the zygote, waits until pid 1 says the root is built, enters the mount namespace,
//! whose root is then the sandbox's, and locks itself down exactly
//! as a code process forked by pid 1 does (`init::lock_down`), moves its order and report pipes
//! to [`ORDER_FD`] and [`READY_FD`], and returns into the loader (prestart.py), which reports
//! and waits for its order. The zygote itself reads no order: only what a sandbox's lock-down
//! needs, in a buffer cleared after each fork.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bkg_schema::units::format_size;
use nix::sched::CloneFlags;
use nix::sys::socket::{self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::cgroup::{CgroupLimits, RunCgroup};
use super::init::{
    CodeSetup, Confinement, IdMapHandshake, SANDBOX_NAMESPACES, lock_down, report_start_failure, set_scheduling,
};
use super::seccomp;

/// The zygote's listening socket, where the agent puts it as it starts the interpreter.
pub const LISTENER_FD: RawFd = 3;
/// Where the forked code finds its order and tells it waits for it (prestart.py's ORDER_FD and
/// READY_FD in the zygote's loader).
pub const ORDER_FD: RawFd = 3;
pub const READY_FD: RawFd = 4;
/// Forks of one generation: a new one then starts, with its own address layout and hash seed.
pub const MAX_FORKS: u32 = 100;
/// How long one generation serves at most.
pub const GENERATION_LIFETIME: Duration = Duration::from_secs(600);
/// A request is a few paths and numbers; a longer message is refused.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Where B is made in the sandbox's pid namespace, out of turn (clone3's `set_tid` does not move
/// the namespace's next pid), so that the code takes pid 2, as in a cold run.
const BRIDGE_PID: libc::pid_t = 1000;

/// What pid 1 sends, as JSON, beside the descriptors of [`RequestFds`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct ForkRequest {
    /// Files that move the writer into the run's cgroups (`RunCgroup::join_files`).
    pub cgroup_joins: Vec<PathBuf>,
    /// A pool sandbox's: the code waits at idle priority until its run.
    pub background: bool,
    pub confinement: Confinement,
}

/// The descriptors of a request, in the order they are sent.
pub(super) struct RequestFds {
    /// A pidfd of pid 1, whose namespaces the code joins.
    pub pid_one: RawFd,
    /// Pid 1 writes a byte here once the sandbox's root is built (it asks before it builds it,
    /// engine/init.rs `AskedZygote`); its end of file without one means it never will be.
    pub root_built: RawFd,
    pub stdio: [RawFd; 3],
    pub order: RawFd,
    pub ready: RawFd,
    /// `IdMapHandshake`'s three.
    pub unshared: RawFd,
    pub mapped: RawFd,
    pub listener: RawFd,
    /// Where a failed lock-down is reported, as a code process forked by pid 1 reports it; its
    /// end of file without a word means the code is locked down.
    pub setup_error: RawFd,
}

const FD_COUNT: usize = 11;

impl RequestFds {
    fn all(&self) -> [RawFd; FD_COUNT] {
        let [stdin, stdout, stderr] = self.stdio;
        [
            self.pid_one,
            self.root_built,
            stdin,
            stdout,
            stderr,
            self.order,
            self.ready,
            self.unshared,
            self.mapped,
            self.listener,
            self.setup_error,
        ]
    }
}

/// The received descriptors, in [`RequestFds`]'s order.
struct Received {
    pid_one: OwnedFd,
    root_built: OwnedFd,
    stdio: [OwnedFd; 3],
    order: OwnedFd,
    ready: OwnedFd,
    handshake: IdMapHandshake,
    setup_error: OwnedFd,
}

impl Received {
    fn of(fds: Vec<OwnedFd>) -> Option<Self> {
        let [pid_one, root_built, stdin, stdout, stderr, order, ready, unshared, mapped, listener, setup_error]: [OwnedFd;
            FD_COUNT] = fds.try_into().ok()?;
        Some(Self {
            pid_one,
            root_built,
            stdio: [stdin, stdout, stderr],
            order,
            ready,
            handshake: IdMapHandshake { unshared, mapped, listener: UnixStream::from(listener) },
            setup_error,
        })
    }
}

/// Connects to the zygote's socket at `path` (the outer init, before the sandbox's root hides it).
pub(super) fn connect(path: &Path) -> nix::Result<OwnedFd> {
    let connection = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    socket::connect(connection.as_raw_fd(), &socket::UnixAddr::new(path)?)?;
    Ok(connection)
}

/// Sends one fork request over `connection` (pid 1's side).
pub(super) fn ask(connection: &OwnedFd, request: &ForkRequest, fds: &RequestFds) -> std::io::Result<()> {
    let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    let fds = fds.all();
    socket::sendmsg::<()>(
        connection.as_raw_fd(),
        &[std::io::IoSlice::new(&body)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// How [`serve`] returned.
pub enum Served {
    /// In a forked code process, locked down, its order at [`ORDER_FD`] and report at
    /// [`READY_FD`], nothing else open but stdio: the loader goes on.
    Code,
    /// The zygote's generation is over: it made [`MAX_FORKS`] forks.
    Ended,
    /// The zygote could not serve (its seccomp filter could not be compiled, or its socket
    /// failed).
    Failed,
}

/// The zygote's loop: accepts pid 1s' connections on `listener` and forks for each request.
/// Runs in the zygote's interpreter, called by its loader (the `bkg-zygote` library).
pub fn serve(listener: RawFd) -> Served {
    let Some(setup) =
        seccomp::compile(&seccomp::sandbox_policy()).ok().and_then(|programs| CodeSetup::new("/", programs).ok())
    else {
        return Served::Failed;
    };
    let mut connections: Vec<OwnedFd> = Vec::new();
    let mut buffer = vec![0u8; MAX_REQUEST_BYTES];
    let mut forks = 0;
    while forks < MAX_FORKS {
        let mut polled: Vec<libc::pollfd> = std::iter::once(listener)
            .chain(connections.iter().map(AsRawFd::as_raw_fd))
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        // SAFETY: `polled` is a valid array of pollfd structs of the length given, for the call.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
        if ready < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Served::Failed;
        }
        if polled[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Served::Failed;
        }
        let mut waiting = Vec::with_capacity(connections.len());
        let mut code = None;
        for (connection, polled) in connections.into_iter().zip(&polled[1..]) {
            if polled.revents == 0 {
                waiting.push(connection);
                continue;
            }
            // One request per connection: it is served or refused, and the connection closes.
            let received = receive(&connection, &mut buffer);
            drop(connection);
            if let Some((length, fds)) = received
                && !abandoned(&fds.setup_error)
            {
                forks += 1;
                code = fork_code(&buffer[..length], fds, &setup);
                // Nothing of this request stays in the memory later forks inherit.
                buffer[..length].fill(0);
                if code.is_some() {
                    break;
                }
            }
        }
        if let Some(code) = code {
            // Every descriptor of the zygote's is closed before the code's are moved into place.
            drop(waiting);
            return code.finish();
        }
        connections = waiting;
        if polled[0].revents & libc::POLLIN != 0
            && let Ok(fd) = socket::accept4(listener, SockFlag::SOCK_CLOEXEC)
        {
            // SAFETY: accept4 just returned this descriptor and nothing else owns it.
            let connection = unsafe { OwnedFd::from_raw_fd(fd) };
            // Only root reaches the socket (the agent's state directory); checked all the same.
            if socket::getsockopt(&connection, socket::sockopt::PeerCredentials).is_ok_and(|peer| peer.uid() == 0) {
                connections.push(connection);
            }
        }
    }
    Served::Ended
}

/// Whether pid 1 gave up waiting for this request (it stopped reading its pipes): a fork made
/// for it now would only enter a sandbox that has gone on without it.
fn abandoned(setup_error: &OwnedFd) -> bool {
    let mut polled = [libc::pollfd { fd: setup_error.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
    // SAFETY: `polled` is a valid array of one pollfd for the call; a zero timeout never waits.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), 1, 0) };
    // A pipe's write end polls as an error once no reader is left.
    ready > 0 && polled[0].revents & libc::POLLERR != 0
}

/// Reads one request into `buffer`: its length and its descriptors, if it is whole.
fn receive(connection: &OwnedFd, buffer: &mut [u8]) -> Option<(usize, Received)> {
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let mut space = nix::cmsg_space!([RawFd; FD_COUNT]);
    let message =
        socket::recvmsg::<()>(connection.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut fds = Vec::new();
    for control in message.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: the kernel just installed these descriptors for us; nothing else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let whole = !message.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    let length = message.bytes;
    (whole && length > 0).then_some(())?;
    Some((length, Received::of(fds)?))
}

/// The code process's pipes, before they move to their places.
struct ForkedCode {
    order: OwnedFd,
    ready: OwnedFd,
}

impl ForkedCode {
    /// Puts the order and report pipes at [`ORDER_FD`] and [`READY_FD`] and closes everything
    /// else but stdio: the zygote's socket and whatever its interpreter had open.
    fn finish(self) -> Served {
        let high = |fd: OwnedFd| {
            // SAFETY: F_DUPFD takes a lowest descriptor number and no pointer.
            let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 64) };
            drop(fd);
            moved
        };
        let (order, ready) = (high(self.order), high(self.ready));
        if order < 0 || ready < 0 {
            // SAFETY: _exit ends this forked process without running the interpreter's handlers.
            unsafe { libc::_exit(127) }
        }
        // SAFETY: dup2 and close_range take descriptor numbers only; nothing of ours owns the
        // descriptors they replace or close (the zygote's socket is not owned here).
        unsafe {
            if libc::dup2(order, ORDER_FD) != ORDER_FD || libc::dup2(ready, READY_FD) != READY_FD {
                libc::_exit(127);
            }
            libc::syscall(libc::SYS_close_range, (READY_FD + 1) as u32, u32::MAX, 0u32);
        }
        Served::Code
    }
}

/// Forks for one request: in the zygote, returns `None` once the fork has made the code (or
/// failed); in the code process, returns its pipes.
fn fork_code(request: &[u8], received: Received, setup: &CodeSetup) -> Option<ForkedCode> {
    // SAFETY: the zygote's interpreter runs no threads (prestart.py starts none), so the child
    // may run any code after fork.
    match unsafe { nix::unistd::fork() } {
        Err(_) => None,
        Ok(ForkResult::Parent { child }) => {
            drop(received);
            let _ = waitpid(child, None);
            None
        }
        Ok(ForkResult::Child) => Some(become_code(request, received, setup)),
    }
}

/// In A: enters the sandbox and makes B, which makes the code; returns only in the code,
/// locked down. Every failure is reported on the setup-error pipe and ends the process.
fn become_code(request: &[u8], received: Received, setup: &CodeSetup) -> ForkedCode {
    let request: ForkRequest = match serde_json::from_slice(request) {
        Ok(request) => request,
        Err(error) => fail(&received.setup_error, "read the fork request", error.to_string()),
    };
    // A joins before it enters the cgroup namespace, so the code's cgroup is that namespace's root.
    for join in &request.cgroup_joins {
        if let Err(error) = fs::write(join, "0") {
            fail(&received.setup_error, "join cgroup", format!("{}: {error}", join.display()));
        }
    }
    if request.background
        && let Err(error) = set_scheduling(libc::SCHED_IDLE)
    {
        fail(&received.setup_error, "lower priority", error.to_string());
    }
    // All but the mount namespace, which the code enters once the root is built (below).
    let namespaces = SANDBOX_NAMESPACES.difference(CloneFlags::CLONE_NEWNS) | CloneFlags::CLONE_NEWPID;
    enter(&received, namespaces, "enter the sandbox");
    // The pid namespace holds for children only: B is the first process made inside.
    match fork_as(BRIDGE_PID) {
        Err(error) => fail(&received.setup_error, "fork into the sandbox", error.to_string()),
        Ok(ForkResult::Parent { child }) => {
            let _ = waitpid(child, None);
            // SAFETY: _exit ends this forked process without running the interpreter's handlers.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Child) => {}
    }
    // glibc's fork, not a raw clone: the code's thread id cache and robust-futex list must be
    // its own (`signal.pthread_kill` and thread CPU clocks use them). It takes the namespace's
    // next pid, 2, as B's was chosen out of turn.
    // SAFETY: B is single-threaded, as the zygote is.
    match unsafe { nix::unistd::fork() } {
        Err(error) => fail(&received.setup_error, "fork the code", error.to_string()),
        // SAFETY: as above; B's end orphans the code, which pid 1 adopts.
        Ok(ForkResult::Parent { .. }) => unsafe { libc::_exit(0) },
        Ok(ForkResult::Child) => {}
    }
    wait_for_adoption();
    for (fd, target) in received.stdio.iter().zip(0..) {
        // SAFETY: dup2 onto the standard descriptors; `fd` stays open for the call.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            fail(&received.setup_error, "take the sandbox's stdio", std::io::Error::last_os_error().to_string());
        }
    }
    // Done while pid 1 may still be building the root.
    own_writable_pages();
    match nix::unistd::read(&received.root_built, &mut [0u8; 1]) {
        Ok(1) => {}
        _ => fail(&received.setup_error, "wait for the sandbox's root", "pid 1 did not build it".into()),
    }
    // Only now: entered while pid 1 was between its `pivot_root` and the old root's detach, this
    // process would keep the host's root as its own (the kernel moves the roots of processes at
    // the old root when it pivots, and this one would have come after).
    enter(&received, CloneFlags::CLONE_NEWNS, "enter the sandbox's root");
    let Received { pid_one, root_built, stdio, order, ready, handshake, setup_error } = received;
    drop((pid_one, root_built, stdio));
    if let Err((stage, message)) = lock_down(&request.confinement, setup, &handshake, None) {
        fail(&setup_error, stage, message);
    }
    // The end of this pipe with nothing in it tells pid 1 the code is locked down.
    drop((handshake, setup_error));
    ForkedCode { order, ready }
}

/// Enters pid 1's `namespaces` (its pidfd's), or reports `stage` failed and ends the process.
fn enter(received: &Received, namespaces: CloneFlags, stage: &str) {
    // SAFETY: setns takes a descriptor and flags, no pointer.
    if unsafe { libc::setns(received.pid_one.as_raw_fd(), namespaces.bits()) } != 0 {
        fail(&received.setup_error, stage, std::io::Error::last_os_error().to_string());
    }
}

/// Copies now, while the sandbox waits in the pool (and into its cgroup), every page this fork
/// shares with the zygote and may write. Left shared, each would be copied at the run's first
/// write to it (Python's reference counts write to every object it touches): measured, a
/// warm `hello.py` then took about 3 ms more CPU than in an interpreter of its own. Only the
/// pages the zygote has in memory are copied: about a quarter of its writable mappings were
/// never touched (the rest of its allocator's arenas, its stack), and faulting them in would
/// only give the run zeroed pages it may never use.
fn own_writable_pages() {
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else { return };
    // SAFETY: sysconf takes a constant and no pointer.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut resident = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(permissions)) = (fields.next(), fields.next()) else { continue };
        if !permissions.starts_with("rw") || !permissions.ends_with('p') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        let pages = end.saturating_sub(start) / page;
        resident.clear();
        resident.resize(pages, 0u8);
        // SAFETY: mincore writes one byte per page of the range into `resident`, which has that
        // many; the range is a mapping of this process, page-aligned as /proc/self/maps gives it.
        if unsafe { libc::mincore(start as *mut libc::c_void, pages * page, resident.as_mut_ptr()) } != 0 {
            resident.fill(1);
        }
        let mut first = 0;
        for run in resident.chunk_by(|a, b| a & 1 == b & 1) {
            if run[0] & 1 != 0 {
                // SAFETY: madvise on pages of a mapping of this process; MADV_POPULATE_WRITE only
                // faults them in as writable (copying shared ones), it changes no contents.
                unsafe {
                    libc::madvise(
                        (start + first * page) as *mut libc::c_void,
                        run.len() * page,
                        libc::MADV_POPULATE_WRITE,
                    )
                };
            }
            first += run.len();
        }
    }
}

/// Reports a failed step on the setup-error pipe, as a code process forked by pid 1 does, and ends
/// the forked process.
fn fail(setup_error: &OwnedFd, stage: &str, message: String) -> ! {
    report_start_failure(setup_error, -1, &format!("{stage}: {message}"));
    // SAFETY: _exit ends this forked process without running the interpreter's handlers.
    unsafe { libc::_exit(127) }
}

/// Waits until B, which made this process, is gone and pid 1 is this process's parent.
fn wait_for_adoption() {
    let parent = nix::unistd::getppid();
    if parent.as_raw() == 1 {
        return;
    }
    let Ok(pidfd) = super::pidfd_open(parent.as_raw()) else {
        // B is gone already.
        return;
    };
    let mut watched = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // A pidfd reads as ready once its process has exited, after its children were reparented.
    // SAFETY: `watched` is a valid array of one pollfd for the call.
    while unsafe { libc::poll(watched.as_mut_ptr(), 1, -1) } < 0
        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// Forks like fork(2), the child taking `pid` in the pid namespace it is made in if it is free
/// (clone3's `set_tid`; the agent is root there), another one if not. A raw clone leaves the
/// child's glibc thread state stale: only for a process that forks once more and exits.
fn fork_as(pid: libc::pid_t) -> nix::Result<ForkResult> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let wanted = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: wanted.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack duplicates this single-threaded
    // process as fork does; `args` and `wanted` are valid for the call.
    let made = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match made {
        // SAFETY: as for `fork_code`: a single-threaded process.
        -1 => unsafe { nix::unistd::fork() },
        0 => Ok(ForkResult::Child),
        child => Ok(ForkResult::Parent { child: Pid::from_raw(child as libc::pid_t) }),
    }
}

/// Where the zygote's library is, if it is there: beside the agent's binary (as `cargo build`
/// puts it in target/), else in `../lib/bkg/` from it (as the release installs it:
/// /usr/lib/bkg/ for /usr/bin/bkg-agent).
pub fn library() -> Option<PathBuf> {
    super::installed_beside_agent("libbkg_zygote.so")
}

/// The zygote's socket of a generation in the agent's state directory: `zygote-N.sock`.
const SOCKET_NAME: (&str, &str) = ("zygote-", ".sock");

fn socket_path(state_dir: &Path, generation: u64) -> PathBuf {
    let (prefix, suffix) = SOCKET_NAME;
    state_dir.join(format!("{prefix}{generation}{suffix}"))
}

/// Removes the sockets of generations an agent with this state directory left when it was killed.
fn remove_old_sockets(state_dir: &Path) {
    let (prefix, suffix) = SOCKET_NAME;
    let Ok(entries) = fs::read_dir(state_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A zygote generation serving: pool sandboxes prepared now ask it for their interpreter.
#[derive(Clone)]
pub struct Generation {
    pub number: u64,
    pub pid: u32,
    pub socket: PathBuf,
    /// Its cgroup, whose count of its memory `--zygote-memory` bounds.
    cgroup: std::sync::Arc<dyn RunCgroup>,
}

/// Whether a zygote serves, and why not.
#[derive(Clone)]
pub enum ZygoteStatus {
    Serving(Generation),
    /// A generation is being started (at the agent's start, or after one ended): a pool
    /// sandbox that starts Python waits for it a moment (`Engine::zygote_settled`).
    Starting(String),
    Off(String),
    Unavailable(String),
}

impl ZygoteStatus {
    /// The status as the API shows it, with the memory limit of each generation (`--zygote-memory`).
    pub fn describe(&self, memory_limit_bytes: u64) -> bkg_schema::ZygoteInfo {
        use bkg_schema::{ZygoteInfo, ZygoteState};
        let not_serving = |state, reason: &String| ZygoteInfo {
            state,
            generation: None,
            pid: None,
            memory_bytes: 0,
            memory_limit_bytes,
            reason: Some(reason.clone()),
        };
        match self {
            Self::Serving(generation) => ZygoteInfo {
                state: ZygoteState::Serving,
                generation: Some(generation.number),
                pid: Some(generation.pid),
                memory_bytes: generation.cgroup.memory_now().unwrap_or(0),
                memory_limit_bytes,
                reason: None,
            },
            Self::Off(reason) => not_serving(ZygoteState::Off, reason),
            Self::Starting(reason) => not_serving(ZygoteState::Starting, reason),
            Self::Unavailable(reason) => not_serving(ZygoteState::Unavailable, reason),
        }
    }
}

/// A generation that exits with an error this soon after its start failed to start.
const QUICK_END: Duration = Duration::from_secs(2);
/// Failed starts in a row after which warm sandboxes go on starting their own interpreters.
const FAILED_STARTS_ALLOWED: u32 = 3;
/// The pause before the next generation after one ended this soon, for any reason but having
/// made its forks: under load a generation makes them in about a second, and a pause then
/// would leave the runs of that second to start interpreters of their own.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Keeps one zygote generation serving while the engine lives: starts the next when one ends
/// (after its forks, its lifetime, or a failure) and gives up after repeated failed starts.
/// Every end but a planned one is logged as a warning, and `bkg agent status` says what serves.
pub async fn keep(engine: std::sync::Weak<super::Engine>, library: PathBuf) {
    if let Some(engine) = engine.upgrade() {
        remove_old_sockets(&engine.config.state_dir);
    }
    let mut failed_starts = 0;
    for number in 1.. {
        let Some(strong) = engine.upgrade() else { return };
        if strong.is_closing() {
            return;
        }
        let mut closing = strong.closing();
        let replace = strong.zygote_replacements();
        let cgroup: std::sync::Arc<dyn RunCgroup> = match cgroup_of(&strong, number) {
            Ok(cgroup) => cgroup.into(),
            Err(error) => {
                let reason = format!("could not make the zygote's cgroup: {error}");
                tracing::warn!("{reason}; each warm sandbox starts its own interpreter");
                strong.set_zygote(ZygoteStatus::Unavailable(reason));
                return;
            }
        };
        let (mut child, socket) = match spawn(&strong, &library, number, cgroup.as_ref()) {
            Ok(spawned) => spawned,
            Err(error) => {
                let reason = format!("could not start the zygote: {error}");
                tracing::warn!("{reason}; each warm sandbox starts its own interpreter");
                strong.set_zygote(ZygoteStatus::Unavailable(reason));
                remove_cgroup(cgroup).await;
                return;
            }
        };
        let pid = child.id().unwrap_or(0);
        strong.set_zygote(ZygoteStatus::Serving(Generation {
            number,
            pid,
            socket: socket.clone(),
            cgroup: std::sync::Arc::clone(&cgroup),
        }));
        drop(strong);
        let started = tokio::time::Instant::now();
        let ended = tokio::select! {
            status = child.wait() => status.ok(),
            () = tokio::time::sleep(GENERATION_LIFETIME) => None,
            _ = closing.wait_for(|closing| *closing) => None,
            // It did not answer a sandbox in time (stopped, or stuck): a new one takes over.
            () = replace.notified() => None,
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = fs::remove_file(&socket);
        let out_of_memory = cgroup.usage().is_ok_and(|usage| usage.oom_kills > 0);
        remove_cgroup(cgroup).await;
        let Some(engine) = engine.upgrade() else { return };
        if engine.is_closing() {
            return;
        }
        let quick = started.elapsed() < QUICK_END;
        let made_its_forks = matches!(&ended, Some(status) if status.success());
        match ended {
            // Its lifetime is over, the agent stops, or it was replaced (logged where that was
            // decided).
            None => {
                failed_starts = 0;
                tracing::info!(generation = number, "the zygote's generation is over");
            }
            // It made its forks and ended by itself.
            Some(status) if status.success() => {
                failed_starts = 0;
                tracing::info!(generation = number, "the zygote made its forks");
            }
            Some(status) => {
                // Only an end of its own at its start counts: an exit, or its memory limit; a
                // kill from outside is no failure of the zygote's.
                let own = status.code().is_some() || out_of_memory;
                failed_starts = if quick && own { failed_starts + 1 } else { 0 };
                let ended = match out_of_memory {
                    true => {
                        format!("its memory reached --zygote-memory ({})", format_size(engine.config.zygote_memory))
                    }
                    false => status.to_string(),
                };
                tracing::warn!(generation = number, "the zygote ended unexpectedly: {ended}");
                if failed_starts >= FAILED_STARTS_ALLOWED {
                    let reason = format!(
                        "it failed to start {FAILED_STARTS_ALLOWED} times (last: {ended}); see the agent's log"
                    );
                    tracing::warn!(
                        "the zygote failed to start {FAILED_STARTS_ALLOWED} times (last: {ended}): each warm sandbox \
                         starts its own interpreter"
                    );
                    engine.set_zygote(ZygoteStatus::Unavailable(reason));
                    return;
                }
            }
        }
        engine.set_zygote(ZygoteStatus::Starting(format!("generation {number} ended; the next one")));
        drop(engine);
        if quick && !made_its_forks {
            tokio::time::sleep(RESTART_PAUSE).await;
        }
    }
}

/// Processes in a zygote's cgroup: the zygote, and a fork of it until that fork joins its run's.
const CGROUP_PIDS: u64 = 16;

/// Generation `number`'s cgroup, beneath the agent's own as a sandbox's is, which bounds its
/// memory (`--zygote-memory`). Its forks leave it for their runs' cgroups at once.
fn cgroup_of(engine: &super::Engine, number: u64) -> Result<Box<dyn RunCgroup>, super::cgroup::CgroupError> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get) as u64;
    let limits =
        CgroupLimits { cpu_millis: 1000 * cpus, memory_bytes: engine.config.zygote_memory, pids_max: CGROUP_PIDS };
    engine.cgroups.create(&format!("zygote-{number}"), &limits)
}

/// Kills what is left in a generation's cgroup (a fork on its way out) and removes it.
async fn remove_cgroup(cgroup: std::sync::Arc<dyn RunCgroup>) {
    let removed = tokio::task::spawn_blocking(move || super::cgroup::empty_and_remove(cgroup.as_ref())).await;
    if let Ok(Err(error)) = removed {
        tracing::warn!(%error, "could not remove the zygote's cgroup");
    }
}

async fn log_lines(output: impl tokio::io::AsyncRead + Unpin, generation: u64) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(generation, "zygote: {line}");
    }
}

/// Starts generation `number`: binds its socket and starts the interpreter with the loader
/// that serves it, as a pool sandbox starts Python ahead (same interpreter, flags and
/// environment), on the host.
fn spawn(
    engine: &super::Engine,
    library: &Path,
    number: u64,
    cgroup: &dyn RunCgroup,
) -> std::io::Result<(tokio::process::Child, PathBuf)> {
    use std::os::unix::process::CommandExt as _;

    // Opened here, written in the child before its exec: all it allocates is charged to its cgroup.
    let joins = cgroup
        .join_files()
        .iter()
        .map(|path| fs::OpenOptions::new().write(true).open(path))
        .collect::<std::io::Result<Vec<fs::File>>>()?;
    let join_fds: Vec<RawFd> = joins.iter().map(AsRawFd::as_raw_fd).collect();

    let prestart = engine.prestart_plan(bkg_schema::Language::Python).map_err(std::io::Error::other)?;
    let socket = socket_path(&engine.config.state_dir, number);
    let _ = fs::remove_file(&socket);
    let listener = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
    socket::bind(listener.as_raw_fd(), &socket::UnixAddr::new(&socket)?)?;
    socket::listen(&listener, socket::Backlog::new(128)?)?;
    let argv = prestart.zygote_argv(library).ok_or_else(|| std::io::Error::other("the library's path is not UTF-8"))?;
    let mut command = std::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(prestart.start_env())
        .current_dir("/")
        // Pipes, as a sandbox's stdio: Python notes at its start whether they can seek, and its
        // forks keep what it noted.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let raw = listener.as_raw_fd();
    let agent_pid = nix::unistd::getpid().as_raw();
    let root = c"/";
    let workspace = std::ffi::CString::new(super::plan::WORKSPACE).map_err(std::io::Error::other)?;
    let tmpfs = c"tmpfs";
    // SAFETY: between fork and exec only async-signal-safe calls are made (prctl, getppid,
    // write, dup2, fcntl, umask, signal, unshare, mount, stat) on descriptors open in the child
    // and strings made before the fork; nothing allocates.
    unsafe {
        command.pre_exec(move || {
            // The zygote ends with the agent, whose runtime worker thread starts it. First, and
            // checked: an agent killed before this would leave a zygote serving nobody, and one
            // killed during the steps below a child holding the agent's socket until its exec.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent_pid {
                // No allocation here: ESRCH, "no such process", is the agent.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // The child alone, single-threaded, joins (`0` is the writer).
            for fd in &join_fds {
                if libc::write(*fd, c"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if raw == LISTENER_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, LISTENER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Its forks have the umask a sandbox's code has, not the agent's private one.
            libc::umask(super::init::SANDBOX_UMASK);
            // And the signal dispositions a code started by pid 1 gets (its forks keep those
            // Python itself does not set).
            super::init::default_signal_dispositions()?;
            // Python's start reads the user site-packages under HOME (/workspace) and runs their
            // .pth files: as root on the host, a /workspace another user can write to would run
            // their code. The zygote gets a mount namespace of its own with an empty, read-only
            // /workspace, as an empty sandbox's is.
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::stat(workspace.as_ptr(), &mut stat) == 0
                && stat.st_mode & libc::S_IFMT == libc::S_IFDIR
                && libc::mount(
                    tmpfs.as_ptr(),
                    workspace.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn()?;
    drop((listener, joins));
    // Its stdin ends at once; what it writes (only ever a failure) goes to the log.
    drop(child.stdin.take());
    if let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) {
        tokio::spawn(log_lines(stdout, number));
        tokio::spawn(log_lines(stderr, number));
    }
    Ok((child, socket))
}
