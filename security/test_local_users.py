"""USR: everyday users are not root (docs/security.md, "Local users").

The agent runs as root with `--socket-group GROUP`; the test makes that group and real
unprivileged users (two members, one outsider) with 0700 homes, runs `bkg`, `bkgr` as each
of them (runuser), and removes users and group when it ends. Every attack is an ordinary CLI
command a user could type: what must hold is that it fails with one line and leaks nothing.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

import bkgsec

TAG = secrets.token_hex(3)
GROUP = "bkgsec%s" % TAG
SHADOW_MARK = "root:"
# What other users' private files hold: found anywhere in an answer, it leaked.
SECRET = "bkgsec-secret-" + secrets.token_hex(8)
MAX_SANDBOXES = 3


def run_root(*argv):
    subprocess.run(argv, check=True, capture_output=True)


class User:
    def __init__(self, name, home, agent):
        self.name = name
        self.home = home
        self.agent = agent
        import pwd
        entry = pwd.getpwnam(name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    @property
    def namespace(self):
        return "user-" + self.name

    def env(self):
        return {
            "HOME": str(self.home),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "BKG_SOCKET": str(self.agent.socket),
            "BKG_NO_AUTOSTART": "1",
            "LANG": "C.UTF-8",
            "CI": "1",
        }

    def run(self, tool, *args, cwd=None, stdin=b"", timeout=90):
        """`tool` (bkg or bkgr) as this user, in `cwd` (default their home)."""
        binary = str(self.agent.bin_dir / tool)
        env = ["%s=%s" % item for item in self.env().items()]
        argv = ["runuser", "-u", self.name, "--", "env", "-i", *env, binary, *map(str, args)]
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                              cwd=str(cwd or self.home))
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")

    def write(self, relative, text, mode=0o644):
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        for part in [path, *path.parents]:
            if part == self.home.parent:
                break
            os.chown(part, self.uid, self.gid)
        return path


def one_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith(("bkg:", "bkgr:"))


def run_with_ids(agent, uid, gid, groups, *args):
    """`bkg ARGS` as `uid` and `gid` with exactly the supplementary `groups` (setpriv): a login
    session's ids, whatever /etc/group says now."""
    env = ["HOME=/nonexistent", "PATH=/usr/bin:/bin", "BKG_SOCKET=%s" % agent.socket, "BKG_NO_AUTOSTART=1",
           "LANG=C.UTF-8", "CI=1"]
    ids = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    argv = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, *ids, "--", "env", "-i", *env,
            str(agent.bin_dir / "bkg"), *args]
    done = subprocess.run(argv, capture_output=True, timeout=60, cwd="/")
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("local users are made with useradd: the suite runs as root")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "runuser"):
        if shutil.which(tool) is None:
            pytest.fail("%s is missing (scripts/setup.sh installs it)" % tool, pytrace=False)
    run_root("groupadd", GROUP)
    agent = bkgsec.Agent("users", warm_pool=0,
                         extra_args=("--socket-group", GROUP, "--user-limit", "memory=256MiB",
                                     "--user-limit", "timeout=30s",
                                     "--user-limit", "sandboxes=%d" % MAX_SANDBOXES))
    made = []
    homes = Path(agent.dir) / "home"
    homes.mkdir()
    os.chmod(homes, 0o755)
    try:
        people = {}
        # The twins' login names differ only in `_` and `-`, which a DNS label cannot tell apart.
        for role, groups in (("alice", [GROUP]), ("bob", [GROUP]), ("carol", [GROUP]), ("dave", [GROUP]),
                             ("eve", []), ("twin_", [GROUP]), ("twin-", [GROUP])):
            name = "bks%s%s" % (role[:3], TAG) if not role.startswith("twin") else "bkstw%s%s" % (role[-1], TAG)
            home = homes / name
            argv = ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh",
                    "--user-group"]
            if groups:
                argv += ["--groups", ",".join(groups)]
            run_root(*argv, name)
            made.append(name)
            os.chmod(home, 0o700)
            people[role] = name
        agent.start()
        yield {role: User(name, homes / name, agent) for role, name in people.items()}
    finally:
        agent.remove()
        for name in made:
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        subprocess.run(["groupdel", GROUP], capture_output=True)


