//! Seccomp policy for sandboxed programs.
//!
//! The policy is a plain data table ([`sandbox_policy`]) so it can be reviewed, tested and
//! logged on its own; [`compile`] turns it into classic-BPF programs and [`install`] loads them
//! as the very last step before `execve`.
//!
//! It denies by default: a call is allowed only when a group of [`allowed_syscalls`] names it
//! (what Python, Node and the `/usr/bin` tools they spawn use), and every other call fails with
//! `ENOSYS`, what a kernel without it answers, so libraries fall back as on an older kernel and a
//! syscall a newer kernel adds stays closed until it is reviewed. The dangerous calls those
//! programs never need, which either reach rarely audited kernel code or let the sandbox reshape
//! its own confinement, keep explicit rules with their reasons. Denials return an errno rather
//! than killing, so a probing library sees an ordinary error and carries on.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp policy only knows the x86_64 and aarch64 syscall tables");

#[cfg(target_arch = "x86_64")]
const TARGET_ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET_ARCH: TargetArch = TargetArch::aarch64;

/// The kernel clamps errno values to this (`MAX_ERRNO`); larger ones would not round-trip.
const MAX_ERRNO: u32 = 4095;

/// What happens to a call that matches a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The call reaches the kernel (whose own checks still apply).
    Allow,
    /// The call fails with this errno without reaching the kernel implementation.
    Errno(i32),
    /// The whole process dies with `SIGSYS`; only for calls no legitimate program can make.
    KillProcess,
}

impl Verdict {
    /// `None` for an errno seccomp cannot carry, and for 0, which would fake success.
    fn action(self) -> Option<SeccompAction> {
        match self {
            Verdict::Errno(errno) => {
                u32::try_from(errno).ok().filter(|errno| (1..=MAX_ERRNO).contains(errno)).map(SeccompAction::Errno)
            }
            Verdict::KillProcess => Some(SeccompAction::KillProcess),
            Verdict::Allow => Some(SeccompAction::Allow),
        }
    }
}

/// How much of a syscall argument a condition compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgWidth {
    /// Low 32 bits only. Required for `int`/`unsigned int` parameters: the kernel discards the
    /// upper half, so a 64-bit compare could be dodged by setting it.
    U32,
    /// The full register, for `long`/pointer-sized parameters.
    U64,
}

/// Comparison between a syscall argument and a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgCmp {
    Eq(u64),
    Ne(u64),
    /// Every one of these bits is set in the argument.
    HasBits(u64),
}

/// One test on one argument of a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgCondition {
    /// Argument position, 0..=5.
    pub index: u8,
    pub width: ArgWidth,
    pub cmp: ArgCmp,
}

impl ArgCondition {
    fn eq32(index: u8, value: u64) -> Self {
        Self { index, width: ArgWidth::U32, cmp: ArgCmp::Eq(value) }
    }

    fn ne32(index: u8, value: u64) -> Self {
        Self { index, width: ArgWidth::U32, cmp: ArgCmp::Ne(value) }
    }

    fn has_bits64(index: u8, bits: u64) -> Self {
        Self { index, width: ArgWidth::U64, cmp: ArgCmp::HasBits(bits) }
    }

    fn has_bits32(index: u8, bits: u64) -> Self {
        Self { index, width: ArgWidth::U32, cmp: ArgCmp::HasBits(bits) }
    }

    fn to_seccompiler(self) -> Result<SeccompCondition, BackendError> {
        let width = match self.width {
            ArgWidth::U32 => SeccompCmpArgLen::Dword,
            ArgWidth::U64 => SeccompCmpArgLen::Qword,
        };
        let (op, value) = match self.cmp {
            ArgCmp::Eq(value) => (SeccompCmpOp::Eq, value),
            ArgCmp::Ne(value) => (SeccompCmpOp::Ne, value),
            ArgCmp::HasBits(bits) => (SeccompCmpOp::MaskedEq(bits), bits),
        };
        SeccompCondition::new(self.index, width, op, value)
    }
}

