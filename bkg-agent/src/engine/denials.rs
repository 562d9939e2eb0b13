//! What a sandbox refused its code, as the run's result names it (`denials`): the system calls
//! the seccomp policy refused, counted by pid 1 as it answers them, the limit that ended the
//! run, if one did, the processes the memory limit killed in a run that went on, and the forks
//! the process limit refused in a run that ended before the agent saw it met.

use std::collections::BTreeMap;

use bkg_schema::{Denial, DenialKind, KilledBy};

/// The run's denials: refused system calls by name (most frequent first), then the limit. The
/// memory limit counts the processes the kernel killed for it (`oom_kills`): one may be a child
/// of a script that then went on (found by a new-user trial: nothing said why the child died).
/// The process limit counts the forks it refused (`pids_refused`): the agent ends a run that
/// meets it when it next looks (every `LIMIT_POLL`), and a script that went on past a refused
/// fork and ended first still says so (found by a new-user trial: the same script was killed at
/// the limit in two runs of six and said nothing of it in the others).
pub fn of_run(
    denied_syscalls: &[(i64, u64)],
    killed_by: Option<KilledBy>,
    (oom_kills, pids_refused): (u64, u64),
) -> Vec<Denial> {
    let denied = denied_syscalls.iter().filter(|(_, count)| *count > 0);
    // Named from the whole policy, built only for a run that was denied one (most are not, and
    // building it is most of what this costs each run's end).
    let names: BTreeMap<i64, &'static str> = match denied.clone().next() {
        Some(_) => super::seccomp::sandbox_policy().iter().map(|rule| (rule.nr, rule.name)).collect(),
        None => BTreeMap::new(),
    };
    let mut denials: Vec<Denial> = denied
        .map(|(nr, count)| Denial {
            kind: DenialKind::Seccomp,
            what: names.get(nr).map_or_else(|| format!("syscall {nr}"), |name| (*name).to_owned()),
            count: *count,
        })
        .collect();
    denials.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.what.cmp(&b.what)));
    let limit = match killed_by {
        Some(KilledBy::Timeout) => Some("timeout"),
        Some(KilledBy::Memory) => Some("memory"),
        Some(KilledBy::Pids) => Some("pids"),
        Some(KilledBy::Disk) => Some("disk"),
        Some(KilledBy::Cancelled | KilledBy::Shutdown | KilledBy::Interrupted) | None => None,
    };
    if let Some(limit) = limit.filter(|limit| !["memory", "pids"].contains(limit)) {
        denials.push(Denial { kind: DenialKind::Limit, what: limit.to_owned(), count: 1 });
    }
    if limit == Some("pids") || pids_refused > 0 {
        denials.push(Denial { kind: DenialKind::Limit, what: "pids".into(), count: pids_refused.max(1) });
    }
    if limit == Some("memory") || oom_kills > 0 {
        denials.push(Denial { kind: DenialKind::Limit, what: "memory".into(), count: oom_kills.max(1) });
    }
    denials
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscalls_are_named_by_the_policy_and_limits_follow() {
        let denials = of_run(&[(libc::SYS_ptrace, 2), (libc::SYS_mount, 5), (99_999, 1)], Some(KilledBy::Pids), (0, 0));
        let seen: Vec<(DenialKind, &str, u64)> =
            denials.iter().map(|denial| (denial.kind, denial.what.as_str(), denial.count)).collect();
        assert_eq!(
            seen,
            [
                (DenialKind::Seccomp, "mount", 5),
                (DenialKind::Seccomp, "ptrace", 2),
                (DenialKind::Seccomp, "syscall 99999", 1),
                (DenialKind::Limit, "pids", 1),
            ]
        );
        assert!(of_run(&[], Some(KilledBy::Cancelled), (0, 0)).is_empty());
    }

    /// The denials of a run that was refused no system call, as (kind, what, count).
    fn limits_of(killed_by: Option<KilledBy>, counts: (u64, u64)) -> Vec<(DenialKind, String, u64)> {
        of_run(&[], killed_by, counts).into_iter().map(|denial| (denial.kind, denial.what, denial.count)).collect()
    }

    #[test]
    fn processes_the_memory_limit_killed_are_counted_whether_or_not_the_run_ended_of_it() {
        let limits = |killed_by, oom_kills| limits_of(killed_by, (oom_kills, 0));
        assert_eq!(limits(None, 2), [(DenialKind::Limit, "memory".to_owned(), 2)]);
        assert_eq!(limits(Some(KilledBy::Memory), 3), [(DenialKind::Limit, "memory".to_owned(), 3)]);
        assert_eq!(limits(Some(KilledBy::Memory), 0), [(DenialKind::Limit, "memory".to_owned(), 1)]);
        assert_eq!(
            limits(Some(KilledBy::Timeout), 1),
            [(DenialKind::Limit, "timeout".to_owned(), 1), (DenialKind::Limit, "memory".to_owned(), 1)]
        );
    }

    #[test]
    fn forks_the_process_limit_refused_are_counted_whether_or_not_the_run_ended_of_it() {
        let limits = |killed_by, pids_refused| limits_of(killed_by, (0, pids_refused));
        assert_eq!(limits(None, 7), [(DenialKind::Limit, "pids".to_owned(), 7)]);
        assert_eq!(limits(Some(KilledBy::Pids), 3), [(DenialKind::Limit, "pids".to_owned(), 3)]);
        assert_eq!(limits(Some(KilledBy::Pids), 0), [(DenialKind::Limit, "pids".to_owned(), 1)]);
        assert_eq!(limits(None, 0), []);
    }
}
