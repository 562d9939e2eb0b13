"""API: the agent's HTTP API on its unix socket, its socket, and the agent's own lifecycle."""

import base64
import concurrent.futures
import json
import os
import resource
import select
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

import bkgsec

MIB = 1024 * 1024


def assert_error_shape(response, statuses):
    assert response.status in statuses, response
    body = response.json
    assert isinstance(body, dict) and set(body) == {"error"}, response
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], response
    assert isinstance(body["error"].get("message"), str) and body["error"]["message"], response
    return body["error"]


def run_request(**overrides):
    request = {"language": "python", "code": "print('hi')"}
    request.update(overrides)
    return request


MALFORMED = {
    "truncated": b'{"language":"python","code":"print(1)"',
    "not_json": b"hello world",
    "empty": b"",
    "array": b"[1, 2, 3]",
    "wrong_type": b'{"language":"python","code":42}',
    "unknown_field": b'{"language":"python","code":"print(1)","privileged":true}',
    "unknown_language": b'{"language":"cobol","code":"DISPLAY 1"}',
    "invalid_utf8": b'{"language":"python","code":"\xff\xfe"}',
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_is_rejected(agent, case):
    response = agent.request("POST", "/api/v1/runs", body=MALFORMED[case])
    assert_error_shape(response, (400, 422))
    assert agent.request("GET", "/healthz").status == 200


def test_huge_body_is_413(agent):
    size = 64 * MIB + MIB
    prefix = b'{"language":"python","code":"'
    connection = bkgsec.UnixHTTPConnection(agent.socket, timeout=60)
    try:
        connection.putrequest("POST", "/api/v1/runs")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        sent = 0
        try:
            connection.send(prefix)
            sent = len(prefix)
            chunk = b"a" * MIB
            while sent < size - 2:
                piece = chunk[: size - 2 - sent]
                connection.send(piece)
                sent += len(piece)
            connection.send(b'"}')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent may answer and hang up before the body is all sent
        raw = connection.getresponse()
        response = bkgsec.Response(raw.status, dict(raw.getheaders()), raw.read())
    finally:
        connection.close()
    error = assert_error_shape(response, (413,))
    assert error["code"] == "payload_too_large", response
    assert agent.request("GET", "/healthz").status == 200


UPLOADS = {
    "dotdot": "../etc/passwd",
    "absolute_etc": "/etc/passwd",
    "workspace_dotdot": "/workspace/../etc/bkg-sec",
    "nested_dotdot": "a/../../b",
    "tmp_prefix": "/tmpfoo/x",
    "proc": "/proc/self/attr/current",
    "workspace_itself": "/workspace",
}


@pytest.mark.parametrize("case", list(UPLOADS))
def test_upload_path_traversal_is_422(agent, case):
    destination = UPLOADS[case]
    response = agent.request("POST", "/api/v1/runs", body=run_request(
        files=[{"path": destination, "content_base64": base64.b64encode(b"owned").decode()}]))
    error = assert_error_shape(response, (422,))
    assert error["code"] == "bad_request", response
    assert not Path("/etc/bkg-sec").exists()


def above_max(agent, field):
    info = agent.request("GET", "/api/v1/agent").json
    return info["max_limits"][field] + 1


BAD_LIMITS = {
    "memory_zero": ("memory_bytes", 0),
    "timeout_zero": ("timeout_ms", 0),
    "cpu_zero": ("cpu_millis", 0),
    "disk_zero": ("disk_bytes", 0),
    "memory_negative": ("memory_bytes", -1),
    "timeout_negative": ("timeout_ms", -5000),
    "memory_above_max": ("memory_bytes", "max"),
    "timeout_above_max": ("timeout_ms", "max"),
    "disk_above_max": ("disk_bytes", "max"),
    "cpu_above_max": ("cpu_millis", "max"),
    "pids_above_max": ("pids", "max"),
}


@pytest.mark.parametrize("case", list(BAD_LIMITS))
def test_bad_limit_is_422(agent, case):
    field, value = BAD_LIMITS[case]
    if value == "max":
        value = above_max(agent, field)
    response = agent.request("POST", "/api/v1/runs", body=run_request(limits={field: value}))
    error = assert_error_shape(response, (422,))
    assert error["code"] in ("bad_request", "limit_above_maximum"), response


def test_cli_refuses_bad_limits_with_125(agent):
    for flags in (["--memory", "0"], ["--memory", "-5MiB"], ["--timeout", "0"], ["--cpus", "0"],
                  ["--memory", "99TiB"], ["--timeout", "99h"], ["--cpus", "1000"], ["--disk", "1KiB"]):
        outcome = agent.exe("print('ran')", *flags)
        assert outcome.rc == 125, (flags, outcome.describe())
        assert outcome.stdout == b"", (flags, outcome.stdout)
        lines = outcome.text("stderr").strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bkg"), (flags, lines)


METACHARACTERS = ["$(id)", "`id`", "; touch /tmp/pwned", "| cat /etc/passwd", "&& reboot",
                  "'\"", "*", "~", "$HOME", "\\n", "-c", "--", "a\nb", " spaced  arg "]
ECHO = "import json, os, sys\nprint(json.dumps([sys.argv[1:], os.environ.get('EVIL')]))"


@pytest.mark.parametrize("via", ["api", "cli"])
def test_shell_metacharacters_are_passed_literally(agent, via):
    if via == "api":
        response = agent.request("POST", "/api/v1/runs", body=run_request(
            code=ECHO, args=METACHARACTERS, env={"EVIL": "$(id)`id`"}))
        assert response.status == 200, response
        result = response.json
    else:
        outcome = agent.exe(ECHO, "--env", "EVIL=$(id)`id`", args=METACHARACTERS)
        assert outcome.rc == 0, outcome
        result = outcome.result
    assert result["exit_code"] == 0, result
    assert json.loads(result["stdout"]) == [METACHARACTERS, "$(id)`id`"], result


def test_invalid_env_name_is_422(agent):
    for name in ("A=B", "", "1X", "X Y", "LD_PRELOAD\0"):
        response = agent.request("POST", "/api/v1/runs", body=run_request(env={name: "x"}))
        error = assert_error_shape(response, (422,))
        assert error["code"] == "bad_request", (name, response)


def test_script_name_traversal_is_422(agent):
    for name in ("../x.py", "/etc/x.py", "a/b.py", "..", ".", ""):
        response = agent.request("POST", "/api/v1/runs", body=run_request(script_name=name))
        error = assert_error_shape(response, (422,))
        assert error["code"] == "bad_request", (name, response)


def test_unknown_run_id_is_404(agent):
    for run_id in ("run_doesnotexist", "..%2F..%2Fetc%2Fpasswd", "%27%20OR%201=1--"):
        response = agent.request("GET", "/api/v1/runs/" + run_id)
        error = assert_error_shape(response, (404,))
        assert error["code"] == "not_found", (run_id, response)


def test_request_flood_leaves_the_agent_healthy(agent):
    fds_before = len(os.listdir("/proc/%d/fd" % agent.pid))

    def one(_):
        return agent.request("GET", "/api/v1/agent", timeout=20).status

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200, statuses
    assert agent.alive()
    assert agent.request("GET", "/healthz").status == 200
    outcome = agent.exe("print('still serving')")
    assert outcome.rc == 0 and outcome.out == "still serving\n", outcome
    # Closed connections are released as the agent notices them: wait for that, boundedly.
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/%d/fd" % agent.pid)) > fds_before + 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/%d/fd" % agent.pid)) <= fds_before + 8, "the agent leaks connections"


