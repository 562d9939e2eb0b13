"""Helpers of the bkg security suite: the agent under test, the CLI, the HTTP API on the unix
socket, and host-side inspection. Stdlib only."""

import errno
import http.client
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PRELUDE = (HERE / "attack_prelude.py").read_text()
PROBE = (HERE / "probe.py").read_text()
GUARD_EXIT = 86
GUARD_MARK = "BKG-GUARD-REFUSED"
REPORT_MARK = "BKG-REPORT "
DEBIAN_PYTHON = "/usr/bin/python3"

# The node counterpart of attack_prelude.py's guard.
NODE_PRELUDE = r"""
'use strict';
const fs = require('fs');
const os = require('os');
(function bkgGuard() {
  let pids = [], uidMap = [];
  try {
    pids = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e));
    uidMap = fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split('\n')
      .map((line) => line.trim().split(/\s+/)).map((f) => f[0] + ' ' + f[2]);
  } catch (e) { pids = new Array(1000); }
  const inside = pids.length < 20 && process.getuid() === 1000 && os.hostname() === 'bkg' &&
    fs.existsSync('/workspace') && uidMap.join(',') === '0 1,1000 1,65534 1' &&
    !fs.existsSync('/sys/fs/cgroup');
  if (!inside) {
    process.stderr.write('BKG-GUARD-REFUSED: not inside a bkg sandbox; the attack did not fire\n');
    process.exit(86);
  }
})();
function report(fields) { console.log('BKG-REPORT ' + JSON.stringify(fields)); }
function attempt(fn) { try { fn(); return 'OK'; } catch (e) { return e.code || String(e); } }
// ---- the attack follows ----
"""


class MissingBinaries(Exception):
    pass


def bin_dir():
    directory = Path(os.environ.get("BKG_BIN_DIR") or REPO / "target" / "debug")
    missing = [name for name in ("bkg", "bkg-agent") if not os.access(directory / name, os.X_OK)]
    if missing:
        raise MissingBinaries(
            "%s missing in %s: build them first with `cargo build --workspace` "
            "(or point BKG_BIN_DIR at a directory holding bkg and bkg-agent)"
            % (" and ".join(missing), directory)
        )
    return directory


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over the agent's unix socket."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self):
        return "<HTTP %s %r>" % (self.status, self.body[:300])


class Outcome:
    """One finished `bkg exe`."""

    def __init__(self, argv, returncode, stdout, stderr, elapsed, json_mode):
        self.argv = argv
        self.rc = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed
        self.result = None
        if json_mode:
            try:
                self.result = json.loads(stdout)
            except ValueError:
                self.result = None

    @property
    def guard_refused(self):
        return self.rc == GUARD_EXIT and GUARD_MARK in self.text("stderr") + self.err + self.out

    def text(self, which):
        return getattr(self, which).decode("utf-8", "replace")

    @property
    def out(self):
        """The script's stdout (from the JSON result, or the raw stream)."""
        if self.result is not None:
            return self.result.get("stdout", "")
        return self.text("stdout")

    @property
    def err(self):
        if self.result is not None:
            return self.result.get("stderr", "")
        return self.text("stderr")

    @property
    def report(self):
        for line in self.out.splitlines():
            if line.startswith(REPORT_MARK):
                return json.loads(line[len(REPORT_MARK):])
        raise AssertionError("the snippet printed no report\n%s" % self.describe())

    def describe(self):
        result = dict(self.result or {})
        script_out = result.pop("stdout", None)
        script_err = result.pop("stderr", None)
        return ("bkg exit %s after %.2fs\nresult: %s\nscript stdout: %r\nscript stderr: %r\n"
                "bkg stderr: %s%s") % (
            self.rc, self.elapsed, json.dumps(result)[:1500],
            (script_out or "")[:1500], (script_err or "")[-1500:],
            self.text("stderr")[-1500:],
            "" if self.result is not None else "\nraw stdout: %r" % self.stdout[:1500],
        )

    def __repr__(self):
        return self.describe()


