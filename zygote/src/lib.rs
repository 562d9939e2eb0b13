//! `libbkg_zygote.so`: the zygote's loop (bkg-agent/src/engine/zygote.rs) as a C function, for
//! the loader (bkg-agent/src/engine/prestart.py) to call through `_ctypes` in the interpreter the
//! agent starts as the zygote. The agent finds it beside its own binary.

use std::os::raw::c_int;

use bkg_agent::engine::zygote::{LISTENER_FD, Served, serve};

/// Serves forks on the socket at `LISTENER_FD`. Returns 0 in a fork that is a sandbox's code,
/// locked down; in the zygote, 1 once it made its forks and 2 if it could not serve (the
/// loader exits with 0 and 1: the agent counts the second as a failed start).
#[unsafe(no_mangle)]
pub extern "C" fn bkg_zygote_serve() -> c_int {
    // A panic must not unwind into the interpreter: it ends the generation (or the fork) instead.
    match std::panic::catch_unwind(|| serve(LISTENER_FD)) {
        Ok(Served::Code) => 0,
        Ok(Served::Ended) => 1,
        Ok(Served::Failed) | Err(_) => 2,
    }
}