def test_the_socket_is_its_groups_and_0660(users):
    socket = users["alice"].agent.socket
    meta = os.stat(socket)
    import grp
    assert oct(meta.st_mode & 0o777) == "0o660", oct(meta.st_mode)
    assert grp.getgrgid(meta.st_gid).gr_name == GROUP


def test_a_member_runs_bkg_exe_in_a_namespace_of_their_own(users):
    alice = users["alice"]
    alice.write("hello.py", "import os\nprint('hello', os.getuid())\n")
    rc, out, err = alice.run("bkg", "exe", "hello.py")
    assert rc == 0, err
    assert out.startswith("hello "), out
    rc, out, err = alice.run("bkg", "runs", "ls", "--json")
    assert rc == 0, err
    runs = json.loads(out)
    assert runs and {run["namespace"] for run in runs} == {alice.namespace}, runs


def test_an_outsider_gets_one_line_saying_how_to_get_access(users):
    eve = users["eve"]
    eve.write("hello.py", "print('hello')\n")
    rc, out, err = eve.run("bkg", "exe", "hello.py")
    assert rc != 0 and out == ""
    assert one_line(err), err
    assert "usermod -aG %s %s" % (GROUP, eve.name) in err, err
    # Nor does the agent look absent to them: `agent status` and `agent stop` say the same.
    for command in (("agent", "status"), ("agent", "stop")):
        rc, out, err = eve.run("bkg", *command)
        assert (rc, out) == (125, ""), (command, rc, out, err)
        assert one_line(err) and "usermod -aG %s %s" % (GROUP, eve.name) in err, (command, err)
    assert eve.agent.alive(), "an outsider's `bkg agent stop` stopped the agent"


def test_doctor_tells_a_member_and_an_outsider_only_what_is_true(users):
    """A member cannot see the agent's configuration: doctor says so, and checks no directory
    of the member's own in place of the agent's state directory. An outsider's every command
    fails, and so does their doctor's agent check."""
    alice = users["alice"]
    rc, out, err = alice.run("bkg", "doctor", "--json")
    assert rc == 0, err
    checks = {check["name"]: check for check in json.loads(out)["checks"]}
    assert checks["agent"]["status"] == "warn" and "admins only" in checks["agent"]["found"], checks["agent"]
    assert "key" not in checks["agent"]["found"], checks["agent"]
    assert checks["state_dir"]["status"] == "warn" and "sudo bkg doctor" in checks["state_dir"]["fix"], checks
    assert "state_dir_fs" not in checks, checks
    assert str(alice.home) not in out, "a directory of the member's own stood for the agent's: %s" % out
    # The agent runs and serves them: status and version say so, without its configuration.
    rc, out, err = alice.run("bkg", "agent", "status", "--json")
    assert rc == 0 and json.loads(out) == {"running": True, "socket": str(alice.agent.socket)}, (rc, out, err)
    rc, out, err = alice.run("bkg", "version")
    assert rc == 0 and "its version is shown to its admins only" in out, (rc, out, err)
    rc, out, err = alice.run("bkg", "agent", "start", "--state-dir", str(alice.home / "st"))
    assert rc == 125 and one_line(err) and "cannot be checked" in err, (rc, out, err)
    # The audit log is the admins': said so, not "no such file" of the member's own directory.
    for command in (("audit", "tail"), ("audit", "verify")):
        rc, out, err = alice.run("bkg", *command)
        assert rc == 125 and one_line(err) and "admins' to read" in err, (command, rc, out, err)
    eve = users["eve"]
    rc, out, err = eve.run("bkg", "doctor", "--json")
    assert rc == 1, (rc, out, err)
    agent = [check for check in json.loads(out)["checks"] if check["name"] == "agent"][0]
    # The problem as found, the fix as the fix (the commands' own line joins them).
    assert agent["status"] == "fail" and "only members of group" in agent["found"], agent
    assert "usermod -aG" in agent["fix"], agent
    # Nothing was learnt of the agent: no claim of what it shows.
    state_dir = [check for check in json.loads(out)["checks"] if check["name"] == "state_dir"][0]
    assert "could not be asked" in state_dir["found"] and "admins" not in state_dir["found"], state_dir