/// One line of the policy.
///
/// Rules naming the same syscall are alternatives (any may match); the conditions inside one
/// rule must all hold. A syscall must not mix verdicts, nor an unconditional rule with
/// conditional ones: [`compile`] rejects both because the outcome would hinge on filter order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallRule {
    pub name: &'static str,
    pub nr: i64,
    pub verdict: Verdict,
    /// All must hold; empty means every call matches.
    pub when: Vec<ArgCondition>,
    pub why: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp rule for {syscall}: {verdict:?} needs an errno in 1..={MAX_ERRNO}")]
    InvalidVerdict { syscall: &'static str, verdict: Verdict },
    #[error("seccomp rules for {syscall} conflict (different verdicts, or a catch-all next to conditional rules)")]
    AmbiguousRules { syscall: &'static str },
    #[error("seccomp rule for {syscall}: an allowed call is allowed whatever its arguments")]
    ConditionalAllow { syscall: &'static str },
    #[error("cannot build the seccomp filter")]
    Build(#[from] BackendError),
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

const EPERM: Verdict = Verdict::Errno(libc::EPERM);

/// What a call that no rule names gets: what a kernel without it answers.
const DEFAULT_VERDICT: Verdict = Verdict::Errno(libc::ENOSYS);

/// Namespace flags `clone(2)` accepts. `CLONE_NEWTIME` is absent on purpose: its bit is part
/// of the exit-signal field for `clone(2)` and it is only reachable via `unshare`/`clone3`,
/// which are refused outright.
const NAMESPACE_CLONE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Flag and enum constants are bit patterns; going through u32 keeps a negative `c_int` from
/// sign-extending into the upper half.
const fn bits(value: libc::c_int) -> u64 {
    value as u32 as u64
}

macro_rules! rule {
    ($sys:ident, $verdict:expr, $why:expr) => {
        rule!($sys, $verdict, [], $why)
    };
    ($sys:ident, $verdict:expr, [$($cond:expr),* $(,)?], $why:expr) => {
        SyscallRule {
            name: stringify!($sys).trim_start_matches("SYS_"),
            nr: libc::$sys,
            verdict: $verdict,
            when: vec![$($cond),*],
            why: $why,
        }
    };
}

macro_rules! allow {
    ($why:expr; $($sys:ident),* $(,)?) => {
        vec![$(rule!($sys, Verdict::Allow, $why)),*]
    };
}

/// What sandboxed programs may call, in groups with the reason each group is needed. The
/// kernel's own permission checks still apply to every one of them.
pub fn allowed_syscalls() -> Vec<SyscallRule> {
    const FILES: &str = "reading, writing and managing files and directories: every program (the set a file open or create may use is decided by the SETID rules)";
    const XATTR: &str = "extended attributes: cp -a, tar, pip and shutil.copystat read and copy them; the kernel limits writes to the file's owner and the user.* namespace";
    const WAIT: &str =
        "waiting on many descriptors and events: asyncio, libuv (Node), subprocess pipes, inotify for watchers";
    const MEMORY: &str = "mapping and advising the process's own memory: allocators, the JIT of V8, mmap module; NUMA placement affects only the caller's pages";
    const PROCESS: &str = "making, running, waiting for and describing processes and threads: subprocess, multiprocessing, worker_threads, /usr/bin tools";
    const SCHEDULING: &str = "the caller's own scheduling and resource limits (os.sched_*, os.nice, resource); raising either needs capabilities the code lacks";
    const IDS: &str = "reading and switching ids: the code has no CAP_SETUID, so a switch to another id fails with EPERM as outside (docs/compatibility.md)";
    const SIGNALS: &str = "signals and timers of the caller's own: the signal module, Node's process.on, sleep";
    const TIME: &str = "reading the clocks and sleeping (setting them is refused below)";
    const NETWORK: &str =
        "sockets of the allowed families (the socket rules below): loopback servers, unix sockets, getaddrinfo";
    const IPC: &str = "System V and POSIX IPC, private to the sandbox's own IPC namespace: multiprocessing's semaphores and shared memory";
    const AIO: &str = "Linux native AIO, used by libaio-based tools; bounded by the per-user aio-max-nr";
    const SELF_CONFINEMENT: &str =
        "programs may confine themselves further (Chromium, systemd-run style tools, tests of seccomp and Landlock)";
    const RANDOM: &str = "entropy for os.urandom, crypto and hash seeds";

    let mut allowed = [
        allow!(FILES;
            SYS_read, SYS_write, SYS_close, SYS_fstat, SYS_lseek, SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev,
            SYS_preadv, SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_dup, SYS_dup3, SYS_fcntl, SYS_flock, SYS_fsync,
            SYS_fdatasync, SYS_sync, SYS_syncfs, SYS_sync_file_range, SYS_truncate, SYS_ftruncate, SYS_fallocate,
            SYS_getdents64, SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_fchown, SYS_umask, SYS_statfs, SYS_fstatfs,
            SYS_newfstatat, SYS_statx, SYS_unlinkat, SYS_renameat, SYS_renameat2, SYS_linkat, SYS_symlinkat,
            SYS_readlinkat, SYS_mkdirat, SYS_fchownat, SYS_faccessat, SYS_faccessat2, SYS_utimensat, SYS_pipe2,
            SYS_splice, SYS_tee, SYS_vmsplice, SYS_sendfile, SYS_copy_file_range, SYS_readahead, SYS_fadvise64,
            SYS_close_range, SYS_memfd_create,
        ),
        allow!(XATTR;
            SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr, SYS_listxattr,
            SYS_llistxattr, SYS_flistxattr, SYS_removexattr, SYS_lremovexattr, SYS_fremovexattr,
        ),
        allow!(WAIT;
            SYS_pselect6, SYS_ppoll, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2,
            SYS_eventfd2, SYS_signalfd4, SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime,
            SYS_inotify_init1, SYS_inotify_add_watch, SYS_inotify_rm_watch,
        ),
        allow!(MEMORY;
            SYS_mmap, SYS_mprotect, SYS_munmap, SYS_brk, SYS_mremap, SYS_msync, SYS_mincore, SYS_madvise, SYS_mlock,
            SYS_mlock2, SYS_munlock, SYS_mlockall, SYS_munlockall, SYS_membarrier, SYS_pkey_mprotect, SYS_pkey_alloc,
            SYS_pkey_free, SYS_mbind, SYS_set_mempolicy, SYS_get_mempolicy, SYS_remap_file_pages,
        ),
        allow!(PROCESS;
            SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group, SYS_wait4, SYS_waitid, SYS_getpid, SYS_getppid,
            SYS_gettid, SYS_getpgid, SYS_setpgid, SYS_getsid, SYS_setsid, SYS_set_tid_address, SYS_set_robust_list,
            SYS_get_robust_list, SYS_rseq, SYS_prctl, SYS_futex, SYS_futex_waitv, SYS_uname, SYS_sysinfo,
            SYS_getcpu, SYS_getrusage, SYS_times, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_capget, SYS_capset,
            SYS_restart_syscall,
        ),
        allow!(SCHEDULING;
            SYS_sched_yield, SYS_sched_setparam, SYS_sched_getparam, SYS_sched_setscheduler, SYS_sched_getscheduler,
            SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_rr_get_interval,
            SYS_sched_setaffinity, SYS_sched_getaffinity, SYS_sched_setattr, SYS_sched_getattr, SYS_getpriority,
            SYS_setpriority, SYS_ioprio_get, SYS_ioprio_set, SYS_getrlimit, SYS_setrlimit, SYS_prlimit64,
        ),
        allow!(IDS;
            SYS_getuid, SYS_getgid, SYS_geteuid, SYS_getegid, SYS_setuid, SYS_setgid, SYS_setreuid, SYS_setregid,
            SYS_setresuid, SYS_getresuid, SYS_setresgid, SYS_getresgid, SYS_setfsuid, SYS_setfsgid, SYS_getgroups,
            SYS_setgroups,
        ),
        allow!(SIGNALS;
            SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigpending, SYS_rt_sigtimedwait,
            SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_rt_sigsuspend, SYS_sigaltstack, SYS_kill, SYS_tkill,
            SYS_tgkill, SYS_getitimer, SYS_setitimer, SYS_timer_create, SYS_timer_settime, SYS_timer_gettime,
            SYS_timer_getoverrun, SYS_timer_delete,
        ),
        allow!(TIME; SYS_gettimeofday, SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep),
        allow!(NETWORK;
            SYS_connect, SYS_accept, SYS_accept4, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg,
            SYS_recvmmsg, SYS_shutdown, SYS_bind, SYS_listen, SYS_getsockname, SYS_getpeername, SYS_setsockopt,
            SYS_getsockopt,
        ),
        allow!(IPC;
            SYS_shmget, SYS_shmat, SYS_shmctl, SYS_shmdt, SYS_semget, SYS_semop, SYS_semctl, SYS_semtimedop,
            SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_mq_open, SYS_mq_unlink, SYS_mq_timedsend,
            SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr,
        ),
        allow!(AIO; SYS_io_setup, SYS_io_destroy, SYS_io_getevents, SYS_io_submit, SYS_io_cancel),
        allow!(SELF_CONFINEMENT;
            SYS_seccomp, SYS_landlock_create_ruleset, SYS_landlock_add_rule, SYS_landlock_restrict_self,
        ),
        allow!(RANDOM; SYS_getrandom),
    ]
    .concat();
    allowed.push(SyscallRule {
        name: "io_pgetevents",
        nr: SYS_IO_PGETEVENTS,
        verdict: Verdict::Allow,
        when: Vec::new(),
        why: AIO,
    });
    #[cfg(target_arch = "x86_64")]
    allowed.extend(
        [
            allow!("the x86_64 forms of the calls above that newer architectures only have in their *at or p* form; glibc and static binaries (Node's, Go's) still make them";
                SYS_stat, SYS_lstat, SYS_poll, SYS_access, SYS_pipe, SYS_select, SYS_dup2, SYS_pause, SYS_alarm,
                SYS_fork, SYS_vfork, SYS_getdents, SYS_rename, SYS_mkdir, SYS_rmdir, SYS_link, SYS_unlink,
                SYS_symlink, SYS_readlink, SYS_chown, SYS_lchown, SYS_utime, SYS_utimes, SYS_futimesat, SYS_time,
                SYS_getpgrp, SYS_epoll_create, SYS_epoll_wait, SYS_eventfd, SYS_signalfd, SYS_inotify_init,
            ),
            allow!("thread-local storage setup of the x86_64 ABI (glibc, V8)";
                SYS_arch_prctl, SYS_set_thread_area, SYS_get_thread_area,
            ),
        ]
        .concat(),
    );
    allowed
}

/// Calls of the target's syscall table that no program of ours needs and that no other rule
/// names: they get `ENOSYS` like any unnamed call, and are listed so the table is complete
/// (a unit test checks it) and a new entry is a conscious choice.
fn not_needed() -> Vec<SyscallRule> {
    const ENOSYS: Verdict = Verdict::Errno(libc::ENOSYS);
    const OTHER_PROCESSES: &str = "moves or reclaims another process's memory; nothing in the sandbox manages others";
    const HOSTNAME: &str = "the agent sets the sandbox's hostname; the code lacks the capability anyway";
    let mut rules = vec![
        rule!(SYS_migrate_pages, ENOSYS, OTHER_PROCESSES),
        rule!(SYS_move_pages, ENOSYS, OTHER_PROCESSES),
        rule!(SYS_process_mrelease, ENOSYS, OTHER_PROCESSES),
        rule!(SYS_set_mempolicy_home_node, ENOSYS, "NUMA home-node tuning for databases on big machines"),
        rule!(
            SYS_memfd_secret,
            ENOSYS,
            "secret memory removed from the kernel's direct map; off by default and unused by runtimes"
        ),
        rule!(SYS_fanotify_mark, ENOSYS, "only useful after fanotify_init, which is refused"),
        rule!(SYS_sethostname, EPERM, HOSTNAME),
        rule!(SYS_setdomainname, EPERM, HOSTNAME),
        rule!(SYS_nfsservctl, ENOSYS, "removed from the kernel in 3.1"),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        const OBSOLETE: &str = "obsolete or never implemented on x86_64; the kernel itself answers ENOSYS or EINVAL";
        rules.extend([
            rule!(SYS_uselib, ENOSYS, OBSOLETE),
            rule!(SYS_ustat, ENOSYS, OBSOLETE),
            rule!(SYS_sysfs, ENOSYS, OBSOLETE),
            rule!(SYS__sysctl, ENOSYS, OBSOLETE),
            rule!(SYS_getpmsg, ENOSYS, OBSOLETE),
            rule!(SYS_putpmsg, ENOSYS, OBSOLETE),
            rule!(SYS_afs_syscall, ENOSYS, OBSOLETE),
            rule!(SYS_tuxcall, ENOSYS, OBSOLETE),
            rule!(SYS_security, ENOSYS, OBSOLETE),
            rule!(SYS_vserver, ENOSYS, OBSOLETE),
            rule!(SYS_epoll_ctl_old, ENOSYS, OBSOLETE),
            rule!(SYS_epoll_wait_old, ENOSYS, OBSOLETE),
        ]);
        // Numbers the libc crate no longer names (they were removed from the kernel in 2.6).
        for (name, nr) in [("create_module", 174), ("get_kernel_syms", 177), ("query_module", 178)] {
            rules.push(SyscallRule { name, nr, verdict: ENOSYS, when: Vec::new(), why: OBSOLETE });
        }
    }
    rules
}

/// The syscall policy for sandboxed programs: the allowlist, the calls refused with a reason,
/// and `DEFAULT_VERDICT` for everything else.
pub fn sandbox_policy() -> Vec<SyscallRule> {
    let mut policy = allowed_syscalls();
    policy.extend(refused_syscalls());
    policy.extend(not_needed());
    policy
}

/// The calls refused with an explained reason (wholly, or with the arguments given).
fn refused_syscalls() -> Vec<SyscallRule> {
    const KEYRING: &str = "kernel keyrings are host-wide state outside every namespace; runtimes never use them";
    const MOUNT: &str =
        "the filesystem view is fixed by the agent; remounting could undo bind mounts and Landlock's path assumptions";
    const IO_URING: &str = "io_uring runs operations seccomp cannot see and has a long LPE record; libuv and asyncio fall back to epoll/threads";
    const MODULES: &str = "loading or removing kernel code is host administration";
    const KEXEC: &str = "replacing the running kernel is host administration";
    const CROSS_PROCESS: &str =
        "reads or steers another process's memory or descriptors; nothing in the sandbox debugs others";
    const HANDLES: &str = "file handles bypass path-based confinement (the 'shocker' container escape)";
    const SWAP: &str = "swap configuration is host administration";
    const QUOTA: &str = "disk quotas are host administration";
    const CLOCK: &str = "the system clock is shared with the host";
    const PORT_IO: &str = "raw x86 I/O-port access";
    const CLONE_NS: &str = "new namespaces (user ns above all) unlock CAP_*-gated kernel code such as nf_tables; the agent builds all namespaces itself";
    const TTY: &str = "fakes input on or reconfigures a terminal that may belong to someone outside the sandbox";
    const SOCKET_FAMILY: &str = "only unix, IPv4/IPv6 and route-netlink are needed; other families (packet, vsock, bluetooth, alg, rds, tipc...) are rarely exercised kernel code. EAFNOSUPPORT is what a kernel without the family returns, so callers fall back";
    const NETLINK: &str = "glibc getaddrinfo/getifaddrs and Node's os.networkInterfaces() read NETLINK_ROUTE (denying it makes networkInterfaces() throw; mutations still need CAP_NET_ADMIN, which the sandbox lacks); other netlink protocols (netfilter, generic, audit...) are attack surface only";

    let mut rules = vec![
        rule!(SYS_keyctl, EPERM, KEYRING),
        rule!(SYS_add_key, EPERM, KEYRING),
        rule!(SYS_request_key, EPERM, KEYRING),
        rule!(SYS_bpf, EPERM, "the eBPF verifier and JIT are a prime kernel attack surface"),
        rule!(SYS_perf_event_open, EPERM, "performance counters leak side channels and have many CVEs"),
        rule!(SYS_userfaultfd, EPERM, "lets an exploit stall kernel copies at will to win races"),
        rule!(SYS_io_uring_setup, EPERM, IO_URING),
        rule!(SYS_io_uring_enter, EPERM, IO_URING),
        rule!(SYS_io_uring_register, EPERM, IO_URING),
        rule!(SYS_mount, EPERM, MOUNT),
        rule!(SYS_umount2, EPERM, MOUNT),
        rule!(SYS_pivot_root, EPERM, MOUNT),
        rule!(SYS_chroot, EPERM, MOUNT),
        rule!(SYS_move_mount, EPERM, MOUNT),
        rule!(SYS_open_tree, EPERM, MOUNT),
        rule!(SYS_fsopen, EPERM, MOUNT),
        rule!(SYS_fsconfig, EPERM, MOUNT),
        rule!(SYS_fsmount, EPERM, MOUNT),
        rule!(SYS_fspick, EPERM, MOUNT),
        rule!(SYS_mount_setattr, EPERM, MOUNT),
        rule!(SYS_unshare, EPERM, CLONE_NS),
        rule!(SYS_setns, EPERM, "joining a namespace via an inherited or /proc descriptor steps outside the sandbox's"),
        rule!(SYS_ptrace, EPERM, CROSS_PROCESS),
        rule!(SYS_process_vm_readv, EPERM, CROSS_PROCESS),
        rule!(SYS_process_vm_writev, EPERM, CROSS_PROCESS),
        rule!(SYS_process_madvise, EPERM, CROSS_PROCESS),
        rule!(SYS_pidfd_getfd, EPERM, CROSS_PROCESS),
        rule!(SYS_kcmp, EPERM, "compares kernel objects across processes, an info leak and exploitation aid"),
        rule!(SYS_kexec_load, EPERM, KEXEC),
        rule!(SYS_kexec_file_load, EPERM, KEXEC),
        rule!(SYS_init_module, EPERM, MODULES),
        rule!(SYS_finit_module, EPERM, MODULES),
        rule!(SYS_delete_module, EPERM, MODULES),
        rule!(SYS_open_by_handle_at, EPERM, HANDLES),
        rule!(SYS_name_to_handle_at, EPERM, HANDLES),
        rule!(SYS_swapon, EPERM, SWAP),
        rule!(SYS_swapoff, EPERM, SWAP),
        rule!(SYS_reboot, EPERM, "host administration"),
        rule!(SYS_acct, EPERM, "process accounting is host administration"),
        rule!(SYS_quotactl, EPERM, QUOTA),
        rule!(SYS_quotactl_fd, EPERM, QUOTA),
        rule!(SYS_syslog, EPERM, "the kernel log leaks host activity and kernel addresses"),
        rule!(SYS_lookup_dcookie, EPERM, "profiling interface that resolves kernel dentry cookies"),
        rule!(SYS_settimeofday, EPERM, CLOCK),
        rule!(SYS_clock_settime, EPERM, CLOCK),
        rule!(SYS_clock_adjtime, EPERM, CLOCK),
        rule!(SYS_adjtimex, EPERM, CLOCK),
        rule!(SYS_vhangup, EPERM, "hangs up the controlling terminal, which may be shared"),
        rule!(SYS_fanotify_init, EPERM, "filesystem-wide event monitoring"),
        rule!(
            SYS_personality,
            EPERM,
            [ArgCondition::ne32(0, 0), ArgCondition::ne32(0, u64::from(u32::MAX))],
            "only the query (0xffffffff) and PER_LINUX are needed; other personas disable ASLR (ADDR_NO_RANDOMIZE) or make data executable (READ_IMPLIES_EXEC)"
        ),
        rule!(SYS_ioctl, EPERM, [ArgCondition::eq32(1, libc::TIOCSTI)], TTY),
        rule!(SYS_ioctl, EPERM, [ArgCondition::eq32(1, libc::TIOCLINUX)], TTY),
        rule!(
            SYS_ioctl,
            EPERM,
            [ArgCondition::eq32(1, libc::TIOCSETD)],
            "line-discipline switches reach seldom-used drivers (n_gsm, n_hdlc CVEs); nothing in the sandbox changes them"
        ),
        rule!(
            SYS_clone3,
            Verdict::Errno(libc::ENOSYS),
            "its flags live in memory that seccomp cannot inspect; ENOSYS makes glibc fall back to clone(2), whose flags we check"
        ),
        rule!(
            SYS_socket,
            Verdict::Errno(libc::EAFNOSUPPORT),
            [
                ArgCondition::ne32(0, bits(libc::AF_UNIX)),
                ArgCondition::ne32(0, bits(libc::AF_INET)),
                ArgCondition::ne32(0, bits(libc::AF_INET6)),
                ArgCondition::ne32(0, bits(libc::AF_NETLINK)),
            ],
            SOCKET_FAMILY
        ),
        rule!(
            SYS_socket,
            Verdict::Errno(libc::EAFNOSUPPORT),
            [ArgCondition::eq32(0, bits(libc::AF_NETLINK)), ArgCondition::ne32(2, bits(libc::NETLINK_ROUTE)),],
            NETLINK
        ),
        rule!(
            SYS_socketpair,
            Verdict::Errno(libc::EAFNOSUPPORT),
            [ArgCondition::ne32(0, bits(libc::AF_UNIX))],
            "only unix socket pairs exist in practice; other families would still instantiate their socket code"
        ),
    ];
    rules.push(rule!(
        SYS_openat2,
        Verdict::Errno(libc::ENOSYS),
        "its mode lives in memory that seccomp cannot inspect (see SETID below); ENOSYS is what kernels before 5.6 answer, and libc falls back to openat"
    ));
    rules.extend(setid_mode_rules());
    rules.extend(
        NAMESPACE_CLONE_FLAGS
            .iter()
            .map(|&flag| rule!(SYS_clone, EPERM, [ArgCondition::has_bits64(0, bits(flag))], CLONE_NS)),
    );
    #[cfg(target_arch = "x86_64")]
    rules.extend([
        rule!(SYS_iopl, EPERM, PORT_IO),
        rule!(SYS_ioperm, EPERM, PORT_IO),
        rule!(SYS_modify_ldt, EPERM, "segment-descriptor editing is for Wine/DOSEMU and has a CVE history"),
    ]);
    rules
}

/// `io_pgetevents` (Linux 4.18), which the libc crate does not name for every target.
#[cfg(target_arch = "x86_64")]
const SYS_IO_PGETEVENTS: i64 = 333;
#[cfg(target_arch = "aarch64")]
const SYS_IO_PGETEVENTS: i64 = 292;

/// `fchmodat2` (Linux 6.6) has the same number on every architecture; libc names it only on some.
const SYS_FCHMODAT2: i64 = 452;

/// No call may give a file the setuid or setgid bit. Through an idmapped `:rw` volume, a file
/// the code creates belongs on the host to the volume's owner (possibly root), so such a bit
/// would hand that owner's rights to whoever runs it there. One rule per mode argument and bit.
fn setid_mode_rules() -> Vec<SyscallRule> {
    const SETID: &str = "a setuid/setgid file made in a :rw volume would run as the volume owner's on the host; nothing in a sandbox needs one";
    let mut rules = Vec::new();
    for bit in [u64::from(libc::S_ISUID), u64::from(libc::S_ISGID)] {
        rules.extend([
            rule!(SYS_fchmod, EPERM, [ArgCondition::has_bits32(1, bit)], SETID),
            rule!(SYS_fchmodat, EPERM, [ArgCondition::has_bits32(2, bit)], SETID),
            rule!(SYS_openat, EPERM, [ArgCondition::has_bits32(3, bit)], SETID),
            rule!(SYS_mknodat, EPERM, [ArgCondition::has_bits32(2, bit)], SETID),
            SyscallRule {
                name: "fchmodat2",
                nr: SYS_FCHMODAT2,
                verdict: EPERM,
                when: vec![ArgCondition::has_bits32(2, bit)],
                why: SETID,
            },
        ]);
        #[cfg(target_arch = "x86_64")]
        rules.extend([
            rule!(SYS_chmod, EPERM, [ArgCondition::has_bits32(1, bit)], SETID),
            rule!(SYS_creat, EPERM, [ArgCondition::has_bits32(1, bit)], SETID),
            rule!(SYS_open, EPERM, [ArgCondition::has_bits32(2, bit)], SETID),
            rule!(SYS_mknod, EPERM, [ArgCondition::has_bits32(1, bit)], SETID),
        ]);
    }
    rules
}

/// Compiles `policy` into BPF programs: on x86_64 the ABI guard; the allowlist, which lets
/// through every call the policy names and answers `DEFAULT_VERDICT` to the rest; and one
/// program per distinct refusal (seccompiler gives each filter a single match action), which
/// decide the named calls. Install all of them. No call gets different errnos from two
/// programs, so the outcome never depends on the kernel's tie-break between filters.
pub fn compile(policy: &[SyscallRule]) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut seen: BTreeMap<i64, (Verdict, bool)> = BTreeMap::new();
    let mut named: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut by_verdict: BTreeMap<Verdict, (SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = BTreeMap::new();
    for rule in policy {
        let Some(action) = rule.verdict.action() else {
            return Err(SeccompError::InvalidVerdict { syscall: rule.name, verdict: rule.verdict });
        };
        let unconditional = rule.when.is_empty();
        if let Some((verdict, was_unconditional)) = seen.insert(rule.nr, (rule.verdict, unconditional))
            && (verdict != rule.verdict || was_unconditional || unconditional)
        {
            return Err(SeccompError::AmbiguousRules { syscall: rule.name });
        }
        // seccompiler reads an empty chain as "match on the number alone".
        named.entry(rule.nr).or_default();
        if rule.verdict == Verdict::Allow {
            if !unconditional {
                return Err(SeccompError::ConditionalAllow { syscall: rule.name });
            }
            continue;
        }
        let (_, chains) = by_verdict.entry(rule.verdict).or_insert_with(|| (action, BTreeMap::new()));
        let chain = chains.entry(rule.nr).or_default();
        if !unconditional {
            let conditions =
                rule.when.iter().map(|condition| condition.to_seccompiler()).collect::<Result<Vec<_>, _>>()?;
            chain.push(SeccompRule::new(conditions)?);
        }
    }

    let mut programs = Vec::with_capacity(by_verdict.len() + 2);
    #[cfg(target_arch = "x86_64")]
    programs.push(x86_64_abi_guard()?);
    let Some(default_action) = DEFAULT_VERDICT.action() else {
        return Err(SeccompError::InvalidVerdict { syscall: "default", verdict: DEFAULT_VERDICT });
    };
    let allowlist = SeccompFilter::new(named, default_action, SeccompAction::Allow, TARGET_ARCH)?;
    programs.push(BpfProgram::try_from(allowlist)?);
    for (action, rules) in by_verdict.into_values() {
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, TARGET_ARCH)?;
        programs.push(BpfProgram::try_from(filter)?);
    }
    Ok(programs)
}

/// Loads `programs` onto the calling thread (no TSYNC: it runs in the single-threaded child
/// right before `execve`, and everything it spawns inherits the filters).
///
/// Nothing here allocates, so it is safe as the last step before `execve`. seccompiler sets
/// `PR_SET_NO_NEW_PRIVS` again for each program, a no-op after the caller's. On error some
/// filters may already be active; the caller must abandon the child rather than retry.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// A call through a foreign ABI (the 32-bit `int 0x80` entry) would be matched against the
/// wrong syscall numbers, and nothing we run makes one.
#[cfg(target_arch = "x86_64")]
const FOREIGN_ARCH_VERDICT: Verdict = Verdict::KillProcess;

/// x32 calls share `AUDIT_ARCH_X86_64` but set bit 30 of the number, so the number-based
/// filters would not recognise e.g. x32 `keyctl`. ENOSYS rather than a kill: it is exactly what
/// a kernel without `CONFIG_X86_X32_ABI` (Debian's default) answers, so nothing legitimate can
/// depend on more, while a kill would only turn a harmless probe into a crash.
#[cfg(target_arch = "x86_64")]
const X32_VERDICT: Verdict = Verdict::Errno(libc::ENOSYS);

/// `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`; libc does not export it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Hand-written prologue filter: kill on a foreign architecture, refuse the x32 ABI, allow the
/// rest (the per-verdict filters then decide).
#[cfg(target_arch = "x86_64")]
fn x86_64_abi_guard() -> Result<BpfProgram, SeccompError> {
    use seccompiler::sock_filter;
    use std::mem::offset_of;

    // libc types BPF opcodes as u32; every opcode fits the u16 `code` field.
    const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const ARCH: u32 = offset_of!(libc::seccomp_data, arch) as u32;
    const NR: u32 = offset_of!(libc::seccomp_data, nr) as u32;

    let ret = |verdict: Verdict, syscall| match verdict.action() {
        Some(action) => Ok(u32::from(action)),
        None => Err(SeccompError::InvalidVerdict { syscall, verdict }),
    };
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    Ok(vec![
        insn(LD_ABS_W, 0, 0, ARCH),
        insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, ret(FOREIGN_ARCH_VERDICT, "foreign-arch guard")?),
        insn(LD_ABS_W, 0, 0, NR),
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, ret(X32_VERDICT, "x32 guard")?),
        insn(RET_K, 0, 0, u32::from(SeccompAction::Allow)),
    ])
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    use seccompiler::sock_filter;
    use std::collections::HashSet;
    use std::io;
    use std::path::Path;
    use std::process::Command;

    use nix::sys::signal::Signal;
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    use crate::engine::test_support::{feature_missing, in_child};

    const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

    fn programs() -> Vec<BpfProgram> {
        compile(&sandbox_policy()).expect("the built-in policy compiles")
    }

    // ---- pure tests ------------------------------------------------------------------

    #[test]
    fn policy_denies_every_required_syscall() {
        let eperm = [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "unshare",
            "setns",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "name_to_handle_at",
            "swapon",
            "swapoff",
            "reboot",
            "acct",
            "quotactl",
            "quotactl_fd",
            "syslog",
            "lookup_dcookie",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "vhangup",
            "personality",
            "iopl",
            "ioperm",
            "fanotify_init",
            "kcmp",
            "pidfd_getfd",
            "ioctl",
            "clone",
        ];
        let policy = sandbox_policy();
        let verdict_of = |name: &str| policy.iter().find(|rule| rule.name == name).map(|rule| rule.verdict);
        for name in eperm {
            assert_eq!(verdict_of(name), Some(EPERM), "{name}");
        }
        assert_eq!(verdict_of("clone3"), Some(Verdict::Errno(libc::ENOSYS)));
        assert_eq!(verdict_of("socket"), Some(Verdict::Errno(libc::EAFNOSUPPORT)));
        for allowed in ["landlock_create_ruleset", "seccomp", "execve", "clone", "openat", "socket"] {
            let refused = policy.iter().any(|r| r.name == allowed && r.when.is_empty() && r.verdict != Verdict::Allow);
            assert!(!refused, "{allowed} must stay usable");
            assert!(policy.iter().any(|r| r.name == allowed), "{allowed} must be named");
        }
    }

    #[test]
    fn policy_has_no_duplicates_and_explains_itself() {
        let policy = sandbox_policy();
        let mut rules = HashSet::new();
        let mut names = BTreeMap::new();
        for rule in &policy {
            assert!(rules.insert((rule.nr, format!("{:?}", rule.when))), "duplicate {rule:?}");
            assert_eq!(*names.entry(rule.name).or_insert(rule.nr), rule.nr, "{}", rule.name);
            assert!(!rule.why.is_empty(), "{} has no reason", rule.name);
            assert!(rule.when.iter().all(|c| c.index <= 5), "{}", rule.name);
        }
    }

    #[test]
    fn compiled_programs_fit_the_kernel_limit() {
        let programs = programs();
        // Guard + allowlist + EPERM + ENOSYS + EAFNOSUPPORT.
        assert_eq!(programs.len(), 5);
        for program in &programs {
            assert!(!program.is_empty());
            assert!(program.len() < libc::BPF_MAXINSNS as usize, "{} insns", program.len());
        }
    }

    /// The build target's syscall table, from the kernel headers (`linux-libc-dev`, installed by
    /// scripts/setup.sh): every `#define __NR_<name> <number>` of asm/unistd_64.h.
    fn target_syscall_table() -> Vec<(String, i64)> {
        const HEADER: &str = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
        let text = std::fs::read_to_string(HEADER)
            .unwrap_or_else(|error| panic!("{HEADER}: {error} (install linux-libc-dev: scripts/setup.sh)"));
        let table: Vec<(String, i64)> = text
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let (Some("#define"), Some(name), Some(number)) = (words.next(), words.next(), words.next()) else {
                    return None;
                };
                Some((name.strip_prefix("__NR_")?.to_owned(), number.parse().ok()?))
            })
            .collect();
        assert!(table.len() > 300, "{HEADER} lists only {} syscalls", table.len());
        table
    }

    #[test]
    fn every_syscall_of_the_target_is_allowed_or_named() {
        let policy = sandbox_policy();
        let mut unnamed = Vec::new();
        for (name, nr) in target_syscall_table() {
            match policy.iter().find(|rule| rule.nr == nr) {
                Some(rule) => assert_eq!(rule.name, name, "the policy's number {nr} is {name} in the kernel's table"),
                None => unnamed.push(name),
            }
        }
        assert!(
            unnamed.is_empty(),
            "allow these in a group of allowed_syscalls, or name them with a reason: {unnamed:?}"
        );
    }

    #[test]
    fn clone_mask_covers_every_namespace_flag() {
        let covered = sandbox_policy()
            .iter()
            .filter(|rule| rule.nr == libc::SYS_clone && rule.verdict == EPERM)
            .flat_map(|rule| &rule.when)
            .filter(|c| c.index == 0 && c.width == ArgWidth::U64)
            .fold(0, |acc, c| match c.cmp {
                ArgCmp::HasBits(bits) => acc | bits,
                _ => acc,
            });
        let all = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWCGROUP;
        assert_eq!(covered & bits(all), bits(all));
    }

    #[test]
    fn compile_rejects_inconsistent_policies() {
        let base = |verdict, when: Vec<ArgCondition>| SyscallRule {
            name: "getpid",
            nr: libc::SYS_getpid,
            verdict,
            when,
            why: "test",
        };
        let cond = ArgCondition::eq32(0, 1);
        for policy in [
            vec![base(EPERM, vec![]), base(Verdict::Errno(libc::ENOSYS), vec![])],
            vec![base(EPERM, vec![]), base(EPERM, vec![cond])],
            vec![base(EPERM, vec![cond]), base(Verdict::KillProcess, vec![cond])],
        ] {
            assert!(matches!(compile(&policy), Err(SeccompError::AmbiguousRules { .. })));
        }
        for errno in [0, -1, 4096] {
            let policy = [base(Verdict::Errno(errno), vec![])];
            assert!(matches!(compile(&policy), Err(SeccompError::InvalidVerdict { .. })));
        }
        let conditional_allow = [base(Verdict::Allow, vec![cond])];
        assert!(matches!(compile(&conditional_allow), Err(SeccompError::ConditionalAllow { .. })));
        let too_many_args = [base(EPERM, vec![ArgCondition::eq32(6, 0)])];
        assert!(matches!(compile(&too_many_args), Err(SeccompError::Build(_))));
    }

    /// Runs a classic-BPF program the way the kernel does, for the opcodes the compiler emits.
    fn run_bpf(program: &[sock_filter], data: &libc::seccomp_data) -> u32 {
        let mut words = vec![data.nr as u32, data.arch];
        for value in std::iter::once(data.instruction_pointer).chain(data.args) {
            words.extend([value as u32, (value >> 32) as u32]);
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            let (code, k) = (u32::from(insn.code), insn.k);
            let jump = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            pc += 1;
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = words[k as usize / 4],
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += k as usize,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => pc += jump(acc == k),
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => pc += jump(acc > k),
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => pc += jump(acc >= k),
                c if c == libc::BPF_RET | libc::BPF_K => return k,
                other => panic!("unexpected BPF opcode {other:#x}"),
            }
        }
    }

    /// Combines the filters like the kernel: the most restrictive action wins, ties go to the
    /// most recently installed filter.
    fn evaluate(programs: &[BpfProgram], arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        let data = libc::seccomp_data { nr: nr as i32, arch, instruction_pointer: 0, args };
        let rank = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32;
        programs
            .iter()
            .rev()
            .map(|p| run_bpf(p, &data))
            .fold(libc::SECCOMP_RET_ALLOW, |a, b| if rank(b) < rank(a) { b } else { a })
    }

    fn errno(e: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | e as u32
    }

    #[test]
    fn filters_decide_like_the_policy_says() {
        let p = programs();
        let x86 = |nr, args| evaluate(&p, AUDIT_ARCH_X86_64, nr, args);
        let allow = libc::SECCOMP_RET_ALLOW;
        let args = |a: u64, b: u64, c: u64| [a, b, c, 0, 0, 0];

        assert_eq!(x86(libc::SYS_getpid, [0; 6]), allow);
        assert_eq!(x86(SYS_IO_PGETEVENTS, [0; 6]), allow);
        assert_eq!(x86(libc::SYS_keyctl, [0; 6]), errno(libc::EPERM));
        // Unknown to the policy: newer calls (cachestat, listmount, mseal) and unassigned numbers.
        for nr in [451, SYS_LISTMOUNT, 462, 1000] {
            assert_eq!(x86(nr, [0; 6]), errno(libc::ENOSYS), "{nr}");
        }
        assert_eq!(x86(libc::SYS_migrate_pages, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(x86(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
        // x32 numbering and the i386 ABI.
        assert_eq!(x86(libc::SYS_keyctl | 0x4000_0000, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(x86(libc::SYS_getpid | 0x4000_0000, [0; 6]), errno(libc::ENOSYS));
        assert_eq!(evaluate(&p, AUDIT_ARCH_I386, 20, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);

        let tiocsti = libc::TIOCSTI;
        assert_eq!(x86(libc::SYS_ioctl, args(0, tiocsti, 0)), errno(libc::EPERM));
        assert_eq!(x86(libc::SYS_ioctl, args(0, tiocsti | 1 << 32, 0)), errno(libc::EPERM));
        assert_eq!(x86(libc::SYS_ioctl, args(0, libc::TIOCLINUX, 0)), errno(libc::EPERM));
        assert_eq!(x86(libc::SYS_ioctl, args(0, libc::TCGETS, 0)), allow);

        let fork_flags = bits(libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD);
        let thread_flags = bits(
            libc::CLONE_VM
                | libc::CLONE_FS
                | libc::CLONE_FILES
                | libc::CLONE_SIGHAND
                | libc::CLONE_THREAD
                | libc::CLONE_SYSVSEM
                | libc::CLONE_SETTLS
                | libc::CLONE_PARENT_SETTID
                | libc::CLONE_CHILD_CLEARTID,
        );
        assert_eq!(x86(libc::SYS_clone, args(fork_flags, 0, 0)), allow);
        assert_eq!(x86(libc::SYS_clone, args(thread_flags, 0, 0)), allow);
        for flag in NAMESPACE_CLONE_FLAGS {
            let flags = fork_flags | bits(flag);
            assert_eq!(x86(libc::SYS_clone, args(flags, 0, 0)), errno(libc::EPERM), "{flag:#x}");
        }

        let socket = |domain, protocol| x86(libc::SYS_socket, args(bits(domain), 1, bits(protocol)));
        assert_eq!(socket(libc::AF_UNIX, 0), allow);
        assert_eq!(socket(libc::AF_INET, 0), allow);
        assert_eq!(socket(libc::AF_INET6, 0), allow);
        assert_eq!(socket(libc::AF_NETLINK, libc::NETLINK_ROUTE), allow);
        assert_eq!(socket(libc::AF_NETLINK, libc::NETLINK_NETFILTER), errno(libc::EAFNOSUPPORT));
        for family in [libc::AF_PACKET, libc::AF_VSOCK, libc::AF_ALG, libc::AF_KEY, libc::AF_BLUETOOTH] {
            assert_eq!(socket(family, 0), errno(libc::EAFNOSUPPORT), "family {family}");
        }
        // Upper bits of an int argument are ignored by the kernel and must be by us too.
        assert_eq!(x86(libc::SYS_socket, args(1 << 32 | bits(libc::AF_INET), 1, 0)), allow);
        assert_eq!(x86(libc::SYS_socketpair, args(bits(libc::AF_UNIX), 1, 0)), allow);
        assert_eq!(x86(libc::SYS_socketpair, args(bits(libc::AF_INET), 1, 0)), errno(libc::EAFNOSUPPORT));

        assert_eq!(x86(libc::SYS_personality, args(0xffff_ffff, 0, 0)), allow);
        assert_eq!(x86(libc::SYS_personality, args(0, 0, 0)), allow);
        let no_aslr = bits(libc::ADDR_NO_RANDOMIZE);
        assert_eq!(x86(libc::SYS_personality, args(no_aslr, 0, 0)), errno(libc::EPERM));
    }

    // ---- behaviour tests in a forked, filtered child ---------------------------------

    /// Runs `body` in a forked child and returns how the child ended. Failures are written
    /// straight to fd 2: the test harness's output capture does not survive the fork.
    fn sandboxed(probe: impl FnOnce() -> Result<(), String>) -> WaitStatus {
        let programs = programs();
        in_child(move || {
            // SAFETY: plain prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
            }
            install(&programs).map_err(|e| format!("install: {e} ({e:?})"))?;
            probe()
        })
    }

    fn assert_exited_ok(status: WaitStatus) {
        assert!(matches!(status, WaitStatus::Exited(_, 0)), "child ended with {status:?}");
    }

    /// Checks that a raw syscall failed with `want`; errno is read before anything else runs.
    fn expect_errno(what: &str, ret: libc::c_long, want: i32) -> Result<(), String> {
        let got = io::Error::last_os_error().raw_os_error();
        if ret == -1 && got == Some(want) {
            Ok(())
        } else {
            Err(format!("{what}: returned {ret}, errno {got:?}, wanted errno {want}"))
        }
    }

    fn expect_ok(what: &str, ret: libc::c_long) -> Result<libc::c_long, String> {
        if ret >= 0 { Ok(ret) } else { Err(format!("{what}: {}", io::Error::last_os_error())) }
    }

    // Every probe below is either refused by the filter or made harmless by its arguments
    // (null pointers, paths that do not exist), so even a broken filter cannot disturb the host.

    #[test]
    fn keyctl_is_eperm() {
        assert_exited_ok(sandboxed(|| {
            // KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3).
            // SAFETY: integer arguments only.
            let ret = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 0) };
            expect_errno("keyctl", ret, libc::EPERM)
        }));
    }

    #[test]
    fn setuid_and_setgid_bits_cannot_be_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = std::ffi::CString::new(dir.path().join("f").as_os_str().as_encoded_bytes()).expect("path");
        let fresh = std::ffi::CString::new(dir.path().join("g").as_os_str().as_encoded_bytes()).expect("path");
        assert_exited_ok(sandboxed(move || {
            let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC;
            // SAFETY: a valid NUL-terminated path; the descriptor is closed below.
            let fd = expect_ok("create", unsafe { libc::open(path.as_ptr(), flags, 0o755) }.into())?;
            for mode in [0o4755, 0o2755, 0o6755] {
                // SAFETY: a valid path and integer arguments.
                expect_errno("chmod", unsafe { libc::chmod(path.as_ptr(), mode) }.into(), libc::EPERM)?;
                // SAFETY: an open descriptor and an integer mode.
                expect_errno("fchmod", unsafe { libc::fchmod(fd as i32, mode) }.into(), libc::EPERM)?;
                // SAFETY: a valid path and integer arguments.
                let at = unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) };
                expect_errno("fchmodat", at.into(), libc::EPERM)?;
                // SAFETY: a valid path and integer arguments.
                let created = unsafe { libc::openat(libc::AT_FDCWD, fresh.as_ptr(), flags, mode) };
                expect_errno("openat with a setid mode", created.into(), libc::EPERM)?;
            }
            // SAFETY: a valid path and integer arguments.
            expect_ok("chmod 0700", unsafe { libc::chmod(path.as_ptr(), 0o700) }.into())?;
            // SAFETY: closes the descriptor opened above.
            unsafe { libc::close(fd as i32) };
            Ok(())
        }));
    }

    #[test]
    fn unshare_user_ns_is_eperm() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: integer argument; a successful call only affects the throwaway child.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            expect_errno("unshare", ret.into(), libc::EPERM)
        }));
    }

    #[test]
    fn clone_with_namespace_flag_is_eperm() {
        assert_exited_ok(sandboxed(|| {
            let flags = libc::CLONE_NEWNET | libc::SIGCHLD;
            // SAFETY: fork-like clone (no new stack); a child created by a broken filter exits
            // at once.
            let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
            if ret == 0 {
                // SAFETY: immediate exit of the accidental child.
                unsafe { libc::_exit(0) }
            }
            expect_errno("clone(CLONE_NEWNET)", ret, libc::EPERM)
        }));
    }

    #[test]
    fn clone3_is_enosys() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: a null args pointer is rejected by the kernel even without the filter.
            let ret = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            expect_errno("clone3", ret, libc::ENOSYS)
        }));
    }

    /// `listmount` (Linux 6.8): the same number on every architecture.
    const SYS_LISTMOUNT: i64 = 458;

    #[test]
    fn a_call_outside_the_allowlist_is_enosys() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: null request and buffer pointers; the kernel rejects them even unfiltered.
            let ret = unsafe { libc::syscall(SYS_LISTMOUNT, 0, 0, 0, 0) };
            expect_errno("listmount", ret, libc::ENOSYS)?;
            // SAFETY: migrate_pages of pid 0 with null masks changes nothing even unfiltered.
            let ret = unsafe { libc::syscall(libc::SYS_migrate_pages, 0, 0, 0, 0) };
            expect_errno("migrate_pages", ret, libc::ENOSYS)
        }));
    }

    #[test]
    fn ptrace_traceme_is_eperm() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: integer arguments only.
            let ret = unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
            expect_errno("ptrace", ret, libc::EPERM)
        }));
    }

    #[test]
    fn tiocsti_is_eperm_even_with_high_bits() {
        assert_exited_ok(sandboxed(|| {
            let byte = b'x';
            for cmd in [libc::TIOCSTI, libc::TIOCSTI | 1 << 32] {
                // SAFETY: `byte` outlives the call.
                let ret = unsafe { libc::syscall(libc::SYS_ioctl, 0, cmd, &byte) };
                expect_errno("ioctl(TIOCSTI)", ret, libc::EPERM)?;
            }
            Ok(())
        }));
    }

    #[test]
    fn mount_is_eperm() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: NUL-terminated literals; the target does not exist, so even an unfiltered
            // call fails.
            let ret = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/nonexistent-bkg-seccomp-probe".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            expect_errno("mount", ret.into(), libc::EPERM)
        }));
    }

    #[test]
    fn x32_syscall_is_enosys() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: getpid takes no arguments.
            let ret = unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
            expect_errno("x32 getpid", ret, libc::ENOSYS)
        }));
    }

    #[test]
    fn unwanted_socket_families_and_personas_are_refused() {
        assert_exited_ok(sandboxed(|| {
            for (family, protocol) in
                [(libc::AF_PACKET, 0), (libc::AF_VSOCK, 0), (libc::AF_NETLINK, libc::NETLINK_NETFILTER)]
            {
                // SAFETY: integer arguments; a created socket would just leak in the child.
                let ret = unsafe { libc::socket(family, libc::SOCK_RAW, protocol) };
                expect_errno("socket", ret.into(), libc::EAFNOSUPPORT)?;
            }
            let no_aslr = libc::ADDR_NO_RANDOMIZE as libc::c_ulong;
            // SAFETY: integer argument; the persona would only change for the child.
            let ret = unsafe { libc::personality(no_aslr) };
            expect_errno("personality", ret.into(), libc::EPERM)
        }));
    }

    /// `int 0x80` (the i386 ABI) from a 64-bit process.
    fn int80_getpid() -> i64 {
        let ret: i64;
        // SAFETY: i386 getpid (20) reads no memory; the compat entry may clobber r8-r11.
        unsafe {
            std::arch::asm!(
                "int 0x80",
                inlateout("rax") 20i64 => ret,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                options(nostack),
            );
        }
        ret
    }

    #[test]
    fn i386_abi_kills_the_process() {
        let ia32_works = in_child(|| {
            let pid = i64::from(std::process::id());
            if int80_getpid() == pid { Ok(()) } else { Err("no ia32 emulation".into()) }
        });
        if !matches!(ia32_works, WaitStatus::Exited(_, 0)) {
            feature_missing(&format!("the kernel lacks ia32 emulation ({ia32_works:?})"));
            return;
        }
        let status = sandboxed(|| {
            int80_getpid();
            Err("int 0x80 survived".into())
        });
        assert!(matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, _)), "{status:?}");
    }

    #[test]
    fn ordinary_process_operations_still_work() {
        assert_exited_ok(sandboxed(|| {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            if u32::try_from(pid).ok() != Some(std::process::id()) {
                return Err(format!("getpid returned {pid}"));
            }

            // SAFETY: the forked grandchild only calls _exit.
            match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
                ForkResult::Child => {
                    // SAFETY: immediate exit of the grandchild.
                    unsafe { libc::_exit(7) }
                }
                ForkResult::Parent { child } => match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, 7)) => {}
                    other => return Err(format!("fork child: {other:?}")),
                },
            }

            // pthread_create tries clone3 first and must fall back to clone.
            let answer = std::thread::spawn(|| 6 * 7).join().map_err(|_| "thread panicked")?;
            if answer != 42 {
                return Err("thread returned garbage".into());
            }

            for (family, protocol) in
                [(libc::AF_UNIX, 0), (libc::AF_INET, 0), (libc::AF_INET6, 0), (libc::AF_NETLINK, libc::NETLINK_ROUTE)]
            {
                let kind = if family == libc::AF_NETLINK { libc::SOCK_RAW } else { libc::SOCK_STREAM };
                // SAFETY: creates and closes a socket we own.
                let fd = expect_ok("socket", unsafe { libc::socket(family, kind, protocol) }.into())?;
                // SAFETY: `fd` is ours and closed once.
                unsafe { libc::close(fd as i32) };
            }
            let mut pair = [0; 2];
            // SAFETY: `pair` has room for the two descriptors.
            let ret = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) };
            expect_ok("socketpair", ret.into())?;

            // SAFETY: the query persona changes nothing.
            let ret = unsafe { libc::personality(0xffff_ffff) };
            expect_ok("personality query", ret.into())?;

            let status = Command::new("/usr/bin/env").arg("true").status();
            match status {
                Ok(s) if s.success() => Ok(()),
                other => Err(format!("exec /usr/bin/env true: {other:?}")),
            }
        }));
    }

    fn run_interpreter(program: &str, args: &[&str]) {
        if !Path::new(program).exists() {
            feature_missing(&format!("{program} is not installed"));
            return;
        }
        assert_exited_ok(sandboxed(|| {
            let out = Command::new(program).args(args).output().map_err(|e| e.to_string())?;
            if out.status.success() && out.stdout.ends_with(b"ok\n") {
                Ok(())
            } else {
                Err(format!(
                    "{program}: {:?}\nstdout: {}\nstderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }));
    }

    #[test]
    fn python_workload_runs_under_the_filter() {
        const SCRIPT: &str = r#"
import asyncio, mmap, multiprocessing as mp, os, socket, subprocess, threading

t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
assert subprocess.run(["/usr/bin/env", "true"]).returncode == 0
for method in ("fork", "spawn", "forkserver"):
    with mp.get_context(method).Pool(2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
m = mmap.mmap(-1, 4096); m[0] = 1
a, b = socket.socketpair(); a.send(b"x"); assert b.recv(1) == b"x"
socket.getaddrinfo("localhost", 80)

async def main():
    async def handle(reader, writer):
        writer.write(await reader.read(1)); await writer.drain(); writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"y"); assert await reader.read(1) == b"y"
    writer.close(); server.close(); await server.wait_closed()
    proc = await asyncio.create_subprocess_exec("/usr/bin/env", "true")
    assert await proc.wait() == 0
asyncio.run(main())
print("ok")
"#;
        run_interpreter("/usr/bin/python3", &["-c", SCRIPT]);
    }

    #[test]
    fn node_workload_runs_under_the_filter() {
        const SCRIPT: &str = r#"
const { execFileSync } = require("child_process");
const { Worker } = require("worker_threads");
const fs = require("fs"), net = require("net"), os = require("os");
execFileSync("/usr/bin/env", ["true"]);
os.networkInterfaces();
fs.readFileSync("/usr/bin/env");
new Worker("require('worker_threads').parentPort.postMessage(1)", { eval: true }).once("message", () => {
  const server = net.createServer((s) => s.end("z")).listen(0, "127.0.0.1", () => {
    net.connect(server.address().port, "127.0.0.1").once("data", () => {
      server.close();
      fs.promises.readFile("/usr/bin/env").then(() => console.log("ok"));
    });
  });
});
"#;
        run_interpreter("/usr/bin/node", &["-e", SCRIPT]);
    }
}
