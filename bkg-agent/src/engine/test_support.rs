//! Helpers shared by the engine's privileged unit tests.

use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// Runs `body` in a forked child and returns how the child ended: exit 0 when `body` returned
/// `Ok`, 1 (with the message on stderr) for `Err`, 101 for a panic. Filters and rulesets applied
/// by `body` stay in the child.
pub fn in_child(body: impl FnOnce() -> Result<(), String>) -> WaitStatus {
    // SAFETY: the child only runs `body` and `_exit`s; glibc keeps malloc usable after fork
    // even though the test harness is multithreaded.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match catch_unwind(AssertUnwindSafe(body)) {
                Ok(Ok(())) => 0,
                Ok(Err(message)) => {
                    let line = format!("child: {message}\n");
                    // SAFETY: writes a live buffer of the given length to stderr.
                    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
                    1
                }
                Err(_) => 101,
            };
            // SAFETY: ends the forked child without running the parent's atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
    }
}

/// A kernel feature or host program a test needs is missing. The machines bkg is tested on
/// (docs/testing.md) have all of them, so this fails; only an explicit
/// `BKG_ALLOW_MISSING_KERNEL_FEATURES=1` (a developer on an odd host) turns it into a skip, and
/// then it says so.
pub fn feature_missing(what: &str) {
    if std::env::var_os("BKG_ALLOW_MISSING_KERNEL_FEATURES").is_some_and(|value| value == "1") {
        eprintln!("SKIPPED (BKG_ALLOW_MISSING_KERNEL_FEATURES=1): {what}");
    } else {
        panic!("{what}; set BKG_ALLOW_MISSING_KERNEL_FEATURES=1 to skip on a host without it");
    }
}