def test_a_process_holding_the_group_of_a_user_not_in_it_is_told_so_in_one_line(users):
    """USR-17: the filesystem lets a process holding the socket's group connect; the agent serves
    only members as the user database has them. Eve (removed from the group, her session still
    holding it) and a uid without an account get the agent's refusal, not a reset connection."""
    import grp
    eve = users["eve"]
    gid = grp.getgrnam(GROUP).gr_gid
    for uid, user_gid, said in ((eve.uid, eve.gid, "uid %d (%s) is not a member of group `%s`" % (eve.uid, eve.name, GROUP)),
                                (3999123, gid, "uid 3999123 has no account")):
        for command in (("exe", "--type", "python", "-c", "print(1)"), ("agent", "status")):
            rc, out, err = run_with_ids(eve.agent, uid, user_gid, [gid], *command)
            assert (rc, out) == (125, ""), (uid, command, rc, out, err)
            assert one_line(err) and said in err, (uid, command, err)
            assert "reset" not in err and "does not count" in err, err
    assert eve.agent.alive()


def test_a_member_whose_login_session_predates_it_is_told_to_log_in_again(users):
    """USR-18: alice is in the group in /etc/group, but a session begun before she was added
    lacks it: she is told to log in again, not to have an administrator add her."""
    alice = users["alice"]
    for command in (("exe", "--type", "python", "-c", "print(1)"), ("doctor", "--json")):
        rc, out, err = run_with_ids(alice.agent, alice.uid, alice.gid, [], *command)
        told = err if command[0] == "exe" else out
        assert rc != 0 and "usermod" not in told, (command, rc, out, err)
        assert "you are in group `%s`, but this login session is not" % GROUP in told, (command, out, err)
        assert "newgrp %s" % GROUP in told, (command, out, err)
    assert one_line(run_with_ids(alice.agent, alice.uid, alice.gid, [], "agent", "status")[2])


def test_a_member_is_told_where_to_sign_in_to_the_web_ui(users):
    """USR-19: `bkg ui` gives a member no admin login URL, and tells them where the Web UI is
    (the agent's TCP listener, no secret), or that it has none yet."""
    alice = users["alice"]
    agent = alice.agent
    rc, out, err = alice.run("bkg", "ui")
    assert (rc, out) == (125, ""), (rc, out, err)
    assert one_line(err) and "none does yet" in err and "token" not in err, err
    root = subprocess.run([str(agent.bin_dir / "bkg"), "ui", "--json"], capture_output=True,
                          env=agent.cli_env(), timeout=60)
    assert root.returncode == 0, root.stderr.decode()
    base = json.loads(root.stdout)["url"].split("/ui/login")[0]
    rc, out, err = alice.run("bkg", "ui")
    assert (rc, out) == (125, ""), (rc, out, err)
    assert one_line(err) and "sign in with it at %s/ui/login" % base in err, err
    assert "token" not in err, err


def test_a_user_of_an_agent_without_a_socket_group_is_told_how_to_get_one(users):
    """A socket 0600 root: no group to name (the hint once named a `bkg` that need not exist)."""
    agent = bkgsec.Agent("rootonly", warm_pool=0)
    try:
        agent.start()
        alice = User(users["alice"].name, users["alice"].home, agent)
        rc, out, err = alice.run("bkg", "exe", "--type", "python", "-c", "print(1)")
        assert (rc, out) == (125, ""), (rc, out, err)
        assert one_line(err) and "only root may" in err and "--socket-group GROUP" in err, err
        assert "usermod -aG GROUP %s" % alice.name in err, err
    finally:
        agent.remove()