def test_socket_is_mode_0600(agent):
    st = os.lstat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == 0


NOBODY_CLIENT = r"""
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("CONNECT", errno.errorcode[e.errno]); sys.exit(0)
data = b""
try:
    s.sendall(b"GET /api/v1/agent HTTP/1.1\r\nHost: bkg\r\nConnection: close\r\n\r\n")
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as e:
    print("IO", errno.errorcode.get(e.errno, e.errno))
print("RESPONSE", len(data), data[:15])
print(data.decode(errors="replace").split("\r\n\r\n", 1)[-1])
"""


def as_nobody(*argv):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30, cwd="/")


def test_another_user_cannot_connect(agent):
    # The socket's directory is searchable by all (0755): only the socket's mode stands in the way.
    assert stat.S_IMODE(os.stat(agent.socket.parent).st_mode) & 0o005 == 0o005
    done = as_nobody(bkgsec.DEBIAN_PYTHON, "-c", NOBODY_CLIENT, str(agent.socket))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "CONNECT EACCES", done.stdout
    cli = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          str(agent.bin_dir / "bkg"), "exe", "--type", "python", "-c", "print(1)"],
                         capture_output=True, text=True, timeout=30, cwd="/", env=agent.cli_env())
    assert cli.returncode == 125 and cli.stdout == "", (cli.returncode, cli.stdout, cli.stderr)


