"""INFO: what the sandbox can learn about the host and the agent."""

import json
import pwd
import secrets
import subprocess

import pytest

import bkgsec


def test_hostname_is_bkg(posture):
    import socket
    assert posture["hostname"] == "bkg"
    assert socket.gethostname() != "bkg", "the host itself is called bkg: this test proves nothing"


def test_host_processes_are_invisible(sandbox, agent):
    r = sandbox.attack("""
        pids = sorted(int(e) for e in os.listdir("/proc") if e.isdigit())
        names = {}
        for pid in pids:
            try:
                names[pid] = open("/proc/%d/comm" % pid).read().strip()
            except OSError as e:
                names[pid] = "!" + errname(e)
        import sys
        report(pids=pids, names=names, agent_visible=os.path.exists("/proc/%s" % sys.argv[1]))
    """, args=[str(agent.pid)])
    assert r.rc == 0, r
    assert r.report["pids"] == [1, 2], r
    assert r.report["agent_visible"] is (agent.pid in (1, 2)), r


def test_agent_environment_does_not_leak(sandbox, posture, secret):
    name, value = secret
    assert set(posture["environ"]) == {"PATH", "HOME", "TMPDIR", "LANG", "USER", "PYTHONUNBUFFERED"}, posture["environ"]
    r = sandbox.attack("""
        import sys
        name = sys.argv[1]
        found, unreadable = [], {}
        for pid in [e for e in os.listdir("/proc") if e.isdigit()]:
            try:
                environ = open("/proc/%s/environ" % pid, "rb").read()
            except OSError as e:
                unreadable[pid] = errname(e)
                continue
            if name.encode() in environ:
                found.append(pid)
        report(found=found, unreadable=unreadable, own=name in os.environ)
    """, args=[name])
    assert r.rc == 0, r
    assert r.report["found"] == [] and r.report["own"] is False, r
    assert r.report["unreadable"] == {"1": "EACCES"}, r
    assert value not in r.out and value not in r.err


KERNEL_LOG = {
    "dmesg": """
        import subprocess
        done = subprocess.run(["/usr/bin/dmesg"], capture_output=True, text=True)
        report(status=done.returncode, lines=len(done.stdout.splitlines()),
               denied="Operation not permitted" in done.stderr)
    """,
    "dev_kmsg": """
        report(open=attempt(os.open, "/dev/kmsg", os.O_RDONLY))
    """,
    "proc_kmsg": """
        report(open=attempt(os.open, "/proc/kmsg", os.O_RDONLY))
    """,
    "syslog_syscall": """
        buf = ctypes.create_string_buffer(4096)
        report(size=syscall(103, 10, 0, 0)[1], read_all=syscall(103, 3, ctypes.addressof(buf), 4096)[1])
    """,
}
KERNEL_LOG_EXPECTED = {
    "dmesg": {"status": 1, "lines": 0, "denied": True},
    "dev_kmsg": {"open": "ENOENT"},
    "proc_kmsg": {"open": "EACCES"},
    "syslog_syscall": {"size": "EPERM", "read_all": "EPERM"},
}


@pytest.mark.parametrize("source", list(KERNEL_LOG))
def test_kernel_log_is_unreadable(sandbox, source):
    r = sandbox.attack(KERNEL_LOG[source])
    assert r.rc == 0, r
    assert r.report == KERNEL_LOG_EXPECTED[source], r


def test_host_accounts_are_not_listed(sandbox):
    r = sandbox.attack("""
        report(passwd=[l.split(":")[0] for l in open("/etc/passwd").read().splitlines()],
               group=[l.split(":")[0] for l in open("/etc/group").read().splitlines()],
               home=os.path.exists("/home"))
    """)
    assert r.rc == 0, r
    assert r.report["passwd"] == ["root", "sandbox", "nobody"], r
    assert r.report["group"] == ["root", "sandbox", "nogroup"], r
    assert r.report["home"] is False
    host_users = {entry.pw_name for entry in pwd.getpwall()} - {"root", "nobody"}
    assert host_users, "the host has no other accounts: this test proves nothing"


