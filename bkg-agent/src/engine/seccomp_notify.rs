//! Seccomp refusals the agent can count: the policy's programs (seccomp.rs) merged into one
//! whose refusals (`SECCOMP_RET_ERRNO`) become `SECCOMP_RET_USER_NOTIF`. The code installs it
//! with a listener and hands the listener to pid 1, which answers each refused call with the
//! very errno the policy gives it (found by running the unchanged program on the call, below) and
//! counts it by syscall number for the run's `denials`. No call is ever let through this way:
//! the supervisor only fails calls the policy fails, so the code sees what it saw before.
//!
//! One program, because a process may have one filter with a listener, and the kernel sends a
//! notification to the filter that returned it. The merge keeps the policy's meaning: the ABI
//! guard, the allowlist and the per-refusal programs decide disjoint calls (seccomp.rs,
//! `compile`), so "the first program that does not allow" is what the kernel's "the strictest
//! answer of all programs" gives. Kernels before 5.0 have no user notification: the code then
//! installs the plain programs and no refusal is counted (docs/security.md, "Denials").

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use seccompiler::{BpfProgram, sock_filter};

/// The kernel's limit on one classic BPF program (`BPF_MAXINSNS`).
pub(super) const MAX_INSTRUCTIONS: usize = 4096;

pub(super) const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const ALU_AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
pub(super) const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
pub(super) const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub(super) const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
pub(super) const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
pub(super) const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
pub(super) const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const RET_ACTION: u32 = 0xffff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// Refusals that are routine and not news, answered by the kernel without a notification and
/// never counted: glibc tries `clone3` for every thread and process it starts and falls back to
/// `clone`, which the policy filters by its flags (seccomp.rs), so every Node run would report it.
const ROUTINE_REFUSALS: [i64; 1] = [libc::SYS_clone3];

#[cfg(target_arch = "x86_64")]
pub(super) const NATIVE_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
pub(super) const NATIVE_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// The policy in the two forms a counted run needs.
pub struct CountedPolicy {
    /// What pid 1 runs on a refused call to find its errno: the policy's own answers.
    pub evaluated: BpfProgram,
    /// What the code installs: the same, with every counted refusal a notification instead.
    pub installed: BpfProgram,
}

/// The policy's programs as one program in both forms; `None` when it is over the kernel's limit.
pub fn counted(programs: &[BpfProgram]) -> Option<CountedPolicy> {
    let merged = merged(programs)?;
    let mut routine: BpfProgram = Vec::new();
    for nr in ROUTINE_REFUSALS {
        let call =
            libc::seccomp_data { nr: i32::try_from(nr).ok()?, arch: NATIVE_ARCH, instruction_pointer: 0, args: [0; 6] };
        let answer = evaluate(&merged, &call)?;
        let number = u32::try_from(nr).ok()?;
        // Native calls with this number get the policy's own answer here, unnotified.
        routine.extend([
            sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 4 },
            sock_filter { code: JEQ_K, jt: 0, jf: 3, k: NATIVE_ARCH },
            sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
            sock_filter { code: JEQ_K, jt: 0, jf: 1, k: number },
            sock_filter { code: RET_K, jt: 0, jf: 0, k: answer },
        ]);
    }
    let installed: BpfProgram = routine.iter().cloned().chain(notifying(&merged)).collect();
    let installed = super::seccomp_dispatch::with_dispatch(&installed).unwrap_or(installed);
    let evaluated: BpfProgram = routine.into_iter().chain(merged).collect();
    (installed.len() <= MAX_INSTRUCTIONS).then_some(CountedPolicy { evaluated, installed })
}

/// The policy's programs as one: each one's "allow" goes on to the next program instead.
/// `None` when together they are over the kernel's limit.
fn merged(programs: &[BpfProgram]) -> Option<BpfProgram> {
    let mut merged: BpfProgram = Vec::new();
    for (index, program) in programs.iter().enumerate() {
        let last = index + 1 == programs.len();
        let next_start = merged.len() + program.len();
        for instruction in program {
            let at = merged.len();
            if !last && instruction.code == RET_K && instruction.k == RET_ALLOW {
                let skip = u32::try_from(next_start - at - 1).ok()?;
                merged.push(sock_filter { code: JA, jt: 0, jf: 0, k: skip });
            } else {
                merged.push(instruction.clone());
            }
        }
    }
    (merged.len() <= MAX_INSTRUCTIONS).then_some(merged)
}

/// `merged` with every refusal turned into a notification to the listener.
fn notifying(merged: &[sock_filter]) -> BpfProgram {
    merged
        .iter()
        .map(|instruction| match instruction.code == RET_K && instruction.k & RET_ACTION == RET_ERRNO {
            true => sock_filter { k: libc::SECCOMP_RET_USER_NOTIF, ..instruction.clone() },
            false => instruction.clone(),
        })
        .collect()
}

/// Runs `program` on a call as the kernel would and returns its answer (`SECCOMP_RET_*`). An
/// instruction the policy's programs never contain answers `None`.
pub fn evaluate(program: &[sock_filter], call: &libc::seccomp_data) -> Option<u32> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&call.nr.to_ne_bytes());
    bytes.extend_from_slice(&call.arch.to_ne_bytes());
    bytes.extend_from_slice(&call.instruction_pointer.to_ne_bytes());
    for arg in call.args {
        bytes.extend_from_slice(&arg.to_ne_bytes());
    }
    let mut accumulator: u32 = 0;
    let mut at = 0usize;
    while let Some(instruction) = program.get(at) {
        at += 1;
        let k = instruction.k;
        let jump = |taken: bool| usize::from(if taken { instruction.jt } else { instruction.jf });
        match instruction.code {
            LD_W_ABS => {
                let start = usize::try_from(k).ok()?;
                let word = bytes.get(start..start.checked_add(4)?)?;
                accumulator = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
            }
            ALU_AND_K => accumulator &= k,
            JA => at = at.checked_add(usize::try_from(k).ok()?)?,
            JEQ_K => at += jump(accumulator == k),
            JGT_K => at += jump(accumulator > k),
            JGE_K => at += jump(accumulator >= k),
            JSET_K => at += jump(accumulator & k != 0),
            RET_K => return Some(k),
            _ => return None,
        }
    }
    None
}