def test_peer_credential_check_refuses_another_user(agent):
    """Even with the socket opened to all (mode 0666), the agent serves no caller that is neither
    root, nor its own user, nor in the socket's group: it answers the request with its fixed 403
    saying so, and closes, whatever was asked."""
    os.chmod(agent.socket, 0o666)
    try:
        done = as_nobody(bkgsec.DEBIAN_PYTHON, "-c", NOBODY_CLIENT, str(agent.socket))
    finally:
        os.chmod(agent.socket, 0o600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].startswith("RESPONSE ") and "HTTP/1.1 403" in lines[0], done.stdout
    body = json.loads(lines[1])
    assert body["error"]["code"] == "forbidden", body
    assert body["error"]["message"].startswith("you may not use the agent: uid 65534"), body
    assert "version" not in lines[1] and "state_dir" not in lines[1], done.stdout
    assert "refused a connection from another user" in agent.log_path.read_text(errors="replace")
    assert agent.request("GET", "/healthz").status == 200


LONG_RUN = bkgsec.PRELUDE + "\nimport time\nprint('UP', flush=True)\ntime.sleep(120)\n"


def start_long_run(a):
    run = a.spawn_exe(LONG_RUN, "--timeout", "120s")
    line = bkgsec.read_line(run.stdout, 20)
    assert line == b"UP\n", (line, a.log_tail())
    return run


def end_client(run):
    if run.poll() is None:
        run.kill()
        run.wait()


