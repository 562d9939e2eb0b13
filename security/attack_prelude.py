# bkg security suite: the prelude of every attack snippet (stdlib only).
#
# The suite sends this text, followed by one attack, as the code of a sandboxed run. It must
# never fire anywhere else: the guard below ends the process with exit code 86 and the line
# BKG-GUARD-REFUSED on stderr unless every sign of a bkg sandbox is present. There is no way to
# bypass it; only probe.py has a dry-run mode, and probe.py attacks nothing.
import ctypes
import errno
import json
import os
import socket
import sys

if __name__ != "__main__":
    raise ImportError("attack_prelude.py is sent into sandboxes as code; it is never imported")

BKG_GUARD_EXIT = 86


def _bkg_inside_sandbox():
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        with open("/proc/self/uid_map") as uid_map_file:
            uid_map = [line.split() for line in uid_map_file.read().splitlines()]
    except OSError:
        return False
    return (
        len(pids) < 20  # a fresh pid namespace, not a host with hundreds of processes
        and os.getuid() == 1000
        and os.geteuid() == 1000
        and socket.gethostname() == "bkg"
        and os.path.isdir("/workspace")
        # root, the sandbox user and nobody, each mapped alone: a user namespace of our own
        and [(line[0], line[2]) for line in uid_map] == [("0", "1"), ("1000", "1"), ("65534", "1")]
        and not os.path.exists("/sys/fs/cgroup")
    )


if not _bkg_inside_sandbox():
    sys.stderr.write("BKG-GUARD-REFUSED: not inside a bkg sandbox; the attack did not fire\n")
    sys.stderr.flush()
    os._exit(BKG_GUARD_EXIT)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def syscall(nr, *args):
    """Raw syscall: returns (result, errno name or None)."""
    argv = [ctypes.c_long(0 if arg is None else arg) for arg in args]
    ctypes.set_errno(0)
    result = _libc.syscall(ctypes.c_long(nr), *argv)
    if result == -1:
        code = ctypes.get_errno()
        return result, errno.errorcode.get(code, str(code))
    return result, None


def errname(error):
    return errno.errorcode.get(error.errno, str(error.errno))


def attempt(function, *args, **kwargs):
    """'OK' when the call succeeds, else the errno name (e.g. 'EPERM')."""
    try:
        function(*args, **kwargs)
        return "OK"
    except OSError as error:
        return errname(error)


def open_for_write(path):
    """Opens PATH for writing and closes it again without writing a byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    os.close(fd)


def report(**fields):
    print("BKG-REPORT " + json.dumps(fields, sort_keys=True), flush=True)


# ---- the attack follows ----
