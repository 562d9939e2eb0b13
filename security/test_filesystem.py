"""FS: the host's files, writable places, links, /proc, /sys, cgroupfs, devices, state."""

import hashlib
import json
import os
import secrets
from pathlib import Path

import pytest

REFUSED = ("ENOENT", "EACCES")
READ_ONLY = ("EROFS", "EACCES", "EPERM")


SECRETS = {
    "etc_shadow": """
        report(read=attempt(lambda: open("/etc/shadow").read()), exists=os.path.exists("/etc/shadow"))
    """,
    "root_home": """
        report(read=attempt(os.listdir, "/root"), exists=os.path.exists("/root"))
    """,
}

# Secrets planted on the host for the duration of one test, so that a row cannot pass for want of
# anything to protect: a key in root's ~/.ssh and an SSH host key in /etc/ssh, each readable by
# root on the host (the positive control) and named to the attack. `{path}` is the planted file.
PLANTED = {
    "root_ssh": ("/root/.ssh", "id_bkgsec_{token}"),
    "ssh_host_keys": ("/etc/ssh", "ssh_host_bkgsec{token}_key"),
}
PLANTED_ATTACK = """
    path = {path!r}
    results = [attempt(os.listdir, os.path.dirname(path)), attempt(lambda: open(path).read())]
    bad = [x for x in results if x == "OK"]
    report(read=bad[0] if bad else results[1], exists=os.path.exists(path))
"""


