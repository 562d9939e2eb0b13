"""PRIV: identity, capabilities, no_new_privs, seccomp, namespaces, dangerous syscalls."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

import bkgsec


def test_code_runs_as_an_unprivileged_mapped_user(posture, uid_range):
    assert (posture["uid"], posture["euid"], posture["gid"], posture["egid"]) == (1000, 1000, 1000, 1000)
    assert posture["groups"] in ([], [1000]), posture["groups"]
    # Exactly root, the sandbox user and nobody, each alone, to host ids of the agent's range.
    uid_map = [line.split() for line in posture["uid_map"].splitlines()]
    assert [(line[0], line[2]) for line in uid_map] == [("0", "1"), ("1000", "1"), ("65534", "1")], \
        posture["uid_map"]
    assert posture["gid_map"] == posture["uid_map"], posture["gid_map"]
    host_ids = [int(line[1]) for line in uid_map]
    assert len(set(host_ids)) == 3, host_ids
    for host_id in host_ids:
        assert host_id != 0 and uid_range[0] <= host_id < uid_range[1], (host_id, uid_range)
    assert posture["setgroups"] == "deny"


def test_no_capabilities(posture):
    status = posture["status"]
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, (field, status[field])


def test_no_new_privs_is_set(posture):
    assert posture["status"]["NoNewPrivs"] == "1", posture["status"]


def test_seccomp_filter_is_active(posture):
    assert posture["status"]["Seccomp"] == "2", posture["status"]
    assert int(posture["status"].get("Seccomp_filters", "0")) >= 1, posture["status"]


def test_namespaces_differ_from_the_host(posture):
    sandbox_ns = posture["namespaces"]
    for name in ("user", "pid", "mnt", "net", "uts", "ipc", "cgroup"):
        host = os.readlink("/proc/self/ns/" + name)
        assert sandbox_ns.get(name, "").startswith(name + ":["), (name, sandbox_ns)
        assert sandbox_ns[name] != host, "the sandbox shares the host's %s namespace" % name


def _zygote_forks(agent):
    return agent.request("GET", "/api/v1/agent").json["zygote_runs"]


def _posture_of(agent):
    outcome = agent.exe(bkgsec.PROBE)
    assert outcome.rc == 0 and outcome.result is not None, outcome.describe()
    return json.loads(outcome.out)


def _comparable(posture):
    """What must not differ between two sandboxes of two agents: not the host ids, namespace
    inodes, pids or devices, which differ from sandbox to sandbox."""
    return {
        "ids": [posture[key] for key in ("uid", "euid", "gid", "egid", "groups", "setgroups")],
        "maps": [[line.split()[0::2] for line in posture[key].splitlines()] for key in ("uid_map", "gid_map")],
        "status": {key: value for key, value in posture["status"].items()
                   if key.startswith("Cap") or key in ("NoNewPrivs", "Seccomp", "Seccomp_filters")},
        "landlock": posture["landlock"],
        "mounts": sorted((m["mount_point"], m["fstype"], sorted(m["options"])) for m in posture["mounts"]),
        "outside_writes": posture["outside_writes"],
        "fds": {fd: re.sub(r"\[\d+\]", "[]", target) for fd, target in posture["fds"].items()},
        "cwd": posture["cwd"], "environ": posture["environ"],
        "cgroup": posture["cgroup"], "hostname": posture["hostname"],
        "interfaces": posture["interfaces"], "sys_exists": posture["sys_exists"],
    }


def test_a_zygote_fork_is_locked_down_as_a_cold_run(agent, second_agent):
    """A warm Python run's process is a fork of the zygote (engine/zygote.rs), made on the host
    and locked down inside the sandbox by the init's own lock_down: its posture must be exactly
    that of code pid 1 forked in a sandbox prepared on demand."""
    deadline = time.monotonic() + 30
    while agent.wait_idle().get("warm_sandboxes", 0) < 1:
        assert time.monotonic() < deadline, "the warm pool stayed empty"
        time.sleep(0.05)
    forks = _zygote_forks(agent)
    warm = _posture_of(agent)
    assert _zygote_forks(agent) == forks + 1, "the warm run was not a fork of the zygote"
    # Without a pool a Python run forks the zygote once one serves: --zygote false keeps it cold.
    second_agent.start(warm_pool=0, extra_args=("--zygote", "false"))
    cold = _posture_of(second_agent)
    assert _zygote_forks(second_agent) == 0
    assert _comparable(warm) == _comparable(cold)


def test_setuid_binary_gains_nothing(sandbox):
    r = sandbox.attack("""
        import subprocess, stat, time
        st = os.stat("/usr/bin/passwd")
        child = subprocess.Popen(["/usr/bin/passwd"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.2)
        ids = {}
        with open("/proc/%d/status" % child.pid) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid", "CapEff"):
                    ids[key] = value.split()
        child.communicate(timeout=10)
        report(setuid_bit=bool(st.st_mode & stat.S_ISUID), owner=st.st_uid, ids=ids,
               status=child.returncode)
    """)
    assert r.rc == 0, r
    rep = r.report
    # The binary is setuid root on the host (mapped to the overflow uid inside)...
    assert rep["setuid_bit"] is True, rep
    # ...and running it changes nothing: nosuid mount + no_new_privs.
    assert rep["ids"]["Uid"] == ["1000"] * 4, rep
    assert rep["ids"]["Gid"] == ["1000"] * 4, rep
    assert int(rep["ids"]["CapEff"][0], 16) == 0, rep
    assert rep["status"] != 0, rep


def test_nested_user_namespace_fails(sandbox):
    r = sandbox.attack("""
        import subprocess
        tool = subprocess.run(["/usr/bin/unshare", "-U", "-r", "id", "-u"], capture_output=True, text=True)
        direct = syscall(272, 0x10000000)[1]  # unshare(CLONE_NEWUSER)
        result, error = syscall(56, 0x10000000 | 17, 0, 0, 0, 0)  # clone(CLONE_NEWUSER | SIGCHLD)
        if result == 0:
            os._exit(0)
        report(tool_status=tool.returncode, tool_out=tool.stdout.strip(), tool_err=tool.stderr.strip(),
               unshare=direct, clone=error)
    """)
    assert r.rc == 0, r
    rep = r.report
    assert rep["tool_status"] != 0 and rep["tool_out"] == "", rep
    assert "Operation not permitted" in rep["tool_err"], rep
    assert rep["unshare"] == "EPERM" and rep["clone"] == "EPERM", rep


def test_ptrace_is_denied(sandbox):
    r = sandbox.attack("""
        import signal, time
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        attach = syscall(101, 16, child, 0, 0)[1]      # PTRACE_ATTACH
        seize = syscall(101, 0x4206, child, 0, 0)[1]   # PTRACE_SEIZE
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        tracee = os.fork()
        if tracee == 0:  # PTRACE_TRACEME in a child, so a success cannot stop this process
            os._exit(3 if syscall(101, 0, 0, 0, 0)[1] == "EPERM" else 4)
        _, status = os.waitpid(tracee, 0)
        traceme = "EPERM" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3 else "ALLOWED"
        report(attach=attach, seize=seize, traceme=traceme)
    """, "--timeout", "20s")
    assert r.rc == 0, r
    assert r.report == {"attach": "EPERM", "seize": "EPERM", "traceme": "EPERM"}, r


# name: (syscall number, arguments, expected errno)
DENIED_SYSCALLS = {
    "keyctl": (250, (0, -3, 0), "EPERM"),             # KEYCTL_GET_KEYRING_ID, session keyring
    "add_key": (248, (0, 0, 0, 0, -3), "EPERM"),
    "bpf": (321, (0, 0, 0), "EPERM"),                 # BPF_MAP_CREATE
    "perf_event_open": (298, (0, 0, -1, -1, 0), "EPERM"),
    "userfaultfd": (323, (1,), "EPERM"),              # UFFD_USER_MODE_ONLY: allowed unprivileged
    "io_uring_setup": (425, (1, 0), "EPERM"),
    "setns": (308, (0, 0), "EPERM"),
    "init_module": (175, (0, 0, 0), "EPERM"),
    "kexec_load": (246, (0, 0, 0, 0), "EPERM"),
    "chroot": (161, (0,), "EPERM"),
    "pivot_root": (155, (0, 0), "EPERM"),
    "process_vm_readv": (310, (1, 0, 0, 0, 0, 0), "EPERM"),
    "personality_no_aslr": (135, (0x0040000,), "EPERM"),  # ADDR_NO_RANDOMIZE
    "clone3": (435, (0, 0), "ENOSYS"),
}


@pytest.mark.parametrize("name", list(DENIED_SYSCALLS))
def test_dangerous_syscall_is_denied(sandbox, name):
    nr, args, expected = DENIED_SYSCALLS[name]
    r = sandbox.attack("""
        import sys
        nr = int(sys.argv[1])
        args = [int(a) for a in sys.argv[2:]]
        result, error = syscall(nr, *args)
        if result == 0 and nr == 435:
            os._exit(0)
        report(result=result, error=error)
    """, args=[str(nr), *map(str, args)])
    assert r.rc == 0, r
    assert r.report == {"result": -1, "error": expected}, r


def test_x32_syscall_abi_gets_enosys(sandbox):
    """x32 numbers (bit 30 set) would dodge number-based rules; the filter answers ENOSYS.
    This kernel is built without CONFIG_X86_X32_ABI, so the kernel alone would answer the same."""
    r = sandbox.attack("""
        X32 = 0x40000000
        report(getpid=syscall(X32 | 39)[1], keyctl=syscall(X32 | 250, 0, -3, 0)[1],
               unshare=syscall(X32 | 272, 0x10000000)[1])
    """)
    assert r.rc == 0, r
    assert r.report == {"getpid": "ENOSYS", "keyctl": "ENOSYS", "unshare": "ENOSYS"}, r


def test_syscalls_outside_the_allowlist_get_enosys(sandbox):
    """Deny by default: calls newer kernels added (cachestat 451, statmount 457, listmount 458,
    lsm_get_self_attr 459, mseal 462) are in no group of the allowlist and answer ENOSYS, each
    with null arguments that an unfiltered kernel would reject some other way (EFAULT, EINVAL)."""
    r = sandbox.attack("""
        report(**{name: syscall(nr, 0, 0, 0, 0)[1] for name, nr in
                  [("cachestat", 451), ("statmount", 457), ("listmount", 458),
                   ("lsm_get_self_attr", 459), ("mseal", 462)]})
    """)
    assert r.rc == 0, r
    assert r.report == {"cachestat": "ENOSYS", "statmount": "ENOSYS", "listmount": "ENOSYS",
                        "lsm_get_self_attr": "ENOSYS", "mseal": "ENOSYS"}, r


def test_int80_32bit_syscall_is_killed_with_sigsys(sandbox):
    """The i386 entry (int 0x80) uses another syscall table: the filter kills the process."""
    r = sandbox.attack("""
        import mmap
        child = os.fork()
        if child == 0:
            page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            # mov eax, 20 (i386 getpid); int 0x80; ret
            page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
            stub = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
            stub()
            os._exit(0)
        _, status = os.waitpid(child, 0)
        report(signaled=os.WIFSIGNALED(status),
               signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
               exit=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)
    """)
    assert r.rc == 0, r
    assert r.report == {"signaled": True, "signal": int(signal.SIGSYS), "exit": None}, r


def test_becoming_root_fails(sandbox):
    r = sandbox.attack("""
        report(setuid=attempt(os.setuid, 0), setgid=attempt(os.setgid, 0),
               setresuid=attempt(os.setresuid, 0, 0, 0), setgroups=attempt(os.setgroups, [0]),
               uid=os.getuid(), euid=os.geteuid())
    """)
    assert r.rc == 0, r
    # uid 0 is mapped to a host id of the sandbox's own, but switching needs CAP_SETUID, which
    # the code lacks: EPERM, as for any unprivileged user outside; setgroups is denied.
    assert r.report == {"setuid": "EPERM", "setgid": "EPERM", "setresuid": "EPERM",
                        "setgroups": "EPERM", "uid": 1000, "euid": 1000}, r


def test_pid1_cannot_be_signalled_or_inspected(sandbox):
    r = sandbox.attack("""
        import signal
        report(signal=attempt(os.kill, 1, 0), kill=attempt(os.kill, 1, signal.SIGKILL),
               environ=attempt(lambda: open("/proc/1/environ", "rb").read()),
               mem=attempt(lambda: open("/proc/1/mem", "rb")),
               alive=os.path.exists("/proc/1/status"))
    """)
    assert r.rc == 0, r
    assert r.report == {"signal": "EPERM", "kill": "EPERM", "environ": "EACCES", "mem": "EACCES",
                        "alive": True}, r


def test_kill_minus_one_only_reaches_the_sandbox(sandbox):
    """kill(-1, SIGKILL) inside kills the sandbox's own processes, never a host process, not
    even one running as the sandbox's own host uid."""
    run = sandbox.spawn_attack("""
        import subprocess, sys
        inner = subprocess.Popen(["sleep", "60"])
        host_uid = open("/proc/self/uid_map").read().split()[1]
        print("HOSTUID", host_uid, flush=True)
        sys.stdin.readline()
        os.kill(-1, 9)
        inner.wait(timeout=10)
        report(inner_returncode=inner.returncode)
    """, "--timeout", "30s")
    host_sleep = None
    try:
        line = bkgsec.read_line(run.stdout, 20).decode()
        assert line.startswith("HOSTUID "), (line, run.stderr.read1() if run.poll() is not None else "")
        host_uid = int(line.split()[1])
        host_sleep = subprocess.Popen(["setpriv", "--reuid=%d" % host_uid, "--regid=%d" % host_uid,
                                       "--clear-groups", "sleep", "60"])
        # The sleep must be running under that uid before the sandbox fires.
        for _ in range(100):
            status = bkgsec.process_status(host_sleep.pid) or {}
            if status.get("Uid", "").split()[:1] == [str(host_uid)] and "sleep" in status.get("Name", ""):
                break
            time.sleep(0.02)
        out, err = run.communicate(input=b"go\n", timeout=30)
        assert run.returncode == 0, (out, err)
        assert b'BKG-REPORT {"inner_returncode": -9}' in out, (out, err)
        assert host_sleep.poll() is None, "kill(-1) inside the sandbox killed a host process"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if host_sleep is not None and host_sleep.poll() is None:
            host_sleep.kill()
            host_sleep.wait()


def test_node_runs_under_the_same_confinement(sandbox):
    r = sandbox.attack("""
        const status = fs.readFileSync('/proc/self/status', 'utf8');
        const field = (k) => (status.match(new RegExp('^' + k + ':\\\\s*(\\\\S+)', 'm')) || [])[1];
        report({
          uid: process.getuid(),
          noNewPrivs: field('NoNewPrivs'), seccomp: field('Seccomp'), capEff: field('CapEff'),
          writeEtc: attempt(() => fs.writeFileSync('/etc/bkg-sec-node', 'x')),
          readShadow: attempt(() => fs.readFileSync('/etc/shadow')),
          childUid: require('child_process').execFileSync('/usr/bin/id', ['-u']).toString().trim(),
        });
    """, lang="node")
    assert r.rc == 0, r
    assert r.report == {"uid": 1000, "noNewPrivs": "1", "seccomp": "2", "capEff": "0000000000000000",
                        "writeEtc": "EROFS", "readShadow": "ENOENT", "childUid": "1000"}, r