def test_a_member_runs_a_project_in_a_0700_home_and_sees_only_their_own(users):
    alice, bob = users["alice"], users["bob"]
    for user in (alice, bob):
        project = user.home / "app"
        project.mkdir(exist_ok=True)
        os.chown(project, user.uid, user.gid)
        rc, _, err = user.run("bkg", "init", "--yes", cwd=project)
        assert rc == 0, err
        rc, _, err = user.run("bkg", "add", "api", "--type", "python", "--script",
                              "start=python main.py", cwd=project)
        assert rc == 0, err
        user.write("app/main.py", "import os\nopen('/workspace/kept', 'a').write('x')\n"
                   "print('ran', len(open('/workspace/kept').read()))\n")
        rc, out, err = user.run("bkgr", "api", cwd=project)
        assert rc == 0, err
        assert out.strip() == "ran 1", out
    rc, out, err = alice.run("bkg", "ls", "--all", "--json", cwd=alice.home / "app")
    assert rc == 0, err
    listed = json.loads(out)
    assert [(s["name"], s["namespace"]) for s in listed] == [("api", alice.namespace)], listed
    # The workspace image is the agent's, in its state dir, not in the user's project.
    assert not (alice.home / "app/.bkg/sandboxes/api/disk.img").exists()
    images = list((Path(alice.agent.state_dir) / "workspaces" / alice.namespace).glob("*/disk.img"))
    assert len(images) == 1, images
    # Bob sees none of Alice's runs, nor her sandbox.
    rc, out, err = bob.run("bkg", "runs", "ls", "--json")
    assert rc == 0, err
    assert all(run["namespace"] == bob.namespace for run in json.loads(out)), out
    alice_sandbox = listed[0]["id"]
    status, body = bkgsec_request_as(bob, "POST", "/api/v1/sandboxes/%s/stop" % alice_sandbox)
    assert status == 404, (status, body)
    status, body = bkgsec_request_as(bob, "GET", "/api/v1/runs/%s" % json.loads(
        alice.run("bkg", "runs", "ls", "--json")[1])[0]["id"])
    assert status == 404, (status, body)


def sandbox_id(project_dir, name):
    """As bkg_schema::sandbox::sandbox_id: NAME-<FNV-1a 64 of the directory>."""
    value = 0xCBF29CE484222325
    for byte in project_dir.encode():
        value ^= byte
        value = (value * 0x100000001B3) % (1 << 64)
    return "%s-%016x" % (name, value)


def bkgsec_request_as(user, method, path, body=None):
    """One HTTP request on the socket from `user`'s process (a tiny Python client run as them)."""
    client = (
        "import http.client, socket, sys, json\n"
        "class C(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])\n"
        "c = C('localhost'); body = sys.argv[4] if len(sys.argv) > 4 else None\n"
        "c.request(sys.argv[2], sys.argv[3], body=body, headers={'Content-Type': 'application/json'})\n"
        "r = c.getresponse(); print(r.status); print(r.read().decode())\n"
    )
    argv = ["runuser", "-u", user.name, "--", "python3", "-c", client, str(user.agent.socket), method, path]
    if body is not None:
        argv.append(json.dumps(body))
    done = subprocess.run(argv, capture_output=True, timeout=60, cwd="/")
    lines = done.stdout.decode().split("\n", 1)
    assert done.returncode == 0, done.stderr
    return int(lines[0]), lines[1] if len(lines) > 1 else ""


def test_a_member_cannot_make_an_admin_key_nor_stop_the_agent(users):
    alice = users["alice"]
    rc, out, err = alice.run("bkg", "keys", "create", "--role", "admin")
    assert rc != 0 and "bkg_" not in out, out
    assert one_line(err), err
    status, _ = bkgsec_request_as(alice, "POST", "/api/v1/agent/shutdown")
    assert status == 403
    rc, out, err = alice.run("bkg", "agent", "stop")
    assert (rc, out) == (125, ""), (rc, out, err)
    assert one_line(err) and "only an admin may stop the agent" in err, err
    assert alice.agent.alive()
    status, body = bkgsec_request_as(alice, "GET", "/api/v1/auth/whoami")
    assert status == 200 and json.loads(body)["namespace"] == alice.namespace, body