def test_mounts_reveal_no_agent_paths(posture, agent):
    text = repr(posture["mounts"]) + posture["cgroup"]
    for leak in (str(agent.dir), str(agent.state_dir), "sandboxes", "sbx_", agent.cgroup_dir):
        assert leak not in text, leak


def test_cgroup_namespace_hides_host_cgroup_paths(posture):
    lines = [l for l in posture["cgroup"].splitlines() if l]
    assert lines, posture["cgroup"]
    for line in lines:
        assert line.split(":", 2)[2] == "/", line


def test_kernel_addresses_are_hidden(sandbox):
    r = sandbox.attack("""
        total = nonzero = 0
        with open("/proc/kallsyms") as handle:
            for line in handle:
                total += 1
                if not line.startswith("0000000000000000"):
                    nonzero += 1
        report(total=total, nonzero=nonzero)
    """)
    assert r.rc == 0, r
    assert r.report["total"] > 1000, r
    assert r.report["nonzero"] == 0, r


NOBODY_READ = r"""
import errno, os, sys
root, needle = sys.argv[1], sys.argv[2].encode()
opened, found = [], []
for directory, _, files in os.walk(root):
    for name in files:
        path = os.path.join(directory, name)
        try:
            handle = open(path, "rb")
        except OSError:
            continue
        opened.append(os.path.relpath(path, root))
        with handle:
            while True:
                block = handle.read(1 << 20)
                if not block:
                    break
                if needle in block:
                    found.append(os.path.relpath(path, root))
                    break
import json
print(json.dumps({"opened": sorted(opened), "found": sorted(set(found))}))
"""


def read_state_dir(agent, needle, as_nobody=True):
    """What a scan of the agent's state directory for `needle` opened and found, as user nobody
    or, for the positive control, as root (which proves the needle is there to be found)."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_nobody else []
    done = subprocess.run(nobody + ["/usr/bin/python3", "-c", NOBODY_READ, str(agent.state_dir), needle],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_local_user_cannot_read_a_running_sandboxs_disk(sandbox, agent):
    """Another local user must not read the code, uploads and files of a run in progress from
    the agent's state directory (its disk image is a plain file there)."""
    token = "bkg-sec-disk-" + secrets.token_hex(12)
    run = sandbox.spawn_attack("""
        import sys, time
        with open("/workspace/private.txt", "w") as handle:
            handle.write(sys.stdin.readline().strip() * 64)
        os.sync()
        print("WRITTEN", flush=True)
        time.sleep(30)
    """, "--timeout", "60s")
    try:
        run.stdin.write((token + "\n").encode())
        run.stdin.flush()
        line = bkgsec.read_line(run.stdout, 20)
        assert line == b"WRITTEN\n", line
        seen = read_state_dir(agent, token)
        control = read_state_dir(agent, token, as_nobody=False)
    finally:
        run.kill()
        run.wait()
    assert any(path.endswith("disk.img") for path in control["found"]), \
        "positive control: root finds the private file in the run's disk image: %s" % control
    disks = [path for path in seen["opened"] if path.endswith("disk.img")]
    assert seen["found"] == [], "nobody read the run's private file from %s" % seen["found"]
    assert disks == [], "nobody can open sandbox disk images: %s" % disks


def test_local_user_cannot_read_the_run_store(agent):
    outcome = agent.exe("print('recorded')")
    assert outcome.rc == 0, outcome
    seen = read_state_dir(agent, outcome.result["id"])
    control = read_state_dir(agent, outcome.result["id"], as_nobody=False)
    assert any(path.startswith("state.db") for path in control["found"]), \
        "positive control: root finds the run in the store: %s" % control
    assert [p for p in seen["opened"] if p.startswith("state.db")] == [], seen
    assert seen["found"] == [], seen
