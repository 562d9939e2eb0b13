"""In-sandbox posture probe of the bkg security suite (stdlib only).

Sent as the code of a run; prints one JSON object describing the sandbox as seen from inside:
ids and id maps, capabilities, no_new_privs, seccomp, mounts, namespaces, Landlock, processes,
hostname, devices, descriptors, environment.

It changes nothing: knobs are opened for writing and closed without a byte written, and the
only file it may create (to prove Landlock) is removed again at once.

Guard: it refuses to run outside a bkg sandbox (exit 86, BKG-GUARD-REFUSED on stderr), unless
BKG_PROBE_DRYRUN=1 is set AND it runs as an unprivileged user (never root). That dry-run mode
exists so the suite can show its posture tests failing against an unconfined process.
"""

import ctypes
import errno
import json
import os
import socket
import sys

GUARD_EXIT = 86
LANDLOCK_CREATE_RULESET = 444
LANDLOCK_CREATE_RULESET_VERSION = 1


def inside_sandbox():
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        with open("/proc/self/uid_map") as uid_map_file:
            uid_map = [line.split() for line in uid_map_file.read().splitlines()]
    except OSError:
        return False
    return (
        len(pids) < 20
        and os.getuid() == 1000
        and os.geteuid() == 1000
        and socket.gethostname() == "bkg"
        and os.path.isdir("/workspace")
        # root, the sandbox user and nobody, each mapped alone: a user namespace of our own
        and [(line[0], line[2]) for line in uid_map] == [("0", "1"), ("1000", "1"), ("65534", "1")]
        and not os.path.exists("/sys/fs/cgroup")
    )


def guard():
    if inside_sandbox():
        return False
    if os.environ.get("BKG_PROBE_DRYRUN") == "1" and os.geteuid() != 0:
        return True
    sys.stderr.write("BKG-GUARD-REFUSED: not inside a bkg sandbox; the probe did not run\n")
    sys.stderr.flush()
    os._exit(GUARD_EXIT)


def errname(error):
    return errno.errorcode.get(error.errno, str(error.errno))


def read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as error:
        return "!" + errname(error)


def status_fields():
    fields = {}
    for line in read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        if key in (
            "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
            "NoNewPrivs", "Seccomp", "Seccomp_filters",
        ):
            fields[key] = value.strip()
    return fields


def mounts():
    result = []
    for line in read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        result.append({
            "root": fields[3],
            "mount_point": fields[4],
            "options": fields[5].split(","),
            "fstype": rest[0],
            "source": rest[1],
            "super_options": rest[2].split(","),
        })
    return result


def namespaces():
    result = {}
    try:
        names = os.listdir("/proc/self/ns")
    except OSError:
        return result
    for name in names:
        try:
            result[name] = os.readlink("/proc/self/ns/" + name)
        except OSError as error:
            result[name] = "!" + errname(error)
    return result


def landlock():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    abi = libc.syscall(
        ctypes.c_long(LANDLOCK_CREATE_RULESET), ctypes.c_long(0), ctypes.c_long(0),
        ctypes.c_long(LANDLOCK_CREATE_RULESET_VERSION),
    )
    abi_errno = errno.errorcode.get(ctypes.get_errno()) if abi < 0 else None
    # /proc/self/comm belongs to us and /proc is a writable mount: only Landlock (which grants
    # writes beneath /workspace, /tmp and /dev alone) can refuse opening it for writing.
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
        os.close(fd)
        comm = "OK"
    except OSError as error:
        comm = errname(error)
    # Control: a file under /workspace or /tmp must be creatable.
    control = "no writable dir"
    for directory in ("/workspace", "/tmp"):
        if os.path.isdir(directory) and os.access(directory, os.W_OK):
            path = os.path.join(directory, ".bkg-probe-%d" % os.getpid())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
                os.unlink(path)
                control = "OK"
            except OSError as error:
                control = errname(error)
            break
    return {
        "abi": abi,
        "abi_errno": abi_errno,
        "write_proc_self_comm": comm,
        "create_in_workspace": control,
        "enforced": comm == "EACCES" and control == "OK",
    }


def outside_writes():
    """Try to create a file in directories that must not be writable; remove it if it worked."""
    result = {}
    for directory in ("/", "/etc", "/usr", "/usr/lib", "/bin", "/dev", "/proc"):
        path = os.path.join(directory, ".bkg-probe-%d" % os.getpid())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as error:
            result[directory] = errname(error)
            continue
        os.close(fd)
        os.unlink(path)
        result[directory] = "OK"
    return result


def descriptors():
    result = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return result
    for name in names:
        try:
            result[name] = os.readlink("/proc/self/fd/" + name)
        except OSError as error:
            result[name] = "!" + errname(error)
    return result


def main():
    dry_run = guard()
    pids = sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    try:
        dev = sorted(os.listdir("/dev"))
    except OSError:
        dev = []
    try:
        interfaces = sorted(name for _, name in socket.if_nameindex())
    except OSError:
        interfaces = []
    report = {
        "dry_run": dry_run,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "egid": os.getegid(),
        "groups": os.getgroups(),
        "uid_map": read("/proc/self/uid_map"),
        "gid_map": read("/proc/self/gid_map"),
        "setgroups": read("/proc/self/setgroups").strip(),
        "status": status_fields(),
        "mounts": mounts(),
        "namespaces": namespaces(),
        "landlock": landlock(),
        "outside_writes": outside_writes(),
        "pids": pids,
        "hostname": socket.gethostname(),
        "dev": dev,
        "fds": descriptors(),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "cgroup": read("/proc/self/cgroup"),
        "interfaces": interfaces,
        "sys_exists": os.path.exists("/sys"),
    }
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