def project_with_volume(user, name, host, guest="/workspace/data"):
    project = user.home / name
    project.mkdir(exist_ok=True)
    os.chown(project, user.uid, user.gid)
    rc, _, err = user.run("bkg", "init", "--yes", cwd=project)
    assert rc == 0, err
    rc, _, err = user.run("bkg", "add", "api", "--type", "python", "--script", "start=cat %s" % guest,
                          "--volume", "%s:%s:ro" % (host, guest), cwd=project)
    assert rc == 0, err
    return project


def test_a_volume_that_is_a_symlink_to_etc_shadow_is_refused(users):
    alice = users["alice"]
    project = alice.home / "shadowy"
    project.mkdir(exist_ok=True)
    os.chown(project, alice.uid, alice.gid)
    link = project / "shadow"
    os.symlink("/etc/shadow", link)
    os.lchown(link, alice.uid, alice.gid)
    project_with_volume(alice, "shadowy", link, guest="/workspace/shadow")
    rc, out, err = alice.run("bkgr", "api", "--allow-outside", cwd=project)
    assert rc != 0
    assert SHADOW_MARK not in out and SHADOW_MARK not in err
    assert one_line(err), err
    # Straight to the API, the link itself as the volume (no CLI resolving it first).
    definition = {"name": "raw", "namespace": alice.namespace, "project_dir": str(project),
                  "language": "python", "volumes": [{"host": str(link), "guest": "/workspace/s"}]}
    status, body = bkgsec_request_as(alice, "PUT", "/api/v1/sandboxes/%s" % sandbox_id(str(project), "raw"),
                                     definition)
    assert status == 422 and "symbolic link" in body, (status, body)
    assert SHADOW_MARK not in body


def test_a_volume_naming_another_users_0600_file_is_refused(users):
    alice, bob = users["alice"], users["bob"]
    secret = bob.write("private/secret.txt", "bob's %s\n" % SECRET, mode=0o600)
    os.chmod(bob.home / "private", 0o755)
    os.chmod(bob.home, 0o711)
    try:
        project = project_with_volume(alice, "peek", secret, guest="/workspace/secret.txt")
        rc, out, err = alice.run("bkgr", "api", "--allow-outside", cwd=project)
        assert rc != 0
        assert SECRET not in out and SECRET not in err
        assert one_line(err), err
        assert "permission denied" in err, err
    finally:
        os.chmod(bob.home, 0o700)
    # Behind a directory closed to alice, the fix is not to create it.
    project = project_with_volume(alice, "peek2", bob.home / "private", guest="/workspace/private")
    rc, out, err = alice.run("bkgr", "api", "--allow-outside", cwd=project)
    assert rc != 0 and one_line(err), err
    assert "closed to you" in err and "create it" not in err, err


def test_bkg_exe_file_naming_another_users_0600_file_is_refused(users):
    alice, bob = users["alice"], users["bob"]
    secret = bob.write("private/other.txt", "bob's other %s\n" % SECRET, mode=0o600)
    os.chmod(bob.home / "private", 0o755)
    os.chmod(bob.home, 0o711)
    try:
        alice.write("cat.py", "print(open('other.txt').read())\n")
        rc, out, err = alice.run("bkg", "exe", "cat.py", "--file", str(secret))
        assert rc != 0
        assert SECRET not in out and SECRET not in err
        assert one_line(err), err
    finally:
        os.chmod(bob.home, 0o700)


def test_a_hand_crafted_workspace_image_in_the_project_is_never_mounted(users):
    alice = users["alice"]
    project = alice.home / "crafted"
    project.mkdir(exist_ok=True)
    os.chown(project, alice.uid, alice.gid)
    rc, _, err = alice.run("bkg", "init", "--yes", cwd=project)
    assert rc == 0, err
    rc, _, err = alice.run("bkg", "add", "api", "--type", "python", "--script", "start=ls /workspace",
                           cwd=project)
    assert rc == 0, err
    image = alice.write("crafted/.bkg/sandboxes/api/disk.img", "", mode=0o644)
    # A real ext4 image the user made: the kind of thing a root mount must never parse.
    subprocess.run(["runuser", "-u", alice.name, "--", "truncate", "-s", "8M", str(image)], check=True)
    subprocess.run(["runuser", "-u", alice.name, "--", "/usr/sbin/mkfs.ext4", "-q", "-F", str(image)],
                   check=True, capture_output=True)
    rc, out, err = alice.run("bkgr", "api", cwd=project)
    assert rc != 0, out
    assert one_line(err), err
    assert "was not made by the agent" in err, err
    assert bkgsec.loop_devices_under(str(project)) == []


