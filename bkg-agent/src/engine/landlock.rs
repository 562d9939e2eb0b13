//! Landlock confinement of the sandboxed process: which paths it may read/execute or write,
//! plus TCP, abstract-socket and signal isolation where the kernel supports them.
//!
//! Best effort by design: each kernel enforces the subset of our request it understands, and
//! the returned status says how much that was, so an older kernel degrades instead of refusing
//! to run anything.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ::landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};

/// The newest ABI the crate knows. Requesting its rights lets newer kernels enforce more
/// (e.g. pathname unix-socket connects since v9); older kernels drop what they lack.
const TARGET_ABI: ABI = ABI::V10;

/// Which parts of the filesystem the sandbox may touch; everything else is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LandlockPaths {
    /// Read files, list directories, execute.
    pub read_exec: Vec<PathBuf>,
    /// Every filesystem right, including creating, removing, truncating and device ioctls.
    pub read_write: Vec<PathBuf>,
}

/// How much of the requested confinement the kernel applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// Every requested restriction is active.
    Full,
    /// Some requested rights are unknown to this kernel and stay unrestricted; the rest is
    /// active. Expected on kernels older than [`TARGET_ABI`].
    Partial,
    /// The kernel has no (enabled) Landlock: nothing is restricted.
    NotEnforced,
}

/// Outcome of [`restrict_self`], meant for logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LandlockStatus {
    pub enforcement: Enforcement,
    /// Landlock support on this kernel, including the ABI version actually used.
    pub kernel_support: ::landlock::LandlockStatus,
    /// Configured paths that did not exist and therefore got no rule (so stay inaccessible).
    pub skipped: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot open {} for a Landlock rule", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build or apply the Landlock ruleset")]
    Ruleset(#[from] ::landlock::RulesetError),
}

/// Confines the calling thread, and everything it later spawns, to `paths` and, from ABI 6,
/// forbids connecting to abstract unix sockets or signalling processes outside the sandbox.
/// Network access is left to the sandbox's own network namespace: programs may serve and
/// connect on their private loopback.
///
/// Also sets `PR_SET_NO_NEW_PRIVS`. Must run in the single-threaded child: other threads are
/// not restricted.
pub fn restrict_self(paths: &LandlockPaths) -> Result<LandlockStatus, LandlockError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)?
        .create()?;

    let mut skipped = Vec::new();
    let grants =
        [(&paths.read_exec, AccessFs::from_read(TARGET_ABI)), (&paths.read_write, AccessFs::from_all(TARGET_ABI))];
    for (list, access) in grants {
        for path in list {
            match path_rule(path, access)? {
                Some(rule) => ruleset = ruleset.add_rule(rule)?,
                None => skipped.push(path.clone()),
            }
        }
    }

    let status = ruleset.restrict_self()?;
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::NotEnforced,
    };
    Ok(LandlockStatus { enforcement, kernel_support: status.landlock, skipped })
}

/// A rule granting `access` beneath `path`, or `None` if the path does not exist.
fn path_rule(path: &Path, access: BitFlags<AccessFs>) -> Result<Option<PathBeneath<File>>, LandlockError> {
    let open_error = |source| LandlockError::Open { path: path.to_owned(), source };
    // O_PATH needs no read permission on the target and never triggers device open side
    // effects; it is all Landlock needs to name the inode.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_CLOEXEC).open(path) {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Ok(None);
        }
        Err(e) => return Err(open_error(e)),
    };
    // Directory-only rights on a file would be dropped by the crate and reported as partial
    // enforcement, hiding real kernel gaps in the status.
    let access =
        if file.metadata().map_err(open_error)?.is_dir() { access } else { access & AccessFs::from_file(TARGET_ABI) };
    Ok(Some(PathBeneath::new(file, access)))
}