@pytest.fixture
def planted_secret(request):
    directory, pattern = PLANTED[request.param]
    made_directory = not os.path.isdir(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, pattern.format(token=secrets.token_hex(6)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("bkg-sec planted secret " + secrets.token_hex(16) + "\n")
    try:
        with open(path) as handle:
            assert handle.read().startswith("bkg-sec planted secret"), "positive control: root reads it"
        yield path
    finally:
        os.unlink(path)
        if made_directory:
            os.rmdir(directory)


@pytest.mark.parametrize("planted_secret", sorted(PLANTED), indirect=True)
def test_planted_host_secret_is_unreadable(sandbox, planted_secret):
    r = sandbox.attack(PLANTED_ATTACK.format(path=planted_secret))
    assert r.rc == 0, r
    assert r.report["read"] in REFUSED, r
    assert r.report["exists"] is False, r


@pytest.mark.parametrize("target", sorted(SECRETS))
def test_host_secret_is_unreadable(sandbox, target):
    r = sandbox.attack(SECRETS[target])
    assert r.rc == 0, r
    assert r.report["read"] in REFUSED, r
    assert r.report["exists"] is False, r


OUTSIDE = {"etc": "/etc", "usr": "/usr/lib", "root_dir": "/", "dev": "/dev"}


@pytest.mark.parametrize("where", sorted(OUTSIDE))
def test_write_outside_workspace_and_tmp_fails(sandbox, where):
    directory = OUTSIDE[where]
    name = "bkg-sec-" + secrets.token_hex(6)
    r = sandbox.attack("""
        import sys
        path = os.path.join(sys.argv[1], sys.argv[2])
        create = attempt(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)))
        mkdir = attempt(os.mkdir, path + ".d")
        report(create=create, mkdir=mkdir, exists=os.path.exists(path))
    """, args=[directory, name])
    assert r.rc == 0, r
    assert r.report["create"] in READ_ONLY, r
    assert r.report["mkdir"] in READ_ONLY, r
    assert not os.path.exists(os.path.join(directory, name)), "a file appeared on the host"


def test_symlink_to_etc_passwd_cannot_be_written_through(sandbox):
    before = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    r = sandbox.attack("""
        os.symlink("/etc/passwd", "/workspace/x")
        append = attempt(lambda: open("/workspace/x", "a").close())
        replace = attempt(os.rename, "/workspace/x", "/etc/passwd")
        os.symlink("/proc/1/root/etc/passwd", "/tmp/y")
        through_proc = attempt(lambda: open("/tmp/y", "a").close())
        lines = open("/workspace/x").read().splitlines()
        report(append=append, replace=replace, through_proc=through_proc, lines=len(lines))
    """)
    assert r.rc == 0, r
    assert r.report["append"] in READ_ONLY, r
    assert r.report["replace"] in ("EXDEV",) + READ_ONLY + ("EBUSY",), r
    assert r.report["through_proc"] in ("EACCES", "ENOENT", "EPERM"), r
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == before


def test_hardlink_to_a_file_outside_fails(sandbox):
    r = sandbox.attack("""
        report(passwd=attempt(os.link, "/etc/passwd", "/workspace/p"),
               python=attempt(os.link, "/usr/bin/python3.11", "/tmp/py"),
               ld_cache=attempt(os.link, "/etc/ld.so.cache", "/dev/shm/c"))
    """)
    assert r.rc == 0, r
    assert r.report == {"passwd": "EXDEV", "python": "EXDEV", "ld_cache": "EXDEV"}, r


def test_proc_1_root_is_inaccessible(sandbox):
    r = sandbox.attack("""
        report(root=attempt(os.listdir, "/proc/1/root"),
               shadow=attempt(lambda: open("/proc/1/root/etc/shadow").read()),
               cwd=attempt(os.listdir, "/proc/1/cwd"),
               exe=attempt(os.readlink, "/proc/1/exe"),
               fds=attempt(os.listdir, "/proc/1/fd"))
    """)
    assert r.rc == 0, r
    assert set(r.report.values()) == {"EACCES"}, r


def test_proc_self_exe_cannot_be_opened_for_writing(sandbox):
    """runc CVE-2019-5736: overwriting the runtime binary through /proc/self/exe."""
    r = sandbox.attack("""
        report(self_exe=attempt(open_for_write, "/proc/self/exe"),
               interpreter=attempt(open_for_write, os.path.realpath("/proc/self/exe")),
               pid1_exe=attempt(open_for_write, "/proc/1/exe"))
    """)
    assert r.rc == 0, r
    assert r.report["self_exe"] in ("EROFS", "ETXTBSY", "EACCES"), r
    assert r.report["interpreter"] in ("EROFS", "ETXTBSY", "EACCES"), r
    assert r.report["pid1_exe"] in ("EACCES", "EPERM"), r


def test_no_descriptor_leaks_from_the_agent(sandbox):
    """runc CVE-2024-21626: a leaked fd to a host directory lets code walk the host."""
    r = sandbox.attack("""
        import stat
        def describe():
            entries = {}
            listing = os.listdir("/proc/self/fd")
            for fd in listing:
                try:
                    target = os.readlink("/proc/self/fd/" + fd)
                    is_dir = stat.S_ISDIR(os.stat("/proc/self/fd/" + fd).st_mode)
                except OSError as e:
                    target, is_dir = "!" + errname(e), False
                entries[fd] = [target, is_dir]
            return entries
        mine = describe()
        pid = os.fork()
        if pid == 0:
            seen = json.dumps(describe())
            with open("/tmp/child.json", "w") as handle:
                handle.write(seen)
            os._exit(0)
        os.waitpid(pid, 0)
        child = open("/tmp/child.json").read()
        report(fds=mine, child=child, pid=os.getpid(), cwd=os.readlink("/proc/self/cwd"),
               root=os.readlink("/proc/self/root"))
    """)
    assert r.rc == 0, r
    rep = r.report
    assert rep["cwd"] == "/workspace" and rep["root"] == "/", r
    for fds in (rep["fds"], json.loads(rep["child"])):
        extra = {fd: v for fd, v in fds.items() if fd not in ("0", "1", "2")}
        # Only the descriptor os.listdir used for /proc/self/fd may show up besides stdio (and
        # it is closed by the time it is inspected).
        assert len(extra) <= 1, "descriptors beyond stdio: %s" % fds
        for fd, (target, is_dir) in extra.items():
            assert target == "!ENOENT" or target.endswith("/fd"), (fd, target)
        for fd in ("0", "1", "2"):
            target, is_dir = fds[fd]
            assert not is_dir and (target.startswith("pipe:") or target == "/dev/null"), fds


def test_proc_sys_knobs_are_read_only(sandbox):
    r = sandbox.attack("""
        knobs = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                 "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
                 "/proc/sys/net/ipv4/ip_forward", "/proc/sysrq-trigger"]
        report(**{k: attempt(open_for_write, k) for k in knobs if os.path.exists(k)})
    """)
    assert r.rc == 0, r
    assert "/proc/sys/kernel/core_pattern" in r.report, r
    for knob, outcome in r.report.items():
        assert outcome in ("EROFS", "EACCES"), (knob, outcome)


def test_sys_holds_only_the_runs_cpu_list(sandbox):
    """/sys is no sysfs: the init's read-only tmpfs shows the run's CPUs at devices/system/cpu
    (so os.cpu_count() matches the CPU limit) and nothing else."""
    r = sandbox.attack("""
        report(sys=sorted(os.listdir("/sys")),
               cpu=sorted(os.listdir("/sys/devices/system/cpu")),
               uevent_helper=attempt(open_for_write, "/sys/kernel/uevent_helper"),
               online=attempt(open_for_write, "/sys/devices/system/cpu/online"),
               cgroup=os.path.exists("/sys/fs/cgroup"))
    """)
    assert r.rc == 0, r
    report = dict(r.report)
    assert report.pop("online") in ("EROFS", "EACCES"), r
    assert report == {"sys": ["devices"], "cpu": ["online", "possible", "present"],
                        "uevent_helper": "ENOENT", "cgroup": False}, r


def test_cgroupfs_cannot_be_mounted(sandbox):
    """CVE-2022-0492: a writable cgroup v1 release_agent runs a program as host root."""
    r = sandbox.attack("""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        def mount(source, target, fstype, flags, data):
            ctypes.set_errno(0)
            if libc.mount(source, target, fstype, flags, data) == 0:
                return "OK"
            return errno.errorcode[ctypes.get_errno()]
        os.mkdir("/tmp/cg")
        v1 = mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"rdma")
        v1_memory = mount(b"cgroup", b"/tmp/cg", b"cgroup", 0, b"memory")
        v2 = mount(b"cgroup2", b"/tmp/cg", b"cgroup2", 0, None)
        found = [os.path.join(d, f) for d, _, files in os.walk("/tmp/cg") for f in files
                 if f == "release_agent"]
        report(v1=v1, v1_memory=v1_memory, v2=v2, release_agent=found,
               sys_fs_cgroup=os.path.exists("/sys/fs/cgroup"))
    """)
    assert r.rc == 0, r
    assert r.report == {"v1": "EPERM", "v1_memory": "EPERM", "v2": "EPERM",
                        "release_agent": [], "sys_fs_cgroup": False}, r


def test_mknod_fails(sandbox):
    r = sandbox.attack("""
        import stat
        report(char_mem=attempt(os.mknod, "/workspace/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1)),
               char_null=attempt(os.mknod, "/tmp/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)),
               block_vda=attempt(os.mknod, "/workspace/vda", 0o600 | stat.S_IFBLK, os.makedev(254, 0)))
    """)
    assert r.rc == 0, r
    assert r.report == {"char_mem": "EPERM", "char_null": "EPERM", "block_vda": "EPERM"}, r


def test_dev_holds_only_safe_devices(sandbox):
    r = sandbox.attack("""
        import stat
        entries = {}
        for name in sorted(os.listdir("/dev")):
            st = os.lstat("/dev/" + name)
            if stat.S_ISLNK(st.st_mode):
                entries[name] = ["link", os.readlink("/dev/" + name)]
            elif stat.S_ISCHR(st.st_mode):
                entries[name] = ["char", "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))]
            elif stat.S_ISBLK(st.st_mode):
                entries[name] = ["block", "%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))]
            elif stat.S_ISDIR(st.st_mode):
                entries[name] = ["dir", sorted(os.listdir("/dev/" + name))]
            else:
                entries[name] = ["other", ""]
        report(dev=entries, tty=os.path.exists("/dev/tty"), kmsg=os.path.exists("/dev/kmsg"))
    """)
    assert r.rc == 0, r
    dev = r.report["dev"]
    devices = {name: v[1] for name, v in dev.items() if v[0] in ("char", "block")}
    # tty (5:0) is the caller's own controlling terminal, which the code does not have.
    assert devices == {"null": "1:3", "zero": "1:5", "full": "1:7", "random": "1:8", "urandom": "1:9",
                       "tty": "5:0"}, dev
    others = {name: v for name, v in dev.items() if name not in devices}
    assert set(others) <= {"fd", "stdin", "stdout", "stderr", "shm", "pts", "ptmx"}, dev
    for name, (kind, value) in others.items():
        if kind == "link" and name == "ptmx":
            assert value == "pts/ptmx", (name, value)
        elif kind == "link":
            assert value.startswith("/proc/self/fd"), (name, value)
    # The sandbox's own devpts instance: nothing in it but its ptmx until the code opens a pty.
    assert dev["pts"] == ["dir", ["ptmx"]], dev
    assert dev.get("shm", ["dir"])[0] == "dir"


def test_root_cannot_be_remounted_read_write(sandbox):
    r = sandbox.attack("""
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        MS_REMOUNT, MS_BIND = 0x20, 0x1000
        def mount(source, target, fstype, flags, data):
            ctypes.set_errno(0)
            if libc.mount(source, target, fstype, flags, data) == 0:
                return "OK"
            return errno.errorcode[ctypes.get_errno()]
        os.mkdir("/tmp/empty")
        report(remount_root=mount(None, b"/", None, MS_REMOUNT, None),
               remount_root_bind=mount(None, b"/", None, MS_REMOUNT | MS_BIND, None),
               remount_usr=mount(None, b"/usr", None, MS_REMOUNT | MS_BIND, None),
               tmpfs=mount(b"tmpfs", b"/tmp/empty", b"tmpfs", 0, None),
               write_root=attempt(lambda: open("/bkg-sec-x", "w")))
    """)
    assert r.rc == 0, r
    assert r.report == {"remount_root": "EPERM", "remount_root_bind": "EPERM", "remount_usr": "EPERM",
                        "tmpfs": "EPERM", "write_root": "EROFS"}, r


def test_no_state_survives_between_runs(sandbox):
    token = secrets.token_hex(8)
    first = sandbox.attack("""
        import sys
        for directory in ("/workspace", "/tmp", "/dev/shm"):
            with open(directory + "/marker", "w") as handle:
                handle.write(sys.argv[1])
        report(planted=True)
    """, args=[token])
    assert first.rc == 0 and first.report["planted"], first
    second = sandbox.attack("""
        found = {}
        for directory in ("/workspace", "/tmp", "/dev/shm"):
            found[directory] = sorted(os.listdir(directory))
        report(found=found)
    """)
    assert second.rc == 0, second
    assert second.report["found"] == {"/workspace": ["main.py"], "/tmp": [], "/dev/shm": []}, second
    assert token not in second.out


def test_landlock_is_enforced(posture):
    landlock = posture["landlock"]
    assert landlock["abi"] >= 1, landlock
    assert landlock["create_in_workspace"] == "OK", landlock
    assert landlock["write_proc_self_comm"] == "EACCES", landlock
    assert landlock["enforced"] is True, landlock
    for directory, outcome in posture["outside_writes"].items():
        # procfs refuses to create files with ENOENT whatever the confinement.
        allowed = ("EROFS", "EACCES", "ENOENT") if directory == "/proc" else ("EROFS", "EACCES")
        assert outcome in allowed, (directory, outcome)


def test_mounts_are_read_only_nosuid_and_nodev(posture):
    mounts = {m["mount_point"]: m for m in posture["mounts"]}
    assert "ro" in mounts["/"]["options"], mounts["/"]
    writable = {"/workspace", "/tmp", "/dev/shm", "/proc"}
    # /proc/diskstats and /proc/partitions are /dev/null bound over them (hidden: TEN-04).
    devices = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
               "/dev/pts", "/proc/diskstats", "/proc/partitions"}
    assert mounts["/dev/pts"]["fstype"] == "devpts", mounts["/dev/pts"]
    for point, mount in mounts.items():
        assert "nosuid" in mount["options"], mount
        if point not in devices:
            assert "nodev" in mount["options"], mount
        else:
            assert "noexec" in mount["options"], mount
        if point not in writable | devices | {"/dev/pts"}:
            assert "ro" in mount["options"], mount
    assert {"/workspace", "/tmp", "/dev/shm", "/proc"} <= set(mounts)
    # /workspace, /tmp and /dev/shm are the sandbox's own disk image, not a host directory.
    sources = {mounts[p]["source"] for p in ("/workspace", "/tmp", "/dev/shm")}
    assert len(sources) == 1 and sources.pop().startswith("/dev/loop"), mounts


def test_open_by_handle_at_is_denied(sandbox):
    """The 'shocker' escape: a file handle reaches inodes outside the mount namespace."""
    r = sandbox.attack("""
        buf = ctypes.create_string_buffer(256)
        ctypes.c_uint.from_buffer(buf).value = 128
        mount_id = ctypes.c_int()
        path = ctypes.create_string_buffer(b"/etc/passwd")
        name_to_handle = syscall(303, -100, ctypes.addressof(path), ctypes.addressof(buf),
                                 ctypes.addressof(mount_id), 0)
        open_by_handle = syscall(304, -100, ctypes.addressof(buf), os.O_RDONLY)
        report(name_to_handle_at=name_to_handle[1], open_by_handle_at=open_by_handle[1])
    """)
    assert r.rc == 0, r
    assert r.report == {"name_to_handle_at": "EPERM", "open_by_handle_at": "EPERM"}, r