def cgroup_dirs_named(name):
    """Every `<cgroup mount>/.../NAME` directory (depth-limited), as the e2e harness does."""
    found = []
    mount_points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] in (["cgroup"], ["cgroup2"]):
            mount_points.append(left.split()[4])

    def walk(directory, depth):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name == name:
                found.append(entry.path)
            elif depth > 0:
                walk(entry.path, depth - 1)

    for mount_point in mount_points:
        walk(mount_point, 4)
    return found


def subdirs(directory):
    try:
        return [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def loop_devices_under(directory):
    found = []
    directory = str(directory)
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(directory):
            found.append(entry.name)
    return found


def process_status(pid):
    try:
        text = Path("/proc/%s/status" % pid).read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def processes_with_uid_in(low, high):
    """Live (non-zombie) host processes whose real uid is in [low, high)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        status = process_status(entry)
        if not status or "Uid" not in status:
            continue
        uid = int(status["Uid"].split()[0])
        if low <= uid < high and not status.get("State", "").startswith("Z"):
            found.append(int(entry))
    return found


def mount_lines_mentioning(text):
    """mountinfo lines of every process (all mount namespaces) that mention TEXT."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            content = Path("/proc/%s/mountinfo" % entry).read_text()
        except OSError:
            continue
        for line in content.splitlines():
            if text in line:
                found.add(line)
    return sorted(found)


def start_time(pid):
    try:
        return Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_line(stream, timeout):
    """One line from a subprocess pipe within TIMEOUT seconds (b'' on EOF or timeout)."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


# Each agent of this process takes the next of 4096 uid ranges, from a start that differs between
# processes.
_UID_SLOTS = itertools.count(os.getpid())


class Agent:
    """A real bkg-agent as root, with its own temp socket, state dir, cgroup dir and uid range."""

    def __init__(self, tag, warm_pool=1, extra_env=None, extra_args=()):
        self.bin_dir = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="bkg-sec-%s-" % tag))
        # Others may search the directory, so the socket's own mode decides who can connect.
        os.chmod(self.dir, 0o755)
        self.socket = self.dir / "agent.sock"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "agent.log"
        self.cgroup_dir = "bkg-sec-%d-%s" % (os.getpid(), tag)
        # A range no other agent of this suite has: an agent refuses one that overlaps another's.
        self.uid_base = 0x3000_0000 + next(_UID_SLOTS) % 4096 * 65536
        self.warm_pool = warm_pool
        self.extra_env = dict(extra_env or {})
        self.extra_args = [str(arg) for arg in extra_args]
        self.process = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self, warm_pool=None, timeout=30, extra_args=None):
        if warm_pool is not None:
            self.warm_pool = warm_pool
        if extra_args is not None:
            self.extra_args = [str(arg) for arg in extra_args]
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("BKG_LOG", "debug")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                str(self.bin_dir / "bkg-agent"), "--foreground",
                "--socket", str(self.socket),
                "--state-dir", str(self.state_dir),
                "--cgroup-dir", self.cgroup_dir,
                "--uid-base", str(self.uid_base),
                "--warm-pool", str(self.warm_pool),
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("bkg-agent exited during start-up (%s):\n%s"
                                   % (self.process.returncode, self.log_tail()))
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.socket))
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("bkg-agent did not come up in %ss:\n%s" % (timeout, self.log_tail()))
            time.sleep(0.02)
        return self

    @property
    def pid(self):
        return self.process.pid

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL the agent (our own child, by pid) and reap it."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def remove(self):
        self.stop()
        leftovers = [d for c in cgroup_dirs_named(self.cgroup_dir) for d in subdirs(c)]
        if leftovers and self.process is not None:
            # A test killed this agent: a new one removes what it left, then stops cleanly.
            try:
                self.start(warm_pool=0)
            except RuntimeError:
                pass
            self.stop()
        for directory in cgroup_dirs_named(self.cgroup_dir):
            for sub in subdirs(directory):
                try:
                    os.rmdir(sub)
                except OSError:
                    pass
            try:
                os.rmdir(directory)
            except OSError:
                pass
        # A SIGKILLed agent that left no cgroup behind was not restarted: its lock files remain.
        owner = "state directory %s" % self.state_dir
        locks = Path("/run/bkg/locks")
        for lock in [*locks.glob("cgroup-*.lock"), *locks.glob("socket-*.lock")]:
            try:
                if lock.read_text().endswith(owner):
                    lock.unlink()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- the CLI ----------------------------------------------------------------------

    def cli_env(self):
        env = dict(os.environ)
        env.update({"BKG_SOCKET": str(self.socket), "BKG_NO_AUTOSTART": "1"})
        env.pop("BKG_STATE_DIR", None)
        return env

    def cli(self, *args, stdin=b"", timeout=60):
        argv = [str(self.bin_dir / "bkg"), *map(str, args)]
        started = time.monotonic()
        done = subprocess.run(argv, input=stdin, capture_output=True, env=self.cli_env(), timeout=timeout)
        return Outcome(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - started, False)

    def exe(self, code, *flags, lang="python", args=(), stdin=b"", json_mode=True, timeout=90):
        """`bkg exe [--json] --type LANG FLAGS -c CODE -- ARGS`."""
        argv = [str(self.bin_dir / "bkg"), "exe"]
        if json_mode:
            argv.append("--json")
        argv += ["--type", lang, *map(str, flags), "-c", code]
        if args:
            argv += ["--", *args]
        started = time.monotonic()
        done = subprocess.run(argv, input=stdin, capture_output=True, env=self.cli_env(), timeout=timeout)
        return Outcome(argv, done.returncode, done.stdout, done.stderr, time.monotonic() - started, json_mode)

    def spawn_exe(self, code, *flags, lang="python"):
        """A streamed `bkg exe` (no --json) left running: stdin and stdout are pipes."""
        argv = [str(self.bin_dir / "bkg"), "exe", "--type", lang, *map(str, flags), "-c", code]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.cli_env())

    # -- the API ----------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=60):
        connection = UnixHTTPConnection(self.socket, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            all_headers = {"Content-Type": "application/json"} if body is not None else {}
            all_headers.update(headers or {})
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return Response(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def processes_left_by_runs(self, timeout=30):
        """Processes with this agent's sandbox ids outside every sandbox still prepared in its
        warm pool (each holds a process of its own, its prestarted Python:
        bkg-agent/src/engine/prestart.rs), once the pool is full again: what ended runs left."""
        deadline = time.monotonic() + timeout
        # Full at whatever target runs that found it empty grew it to (engine/pool.rs).
        while True:
            info = self.request("GET", "/api/v1/agent").json or {}
            ready = info.get("warm_sandboxes")
            if ready and ready >= self.warm_pool and ready == info.get("warm_target"):
                break
            assert time.monotonic() < deadline, "the warm pool never filled: %s" % info
            time.sleep(0.05)
        prepared = set()
        for entry in os.listdir("/proc"):
            try:
                stat = Path("/proc/%s/stat" % entry).read_text()
                cmdline = Path("/proc/%s/cmdline" % entry).read_bytes().split(b"\0")
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid and b"__sandbox-init" in cmdline:
                    prepared.add(os.readlink("/proc/%s/ns/pid" % entry))
            except (OSError, ValueError, IndexError):
                continue
        # Any other sandbox init (an ended run's, still alive) is no prepared sandbox.
        assert len(prepared) == ready, "sandbox inits beside the warm pool: %s" % prepared
        left = []
        for pid in processes_with_uid_in(self.uid_base, self.uid_base + 65536):
            try:
                if os.readlink("/proc/%d/ns/pid" % pid) not in prepared:
                    left.append(pid)
            except OSError:
                continue
        return left

    def wait_idle(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.request("GET", "/api/v1/agent").json or {}
            if info.get("active_runs") == 0 and info.get("pending_cleanups") == 0:
                return info
            time.sleep(0.05)
        raise AssertionError("the agent did not become idle within %ss" % timeout)


def errno_name(code):
    return errno.errorcode.get(code, str(code))