/// The Landlock ABI version this kernel offers, None without Landlock (`bkg version` shows it).
pub fn kernel_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns
    // the ABI number (or fails); it touches no memory of ours and creates no file descriptor.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::ErrorKind;
    use std::net::TcpStream;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

    use nix::sys::wait::WaitStatus;

    use crate::engine::test_support::in_child;

    /// Runs `body` in a forked child and returns how the child ended. Failures are written
    /// straight to fd 2: the test harness's output capture does not survive the fork.
    fn abi_at_least(status: &LandlockStatus, abi: ABI) -> bool {
        matches!(status.kernel_support,
            ::landlock::LandlockStatus::Available { effective_abi, .. } if effective_abi >= abi)
    }

    fn expect_denied<T: std::fmt::Debug>(what: &str, result: io::Result<T>, kind: ErrorKind) -> Result<(), String> {
        match result {
            Err(e) if e.kind() == kind => Ok(()),
            other => Err(format!("{what}: expected {kind:?}, got {other:?}")),
        }
    }

    #[test]
    fn confines_filesystem_network_and_ipc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_path = dir.path().to_owned();
        let usr_probe = PathBuf::from(format!("/usr/bkg-landlock-probe-{}", std::process::id()));
        let abstract_name = format!("bkg-landlock-probe-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("addr");
        let _listener = UnixListener::bind_addr(&addr).expect("abstract listener");

        let status = in_child(|| {
            let missing = PathBuf::from("/nonexistent-bkg-landlock");
            let paths = LandlockPaths {
                read_exec: vec!["/usr".into(), missing.clone()],
                read_write: vec![dir_path.clone(), "/dev/null".into()],
            };
            let status = restrict_self(&paths).map_err(|e| format!("restrict_self: {e:?}"))?;
            if status.enforcement == Enforcement::NotEnforced {
                return Err(format!("Landlock not enforced: {status:?}"));
            }
            if status.skipped != [missing] {
                return Err(format!("skipped: {:?}", status.skipped));
            }

            expect_denied("read /etc/hostname", std::fs::read("/etc/hostname"), ErrorKind::PermissionDenied)?;
            std::fs::read("/usr/bin/env").map_err(|e| format!("read /usr/bin/env: {e}"))?;
            let inside = dir_path.join("file");
            std::fs::write(&inside, b"hi").map_err(|e| format!("write tempdir: {e}"))?;
            std::fs::create_dir(dir_path.join("sub")).map_err(|e| format!("mkdir tempdir: {e}"))?;
            std::fs::remove_file(&inside).map_err(|e| format!("unlink tempdir: {e}"))?;
            expect_denied("write /usr", std::fs::write(&usr_probe, b"x"), ErrorKind::PermissionDenied)?;
            OpenOptions::new().write(true).open("/dev/null").map_err(|e| format!("open /dev/null for writing: {e}"))?;

            // Loopback TCP is the network namespace's business, not Landlock's.
            expect_denied(
                "tcp connect to a closed port",
                TcpStream::connect("127.0.0.1:9"),
                ErrorKind::ConnectionRefused,
            )?;
            if abi_at_least(&status, ABI::V6) {
                let connect = UnixStream::connect_addr(&addr);
                expect_denied("abstract unix connect", connect, ErrorKind::PermissionDenied)?;
                // SAFETY: signal 0 only checks permission; nothing is delivered.
                let ret = unsafe { libc::kill(libc::getppid(), 0) };
                let err = io::Error::last_os_error();
                if ret != -1 || err.raw_os_error() != Some(libc::EPERM) {
                    return Err(format!("kill(parent, 0): {ret} {err}"));
                }
            }
            Ok(())
        });
        // A broken sandbox running as root could have written here; never leave it behind.
        let leaked = std::fs::remove_file(&usr_probe).is_ok();
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "child ended with {status:?}");
        assert!(!leaked, "the child wrote under /usr");
    }

    #[test]
    fn unopenable_path_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let looping = dir.path().join("loop");
        std::os::unix::fs::symlink(&looping, &looping).expect("symlink");
        let status = in_child(|| {
            let paths = LandlockPaths { read_exec: vec![looping.clone()], read_write: vec![] };
            match restrict_self(&paths) {
                Err(LandlockError::Open { path, .. }) if path == looping => Ok(()),
                other => Err(format!("expected an open error, got {other:?}")),
            }
        });
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "child ended with {status:?}");
    }
}
