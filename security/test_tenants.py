"""TEN: two runs of the same agent (two tenants) at the same time."""

import contextlib
import os

import bkgsec

TENANT_A = """
    import sys
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\\0bkg-sec-tenant-a")
    listener.listen(4)
    listener.settimeout(0.2)
    libc = ctypes.CDLL(None, use_errno=True)
    shm = libc.shmget(0xB45EC, 4096, 0o1000 | 0o666)  # IPC_CREAT
    with open("/tmp/tenant-a", "w") as handle:
        handle.write("a")
    host_uid = open("/proc/self/uid_map").read().split()[1]
    print("READY", host_uid, shm, flush=True)
    sys.stdin.readline()
    try:
        listener.accept()
        print("GOT-CONNECTION", flush=True)
    except OSError:
        print("NO-CONNECTION", flush=True)
    print("ALIVE", flush=True)
"""


@contextlib.contextmanager
def tenant_a(sandbox):
    """Run A, started and ready; yields (process, its host uid). Ends it on exit."""
    run = sandbox.spawn_attack(TENANT_A, "--timeout", "30s")
    try:
        line = bkgsec.read_line(run.stdout, 20).decode()
        assert line.startswith("READY "), (line, run.poll())
        _, host_uid, shm = line.split()
        assert int(shm) >= 0, line
        yield run, int(host_uid)
    finally:
        if run.poll() is None:
            try:
                run.communicate(input=b"\n", timeout=20)
            except Exception:
                run.kill()
                run.wait()


def finish(run):
    out, err = run.communicate(input=b"go\n", timeout=20)
    return run.returncode, out.decode(), err.decode()


def test_concurrent_run_is_invisible(sandbox):
    with tenant_a(sandbox) as (run, _):
        r = sandbox.attack("""
            libc = ctypes.CDLL(None, use_errno=True)
            ctypes.set_errno(0)
            shm = libc.shmget(0xB45EC, 0, 0)
            shm_errno = errno.errorcode.get(ctypes.get_errno()) if shm < 0 else "FOUND"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            report(pids=sorted(int(e) for e in os.listdir("/proc") if e.isdigit()),
                   abstract=attempt(s.connect, "\\0bkg-sec-tenant-a"),
                   file=os.path.exists("/tmp/tenant-a"), shm=shm_errno)
        """)
        code, out, err = finish(run)
    assert r.rc == 0, r
    assert r.report["pids"] == [1, 2], r
    assert r.report["abstract"] in ("ECONNREFUSED", "EPERM"), r
    assert r.report["file"] is False, r
    assert r.report["shm"] == "ENOENT", r
    assert code == 0 and "NO-CONNECTION" in out and "ALIVE" in out, (code, out, err)


def test_concurrent_runs_have_distinct_host_uids(sandbox, uid_range):
    with tenant_a(sandbox) as (run, uid_a):
        r = sandbox.attack("""
            report(host_uid=int(open("/proc/self/uid_map").read().split()[1]))
        """)
        finish(run)
    assert r.rc == 0, r
    uid_b = r.report["host_uid"]
    assert uid_a != uid_b, (uid_a, uid_b)
    for uid in (uid_a, uid_b):
        assert uid_range[0] <= uid < uid_range[1] and uid != 0


def test_kill_minus_one_spares_a_concurrent_run(sandbox):
    with tenant_a(sandbox) as (run, uid_a):
        r = sandbox.attack("""
            import signal
            # ESRCH: nothing this process may signal exists besides itself.
            report(signalled=attempt(os.kill, -1, signal.SIGKILL))
        """)
        assert run.poll() is None, "run A died while run B fired kill(-1)"
        code, out, err = finish(run)
    assert r.rc == 0 and r.report["signalled"] == "ESRCH", r
    assert code == 0 and "ALIVE" in out, (code, out, err)


def test_other_sandboxes_disks_are_not_shown(sandbox):
    """The host-wide lists and statistics of block devices and filesystems would show a
    concurrent run's disk (its loop device and size, what it wrote, as it writes it): hidden in
    the sandbox's procfs."""
    with tenant_a(sandbox) as (run, _):
        # Positive control: on the host they show the loop devices of live sandboxes, A's too.
        host_ext4 = [name for name in os.listdir("/proc/fs/ext4") if name.startswith("loop")]
        host_stats = [line for line in open("/proc/diskstats").read().splitlines() if " loop" in line]
        host_partitions = [line for line in open("/proc/partitions").read().splitlines() if " loop" in line]
        assert host_ext4 and host_stats and host_partitions, (host_ext4, host_stats, host_partitions)
        r = sandbox.attack("""
            found = {}
            for path in ("/proc/fs", "/proc/fs/ext4"):
                try:
                    found[path] = sorted(os.listdir(path))
                except OSError as e:
                    found[path] = errname(e)
            for path in ("/proc/diskstats", "/proc/partitions"):
                found[path] = open(path).read()
                try:
                    open(path, "w")
                    found[path + " write"] = "OPENED"
                except OSError as e:
                    found[path + " write"] = errname(e)
            report(**found)
        """)
        assert r.rc == 0, r
        assert r.report["/proc/fs"] == [], r
        assert r.report["/proc/fs/ext4"] == "ENOENT", r
        for path in ("/proc/diskstats", "/proc/partitions"):
            assert r.report[path] == "", r
            assert r.report[path + " write"] in ("EACCES", "EROFS", "EPERM"), r
        code, out, _ = finish(run)
        assert code == 0 and "ALIVE" in out, (code, out)