/// Installs `program` (see `notifying`) on the calling thread and returns its listener. Fails
/// on kernels without user notification (`EINVAL`); nothing is installed then.
pub fn install_with_listener(program: &[sock_filter]) -> std::io::Result<OwnedFd> {
    let len = u16::try_from(program.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?;
    // seccompiler's sock_filter is the kernel's struct (repr(C): u16, u8, u8, u32), as libc's is.
    let fprog = libc::sock_fprog { len, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: seccomp(2) reads the program through `fprog`, both valid for the call; it returns a
    // new descriptor (the listener) or -1.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if listener < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(listener as i32) })
}

/// Pid 1's answering of refused calls: the listener, the policy's program, and the count.
pub struct Supervisor {
    listener: OwnedFd,
    program: BpfProgram,
    counts: BTreeMap<i64, u64>,
}

impl Supervisor {
    pub fn new(listener: OwnedFd, program: BpfProgram) -> Self {
        Self { listener, program, counts: BTreeMap::new() }
    }

    pub fn listener(&self) -> i32 {
        self.listener.as_raw_fd()
    }

    /// Takes one waiting notification and fails its call with the policy's errno.
    pub fn answer_one(&mut self) {
        // SAFETY: seccomp_notif is plain data; the kernel wants it all zero.
        let mut call: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV fills one seccomp_notif, valid for the call, at the pointer.
        if unsafe { libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut call) } < 0 {
            // ENOENT: the caller died (or was interrupted) before we took it; EINTR: try later.
            return;
        }
        let answer = evaluate(&self.program, &call.data);
        let errno = match answer {
            Some(action) if action & RET_ACTION == RET_ERRNO => (action & 0xffff) as i32,
            // Never reached with the policy's own programs; a refusal stays a refusal.
            _ => libc::ENOSYS,
        };
        let response = libc::seccomp_notif_resp { id: call.id, val: 0, error: -errno, flags: 0 };
        // SAFETY: NOTIF_SEND reads one seccomp_notif_resp, valid for the call, at the pointer.
        unsafe { libc::ioctl(self.listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &response) };
        *self.counts.entry(i64::from(call.data.nr)).or_default() += 1;
    }

    /// How often each syscall number was refused.
    pub fn counts(&self) -> Vec<(i64, u64)> {
        self.counts.iter().map(|(nr, count)| (*nr, *count)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::seccomp;

    fn call(nr: i64, args: [u64; 6]) -> libc::seccomp_data {
        #[cfg(target_arch = "x86_64")]
        let arch = 62 | 0x8000_0000 | 0x4000_0000;
        #[cfg(target_arch = "aarch64")]
        let arch = 183 | 0x8000_0000 | 0x4000_0000;
        libc::seccomp_data { nr: nr as i32, arch, instruction_pointer: 0, args }
    }

    fn policy_program() -> BpfProgram {
        let programs = seccomp::compile(&seccomp::sandbox_policy()).unwrap_or_default();
        counted(&programs).map(|policy| policy.evaluated).unwrap_or_default()
    }

    #[test]
    fn the_merged_policy_fits_and_answers_as_the_policy_says() {
        let program = policy_program();
        assert!(!program.is_empty() && program.len() <= MAX_INSTRUCTIONS, "{} instructions", program.len());
        assert_eq!(evaluate(&program, &call(libc::SYS_read, [0; 6])), Some(RET_ALLOW));
        assert_eq!(evaluate(&program, &call(libc::SYS_ptrace, [0; 6])), Some(RET_ERRNO | libc::EPERM as u32));
        assert_eq!(evaluate(&program, &call(libc::SYS_mount, [0; 6])), Some(RET_ERRNO | libc::EPERM as u32));
        // A number no rule names gets the default: what a kernel without the call answers.
        assert_eq!(evaluate(&program, &call(1000, [0; 6])), Some(RET_ERRNO | libc::ENOSYS as u32));
        // Arguments count: clone without namespace flags is allowed, with CLONE_NEWUSER refused.
        assert_eq!(evaluate(&program, &call(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0])), Some(RET_ALLOW));
        assert_eq!(
            evaluate(&program, &call(libc::SYS_clone, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0])),
            Some(RET_ERRNO | libc::EPERM as u32)
        );
    }

    #[test]
    fn only_refusals_become_notifications_and_routine_ones_do_not() {
        let programs = seccomp::compile(&seccomp::sandbox_policy()).unwrap_or_default();
        let Some(policy) = counted(&programs) else { panic!("the counted policy does not fit") };
        let installed = policy.installed;
        assert_eq!(evaluate(&installed, &call(libc::SYS_read, [0; 6])), Some(RET_ALLOW));
        assert_eq!(evaluate(&installed, &call(libc::SYS_ptrace, [0; 6])), Some(libc::SECCOMP_RET_USER_NOTIF));
        assert_eq!(evaluate(&installed, &call(libc::SYS_clone3, [0; 6])), Some(RET_ERRNO | libc::ENOSYS as u32));
        assert_eq!(evaluate(&policy.evaluated, &call(libc::SYS_clone3, [0; 6])), Some(RET_ERRNO | libc::ENOSYS as u32));
    }
}