def test_killed_agent_leaves_nothing_after_restart(second_agent):
    a = second_agent.start()
    low, high = a.uid_base, a.uid_base + 65536
    run = start_long_run(a)
    try:
        run.stdin.close()
        before = {
            "processes": bkgsec.processes_with_uid_in(low, high),
            "run_cgroups": [d for c in bkgsec.cgroup_dirs_named(a.cgroup_dir) for d in bkgsec.subdirs(c)],
            "loop_devices": bkgsec.loop_devices_under(a.state_dir),
            "sandbox_dirs": os.listdir(a.state_dir / "sandboxes"),
        }
        # Prove the checks below look at the right places: the run exists in all of them now.
        assert all(before.values()), before
        identities = {pid: bkgsec.start_time(pid) for pid in before["processes"]}
        a.kill()
        run.wait(timeout=30)
        assert run.returncode == 125, (run.returncode, run.stderr.read())
    finally:
        end_client(run)
    a.start(warm_pool=0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = {
            "processes": bkgsec.processes_with_uid_in(low, high)
            + [pid for pid, started in identities.items() if started and bkgsec.start_time(pid) == started],
            "run_cgroups": [d for c in bkgsec.cgroup_dirs_named(a.cgroup_dir) for d in bkgsec.subdirs(c)],
            "mounts": bkgsec.mount_lines_mentioning(str(a.state_dir)),
            "loop_devices": bkgsec.loop_devices_under(a.state_dir),
            "sandbox_dirs": os.listdir(a.state_dir / "sandboxes"),
        }
        if not any(leftovers.values()):
            break
        time.sleep(0.1)
    assert not any(leftovers.values()), "the restarted agent left: %s\n%s" % (leftovers, a.log_tail())
    outcome = a.exe("print('after restart')")
    assert outcome.rc == 0 and outcome.out == "after restart\n", outcome
    a.wait_idle()
    a.stop()
    assert bkgsec.cgroup_dirs_named(a.cgroup_dir) == [], "cgroup dirs survive a clean stop"


def test_killed_agent_takes_its_running_sandbox_down(second_agent):
    """Without its agent nobody enforces a run's timeout: the sandbox must die with the agent,
    not linger until an agent is started again."""
    a = second_agent.start()
    low, high = a.uid_base, a.uid_base + 65536
    run = start_long_run(a)
    try:
        run.stdin.close()
        assert bkgsec.processes_with_uid_in(low, high), "the run's processes are not where expected"
        a.kill()
        deadline = time.monotonic() + 5
        survivors = bkgsec.processes_with_uid_in(low, high)
        while survivors and time.monotonic() < deadline:
            time.sleep(0.1)
            survivors = bkgsec.processes_with_uid_in(low, high)
        described = {pid: (bkgsec.process_status(pid) or {}).get("Name") for pid in survivors}
    finally:
        end_client(run)
        a.start(warm_pool=0)  # a new agent removes whatever the killed one left
    assert survivors == [], "5 s after the agent was SIGKILLed its sandbox still runs: %s" % described


def test_cli_exits_when_the_agent_dies_mid_run(second_agent):
    """A caller whose agent dies mid-run gets exit 125 and one line, even while it still has
    stdin open for the script."""
    a = second_agent.start()
    run = start_long_run(a)
    try:
        a.kill()
        try:
            run.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        returncode = run.poll()
        err = b"" if returncode is None else run.stderr.read()
    finally:
        end_client(run)
        a.start(warm_pool=0)
    assert returncode == 125, "bkg exe still hangs 10 s after its agent died (stdin open)"
    assert len(err.decode().strip().splitlines()) == 1, err


# -- hostile clients of the listeners (issue: idle and slow connections lock the agent out) ------


@pytest.fixture
def limited_agent():
    """Starts an agent of its own with a TCP listener on loopback and the given flags."""
    if os.environ.get("BKG_SEC_DRYRUN_HOST") == "1":
        pytest.skip("BKG_SEC_DRYRUN_HOST=1: no agent is started in the dry-run demonstration")
    address_file = Path(os.environ.get("TMPDIR", "/tmp")) / ("bkg-sec-address-%d" % os.getpid())
    started = []

    def start(*flags):
        address_file.unlink(missing_ok=True)
        args = ["--listen", "127.0.0.1:0", "--listen-address-file", str(address_file), *flags]
        instance = bkgsec.Agent("net", warm_pool=1, extra_args=args)
        started.append(instance)
        instance.start()
        deadline = time.monotonic() + 30
        while not (address_file.exists() and address_file.read_text().endswith("\n")):
            assert time.monotonic() < deadline, "no TCP address written"
            time.sleep(0.02)
        host, port = address_file.read_text().strip().rsplit(":", 1)
        instance.tcp = (host, int(port))
        return instance

    yield start
    address_file.unlink(missing_ok=True)
    for instance in started:
        instance.remove()


def closed_by_agent(sock):
    """Whether the agent closed `sock` (end of file or a reset) within a minute."""
    sock.settimeout(60)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_tcp_connections_cannot_lock_out_the_socket(limited_agent):
    """1,000 idle TCP connections (no key needed): those over the cap are closed on arrival and
    the unix socket still runs code and answers healthz."""
    limited_agent = limited_agent("--max-connections", "20", "--header-timeout", "10m")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    idle = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(limited_agent.tcp, timeout=60)
            idle.append(sock)
        assert all(closed_by_agent(sock) for sock in idle[20:100]), "connections over the cap were kept"
        health = limited_agent.request("GET", "/healthz", timeout=30)
        assert health.status == 200, health
        outcome = limited_agent.exe("print('served')")
        assert outcome.rc == 0 and outcome.out == "served\n", outcome
    finally:
        for sock in idle:
            sock.close()


def test_half_sent_headers_are_closed(limited_agent):
    """Connections that never finish their request head are closed after the header timeout, on
    TCP and on the socket."""
    limited_agent = limited_agent("--header-timeout", "1s")
    opened = []
    try:
        for _ in range(200):
            sock = socket.create_connection(limited_agent.tcp, timeout=60)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n")
            opened.append(sock)
        local = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        local.connect(str(limited_agent.socket))
        local.sendall(b"GET /healthz HTTP/1.1\r\n")
        opened.append(local)
        assert all(closed_by_agent(sock) for sock in opened), "a half-sent head was kept open"
        assert limited_agent.request("GET", "/healthz").status == 200
    finally:
        for sock in opened:
            sock.close()


def test_concurrent_big_bodies_share_one_budget(limited_agent):
    """16 concurrent 60 MB bodies: one fits the 64 MiB budget, the others get 503 with
    Retry-After at once; the agent's memory stays near the budget; bad chunking is a 400."""
    limited_agent = limited_agent("--body-budget", "64MiB", "--body-timeout", "5s")
    size = 60 * 1000 * 1000

    def big_post():
        connection = bkgsec.UnixHTTPConnection(limited_agent.socket, timeout=60)
        connection.putrequest("POST", "/api/v1/runs")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        return connection

    first = big_post()
    first.send(b" " * MIB)
    others = []
    try:
        deadline = time.monotonic() + 60
        refused = []
        while len(refused) < 15:
            assert time.monotonic() < deadline, "the budget never refused a body: %r" % refused
            if select.select([first.sock], [], [], 0)[0]:
                # Another body reached the budget before the first: start the first again.
                first.close()
                first = big_post()
                first.send(b" " * MIB)
            connection = big_post()
            others.append(connection)
            raw = connection.getresponse()
            response = bkgsec.Response(raw.status, dict(raw.getheaders()), raw.read())
            if response.status == 503:
                refused.append(response)
        for response in refused:
            assert assert_error_shape(response, (503,))["code"] == "unavailable"
            assert response.headers.get("retry-after") == "1", response.headers
        rss_kib = int(next(line.split()[1] for line in Path("/proc/%d/status" % limited_agent.pid).read_text()
                           .splitlines() if line.startswith("VmRSS:")))
        assert rss_kib < 400 * 1024, "agent RSS %d KiB" % rss_kib
    finally:
        first.close()
        for connection in others:
            connection.close()
    bad = bkgsec.UnixHTTPConnection(limited_agent.socket, timeout=60)
    try:
        bad.putrequest("POST", "/api/v1/runs")
        bad.putheader("Transfer-Encoding", "chunked")
        bad.endheaders()
        bad.send(b"zz\r\nnot a chunk\r\n0\r\n\r\n")
        raw = bad.getresponse()
        response = bkgsec.Response(raw.status, dict(raw.getheaders()), raw.read())
    finally:
        bad.close()
    assert assert_error_shape(response, (400,))["code"] == "bad_request"


def test_cli_does_not_wait_forever_on_a_stopped_agent(second_agent):
    """A SIGSTOPped agent: `bkg agent status` and `bkg exe --timeout 2s` end with 125 and one line
    instead of hanging."""
    a = second_agent.start()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        env = dict(a.cli_env(), BKG_CLIENT_TIMEOUT="2s")
        outcomes = []
        for args in (["agent", "status"], ["exe", "--timeout", "2s", "--type", "python", "-c", "print(1)"]):
            done = subprocess.run([str(a.bin_dir / "bkg"), *args], capture_output=True, env=env, timeout=60,
                                  stdin=subprocess.DEVNULL)
            outcomes.append(done)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    for done in outcomes:
        assert done.returncode == 125, done
        assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
        assert b"does not answer" in done.stderr, done.stderr
    assert a.request("GET", "/healthz").status == 200