def test_a_member_is_held_to_the_per_user_limits(users):
    carol = users["carol"]
    carol.write("hello.py", "print('hello')\n")
    rc, out, err = carol.run("bkg", "exe", "--memory", "1GiB", "hello.py")
    assert rc != 0 and out == ""
    assert one_line(err) and "a local user may ask for" in err, err
    # A plain run gets the cap, lower than the agent's default of 512 MiB, instead of a refusal.
    rc, out, err = carol.run("bkg", "exe", "hello.py")
    assert rc == 0 and out == "hello\n", err
    rc, out, err = carol.run("bkg", "runs", "ls", "--json")
    assert json.loads(out)[0]["limits"]["memory_bytes"] == 256 * 1024 * 1024, out
    outcomes = []
    for index in range(MAX_SANDBOXES + 1):
        project = carol.home / ("p%d" % index)
        project.mkdir(exist_ok=True)
        os.chown(project, carol.uid, carol.gid)
        assert carol.run("bkg", "init", "--yes", cwd=project)[0] == 0
        assert carol.run("bkg", "add", "api", "--type", "python", "--script", "start=true", cwd=project)[0] == 0
        outcomes.append(carol.run("bkgr", "api", cwd=project))
    assert [rc for rc, _, _ in outcomes[:MAX_SANDBOXES]] == [0] * MAX_SANDBOXES, outcomes
    rc, _, err = outcomes[MAX_SANDBOXES]
    assert rc != 0 and one_line(err) and "persistent sandboxes" in err, err
    # A sandbox shows the limits the member's runs of it get, and a session, which otherwise
    # lives as long as the agent's longest run, ends at the member's timeout cap too.
    project = carol.home / "p0"
    assert carol.run("bkg", "exec", "api", "-c", "x = 1", cwd=project)[0] == 0
    rc, out, err = carol.run("bkg", "status", "api", "--json", cwd=project)
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["limits"]["memory_bytes"] == 256 * 1024 * 1024, out
    assert shown["limits"]["timeout_ms"] == 30_000, out
    rc, out, err = carol.run("bkg", "runs", "show", shown["session"]["run_id"], "--json")
    assert rc == 0, err
    assert json.loads(out)["limits"]["timeout_ms"] == 30_000, out
    assert carol.run("bkg", "stop", "api", cwd=project)[0] == 0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def nothing_listens_on(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_member_cannot_forward_a_privileged_port_or_one_other_hosts_reach(users):
    bob = users["bob"]
    bob.write("serve.py", "print('served')\n")
    port = free_port()
    for mapping in ("0.0.0.0:%d:8000" % port, "80:8000"):
        rc, out, err = bob.run("bkg", "exe", "-p", mapping, "serve.py")
        assert rc == 125 and out == "", (mapping, out, err)
        assert one_line(err) and "only an admin may forward" in err, err
    project = bob.home / "exposed"
    project.mkdir(exist_ok=True)
    os.chown(project, bob.uid, bob.gid)
    assert bob.run("bkg", "init", "--yes", cwd=project)[0] == 0
    assert bob.run("bkg", "add", "api", "--type", "python", "--script", "start=true", cwd=project)[0] == 0
    cave = project / "cave.yaml"
    text = cave.read_text()
    assert "    scripts:" in text, text
    cave.write_text(text.replace("    scripts:", "    ports: ['0.0.0.0:%d:8000']\n    scripts:" % port, 1))
    rc, out, err = bob.run("bkgr", "api", cwd=project)
    assert rc != 0 and one_line(err) and "only an admin may forward" in err, (rc, out, err)
    assert nothing_listens_on(port)
    # A port of 1024 and up on loopback is any member's.
    rc, out, err = bob.run("bkg", "exe", "-p", "%d:8000" % port, "serve.py")
    assert rc == 0 and out == "served\n", err


def test_bkg_cp_moves_files_only_where_the_member_may_write_and_from_what_they_may_read(users):
    alice, bob = users["alice"], users["bob"]
    project = alice.home / "copies"
    project.mkdir(exist_ok=True)
    os.chown(project, alice.uid, alice.gid)
    assert alice.run("bkg", "init", "--yes", cwd=project)[0] == 0
    assert alice.run("bkg", "add", "box", "--type", "python", "--script", "start=ls /workspace",
                     cwd=project)[0] == 0
    assert alice.run("bkgr", "box", cwd=project)[0] == 0
    alice.write("copies/note.txt", "alice's note\n")
    rc, _, err = alice.run("bkg", "cp", "note.txt", "box:", cwd=project)
    assert rc == 0, err
    # Out of the sandbox into places the member cannot write: refused by the kernel, as her.
    bob_private = bob.home / "private-dir"
    bob_private.mkdir(exist_ok=True)
    os.chown(bob_private, bob.uid, bob.gid)
    os.chmod(bob_private, 0o700)
    for dest in (bob_private / "stolen", Path("/etc/bkgsec-%s" % TAG), Path(alice.agent.state_dir) / "planted"):
        rc, out, err = alice.run("bkg", "cp", "box:note.txt", dest, cwd=project)
        assert rc == 125 and one_line(err), (dest, rc, out, err)
        assert not dest.exists(), dest
    # Into the sandbox from files she cannot read: nothing of them reaches it.
    secret = bob.write("secret.txt", SECRET + "\n", mode=0o600)
    for source in (secret, Path("/etc/shadow")):
        rc, out, err = alice.run("bkg", "cp", source, "box:", cwd=project)
        assert rc == 125 and one_line(err) and str(source) in err, (source, rc, out, err)
        assert SECRET not in out + err and SHADOW_MARK not in out + err
    # A directory with one file she may not read: that file is named, and nothing is copied.
    alice.write("copies/mixed/ok.txt", "fine\n")
    locked = alice.write("copies/mixed/locked.txt", "locked\n", mode=0o000)
    rc, out, err = alice.run("bkg", "cp", "mixed", "box:", cwd=project)
    assert rc == 125 and one_line(err) and str(locked.relative_to(project)) in err, (rc, out, err)
    rc, out, err = alice.run("bkgr", "box", cwd=project)
    assert rc == 0 and out.split() == ["note.txt"], (out, err)


def test_a_shared_project_keeps_each_sandbox_in_its_namespace(users):
    """USR-14: a project directory two members (and root) may write, where one has run a sandbox.
    Dave owns it: the other members' sandboxes are at the per-user limit by now."""
    import grp
    dave, bob = users["dave"], users["bob"]
    agent = dave.agent
    shared = Path(agent.dir) / "shared"
    shared.mkdir()
    os.chown(shared, dave.uid, grp.getgrnam(GROUP).gr_gid)
    os.chmod(shared, 0o2775)
    assert dave.run("bkg", "init", "--yes", cwd=shared)[0] == 0
    assert dave.run("bkg", "add", "api", "--type", "python", "--script", "start=python main.py",
                     cwd=shared)[0] == 0
    main = shared / "main.py"
    main.write_text("open('/workspace/kept', 'a').write('x')\nprint('ran', len(open('/workspace/kept').read()))\n")
    os.chmod(main, 0o664)
    rc, out, err = dave.run("bkgr", "api", cwd=shared)
    assert (rc, out.strip()) == (0, "ran 1"), err
    cave = (shared / "cave.yaml").read_text()
    # Bob reads the same cave.yaml: he is told whose it is, not sent to make it, and his
    # `bkg rm` neither says it removed it nor takes it out of cave.yaml.
    for argv in (("bkg", "status", "api"), ("bkgr", "api"), ("bkg", "rm", "api", "--force")):
        rc, out, err = bob.run(*argv, cwd=shared)
        assert rc == 125 and one_line(err) and "belongs to another namespace" in err, (argv, rc, out, err)
    assert (shared / "cave.yaml").read_text() == cave
    # His `bkg ls` says whose it is, not that it was never made.
    rc, out, err = bob.run("bkg", "ls", cwd=shared)
    assert rc == 0 and "another namespace's" in out and "not created" not in out, (rc, out, err)
    # Root (an admin) does not take it over into its own namespace, with a disk of its own.
    root = subprocess.run([str(agent.bin_dir / "bkgr"), "api"], cwd=str(shared), capture_output=True,
                          env=agent.cli_env(), timeout=90)
    err = root.stderr.decode()
    assert root.returncode == 125 and "is in namespace `%s`" % dave.namespace in err, (root.returncode, err)
    # Nobody changed cave.yaml: the way out named first is running it as its maker.
    assert "Run it as a caller of `%s`" % dave.namespace in err, err
    rc, out, err = dave.run("bkgr", "api", cwd=shared)
    assert (rc, out.strip()) == (0, "ran 2"), (out, err)



def test_members_whose_names_differ_only_in_punctuation_share_nothing(users):
    """USR-16: `bkstw_TAG` and `bkstw-TAG` are two users; each sees only their own runs, secrets
    and files."""
    twin, other = users["twin_"], users["twin-"]
    twin.write("keep.py", "import os\nos.makedirs('/workspace/out')\nopen('/workspace/out/note.txt', 'w').write(%r)\n" % SECRET)
    rc, out, err = twin.run("bkg", "exe", "keep.py")
    assert rc == 0, err
    rc, out, err = twin.run("bkg", "secrets", "set", "TWIN_SECRET", stdin=SECRET.encode())
    assert rc == 0, err
    rc, out, err = twin.run("bkg", "runs", "ls", "--json")
    assert rc == 0, err
    runs = json.loads(out)
    assert len(runs) == 1, runs
    namespace, run_id = runs[0]["namespace"], runs[0]["id"]
    rc, out, err = other.run("bkg", "runs", "ls", "--json")
    assert rc == 0 and json.loads(out) == [], (out, err)
    rc, out, err = other.run("bkg", "secrets", "ls")
    assert rc == 0 and "TWIN_SECRET" not in out + err, (out, err)
    rc, out, err = other.run("bkg", "exe", "--secret", "TWIN_SECRET", "--type", "python", "-c", "print(1)")
    assert rc != 0 and SECRET not in out + err, (rc, out, err)
    rc, out, err = other.run("bkg", "runs", "files", run_id, "--output", "fetched")
    assert rc != 0 and not (other.home / "fetched").exists(), (rc, out, err)
    rc, out, err = other.run("bkg", "exe", "--type", "python", "-c", "print(1)")
    assert rc == 0, err
    rc, out, err = other.run("bkg", "runs", "ls", "--json")
    assert rc == 0 and {run["namespace"] for run in json.loads(out)} - {namespace}, (namespace, out)


def test_a_member_taken_out_of_the_group_loses_the_runs_going_on(users):
    """USR-20: an administrator takes carol out of the socket's group while her run goes on: the
    agent ends it at once (`killed_by: cancelled`, as a revoked key's run), where it used to run
    on to its end; her next command is refused."""
    carol = users["carol"]
    env = ["%s=%s" % item for item in carol.env().items()]
    argv = ["runuser", "-u", carol.name, "--", "env", "-i", *env, str(carol.agent.bin_dir / "bkg"), "exe",
            "--type", "python", "-c", "import time\nprint('started', flush=True)\ntime.sleep(120)"]
    running = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(carol.home))
    try:
        assert running.stdout.readline() == b"started\n"
        run_root("gpasswd", "--delete", carol.name, GROUP)
        out, err = running.communicate(timeout=60)
        assert running.returncode == 130, (running.returncode, out, err)
        assert b"its user was taken out of the agent's group" in err, err
        rc, out, err = carol.run("bkg", "exe", "--type", "python", "-c", "print(1)")
        assert (rc, out) == (125, "") and "only members of group" in err, (rc, out, err)
    finally:
        running.kill()
        run_root("gpasswd", "--add", carol.name, GROUP)
    rc, out, err = carol.run("bkg", "runs", "ls", "--json")
    assert rc == 0 and [run["killed_by"] for run in json.loads(out)][:1] == ["cancelled"], (out, err)
