#!/usr/bin/env python3
"""bench/soak.py — `make soak`: bkg under sustained mixed load, hostile clients and restarts.

For SOAK_SECONDS (default 420) it drives one private agent with:
  * 32 clients running a mix of short Python and Node scripts through `bkg exe --json` (ok, failing,
    timed out, over their memory limit);
  * a slow reader every 20 s: a run that floods stdout under a 3 s timeout while its client reads
    nothing for 10 s (the run must still end at its timeout);
  * 1,000 idle TCP connections to the agent's loopback listener, held throughout (the unix socket
    must keep serving);
  * agent restarts: SIGTERM at one third of the time, SIGKILL at two thirds, each followed by a new
    agent on the same state.
At the end the agent is stopped and the script checks: nothing left (processes in the agent's uid
range, cgroups, mounts, loop devices, sandbox directories), every run record closed, every result a
client received is recorded as it was received, the unix socket never stopped answering, and the
agent's RSS stayed under SOAK_MAX_RSS_MIB (default 200). It prints a Markdown summary (quoted in
docs/testing.md) and exits 1 if a check failed. Needs root and the debug binaries
(`cargo build --workspace`); set BKG_BIN_DIR to use others.
"""

import json
import os
import random
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("BKG_BIN_DIR", ROOT / "target" / "debug"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "420"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "32"))
IDLE = int(os.environ.get("SOAK_IDLE_CONNECTIONS", "1000"))
MAX_RSS_MIB = int(os.environ.get("SOAK_MAX_RSS_MIB", "200"))
UID_BASE = 0x5800_0000

JOBS = [
    ("ok-py", ["--type", "python", "-c", "print(sum(range(1000)))"], 0),
    ("ok-node", ["--type", "node", "-c", "console.log(6 * 7)"], 0),
    ("exit-3", ["--type", "python", "-c", "import sys; sys.exit(3)"], 3),
    ("timeout", ["--timeout", "1s", "--type", "python", "-c", "import time; time.sleep(30)"], 124),
    ("memory", ["--memory", "64MiB", "--type", "python", "-c", "x = bytearray(256 << 20)"], 137),
    ("output", ["--type", "python", "-c", "import sys\nfor i in range(2000): print('line', i)"], 0),
]


def log(message):
    print("[soak %s] %s" % (time.strftime("%H:%M:%S"), message), file=sys.stderr, flush=True)


class Agent:
    def __init__(self, work):
        self.work = work
        self.socket = work / "agent.sock"
        self.state = work / "state"
        self.cgroup_dir = "bkg-soak-%d" % os.getpid()
        self.address_file = work / "address"
        self.process = None
        self.starts = 0

    def start(self):
        self.address_file.unlink(missing_ok=True)
        log_file = open(self.work / "agent.log", "ab")
        self.process = subprocess.Popen(
            [str(BIN / "bkg-agent"), "--foreground", "--socket", str(self.socket), "--state-dir", str(self.state),
             "--cgroup-dir", self.cgroup_dir, "--uid-base", str(UID_BASE), "--warm-pool", "2",
             "--listen", "127.0.0.1:0", "--listen-address-file", str(self.address_file)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file)
        deadline = time.monotonic() + 30
        while not (self.address_file.exists() and self.address_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("soak: the agent did not start; see %s" % (self.work / "agent.log"))
            time.sleep(0.05)
        self.starts += 1
        host, port = self.address_file.read_text().strip().rsplit(":", 1)
        self.address = (host, int(port))

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_mib(self):
        try:
            for line in open("/proc/%d/status" % self.process.pid):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def bkg(self, *args, timeout=120, stdout=subprocess.PIPE):
        environment = {"PATH": "/usr/bin:/bin", "BKG_SOCKET": str(self.socket), "BKG_NO_AUTOSTART": "1"}
        return subprocess.run([str(BIN / "bkg"), *args], env=environment, stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=subprocess.PIPE, timeout=timeout)


class Soak:
    def __init__(self, agent):
        self.agent = agent
        self.deadline = time.monotonic() + SECONDS
        self.lock = threading.Lock()
        self.results = {}          # run id -> (exit code the client saw, the JSON result)
        self.outcomes = {}         # job name -> {rc: count}
        self.unexpected = []
        self.client_errors = 0     # runs the client could not complete (agent restarting)
        self.slow_readers = []
        self.socket_stalls = []
        self.max_rss = 0.0
        self.idle = []

    def running(self):
        return time.monotonic() < self.deadline

    def client(self, number):
        rng = random.Random(number)
        while self.running():
            name, args, expected = rng.choice(JOBS)
            try:
                done = self.agent.bkg("exe", "--json", *args)
            except subprocess.TimeoutExpired:
                with self.lock:
                    self.unexpected.append("%s: the client waited 120 s" % name)
                continue
            with self.lock:
                self.outcomes.setdefault(name, {}).setdefault(done.returncode, 0)
                self.outcomes[name][done.returncode] += 1
            try:
                result = json.loads(done.stdout)
            except ValueError:
                # No result: the agent was restarting or refused the run (125 with one line).
                with self.lock:
                    if done.returncode != 125:
                        self.unexpected.append("%s: rc %d without a result" % (name, done.returncode))
                    self.client_errors += 1
                time.sleep(0.2)
                continue
            with self.lock:
                self.results[result["id"]] = (done.returncode, result)
                if done.returncode != expected and result.get("killed_by") not in ("shutdown",):
                    self.unexpected.append("%s: rc %d, expected %d: %s" % (name, done.returncode, expected,
                                                                            json.dumps(result)[:300]))

    def slow_reader(self):
        while self.running():
            environment = {"PATH": "/usr/bin:/bin", "BKG_SOCKET": str(self.agent.socket), "BKG_NO_AUTOSTART": "1"}
            started = time.monotonic()
            process = subprocess.Popen(
                [str(BIN / "bkg"), "exe", "--timeout", "3s", "--type", "python", "-c",
                 "while True: print('x' * 4096)"],
                env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            time.sleep(10)
            process.kill()
            process.wait()
            self.slow_readers.append(started)
            time.sleep(10)

    def hold_idle_connections(self):
        for _ in range(IDLE):
            try:
                connection = socket.create_connection(self.agent.address, timeout=5)
            except OSError:
                break
            self.idle.append(connection)

    def watch(self):
        while self.running():
            self.max_rss = max(self.max_rss, self.agent.rss_mib())
            started = time.monotonic()
            try:
                answered = self.agent.bkg("agent", "status", "--json", timeout=20).returncode == 0
            except subprocess.TimeoutExpired:
                answered = False
            if not answered and self.agent.process.poll() is None and not self.restarting:
                self.socket_stalls.append(round(time.monotonic() - started, 1))
            time.sleep(2)

    restarting = False

    def restart(self, sig):
        self.restarting = True
        log("restarting the agent with %s" % signal.Signals(sig).name)
        for connection in self.idle:
            connection.close()
        self.idle.clear()
        self.agent.stop(sig)
        self.agent.start()
        self.hold_idle_connections()
        self.restarting = False


def leftovers(agent):
    found = {}
    uids = range(UID_BASE, UID_BASE + 65536)
    processes = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = open("/proc/%s/status" % entry).read()
            except OSError:
                continue
            uid = int(status.split("Uid:")[1].split()[0])
            zombie = "State:\tZ" in status
            if uid in uids and not zombie:
                processes.append(int(entry))
    found["processes"] = processes
    cgroups = []
    for line in open("/proc/mounts"):
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2"):
            for directory, subdirs, _ in os.walk(fields[1]):
                if os.path.basename(directory) == agent.cgroup_dir:
                    cgroups.append(directory)
                if directory.count("/") > fields[1].count("/") + 4:
                    subdirs[:] = []
    found["cgroups"] = cgroups
    found["mounts"] = [line.split()[4] for line in open("/proc/self/mountinfo") if str(agent.state) in line]
    loops = []
    for name in os.listdir("/sys/block"):
        try:
            backing = open("/sys/block/%s/loop/backing_file" % name).read().strip()
        except OSError:
            continue
        if backing.startswith(str(agent.state)):
            loops.append(name)
    found["loop_devices"] = loops
    sandboxes = agent.state / "sandboxes"
    found["sandbox_dirs"] = sorted(os.listdir(sandboxes)) if sandboxes.exists() else []
    return {kind: items for kind, items in found.items() if items}


def main():
    if os.geteuid() != 0:
        raise SystemExit("soak: run as root (the agent needs root)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, IDLE * 2 + 1024)), hard))
    work = Path(tempfile.mkdtemp(prefix="bkg-soak-"))
    agent = Agent(work)
    failures = []
    agent.start()
    soak = Soak(agent)
    try:
        soak.hold_idle_connections()
        log("%d clients, %d idle connections held, %d s" % (CLIENTS, len(soak.idle), SECONDS))
        threads = [threading.Thread(target=soak.client, args=(n,), daemon=True) for n in range(CLIENTS)]
        threads += [threading.Thread(target=soak.slow_reader, daemon=True),
                    threading.Thread(target=soak.watch, daemon=True)]
        for thread in threads:
            thread.start()
        time.sleep(SECONDS / 3)
        soak.restart(signal.SIGTERM)
        time.sleep(SECONDS / 3)
        soak.restart(signal.SIGKILL)
        for thread in threads:
            thread.join(timeout=SECONDS + 180)
        for connection in soak.idle:
            connection.close()
        agent.stop()
        # The SIGKILLed agent's unfinished runs were closed by the agent that followed it; a last
        # start and clean stop proves the state is consistent for the next one too.
        agent.start()
        agent.stop()
    finally:
        agent.stop(signal.SIGKILL)

    left = leftovers(agent)
    if left:
        failures.append("left behind: %s" % left)
    database = sqlite3.connect(str(agent.state / "state.db"))
    rows = {row[0]: row[1:] for row in database.execute(
        "select id, finished_at_ms, exit_code, killed_by, cleaned_up from runs")}
    open_runs = [run for run, row in rows.items() if row[0] is None]
    if open_runs:
        failures.append("%d run records never closed: %s" % (len(open_runs), open_runs[:5]))
    killed_by = {}
    for row in rows.values():
        killed_by[row[2] or "none"] = killed_by.get(row[2] or "none", 0) + 1
    mismatched = [run for run, (_, result) in soak.results.items()
                  if run not in rows or rows[run][1] != result.get("exit_code")]
    if mismatched:
        failures.append("%d results the clients saw differ from their records: %s" % (len(mismatched), mismatched[:5]))
    if soak.unexpected:
        failures.append("%d unexpected outcomes, e.g. %s" % (len(soak.unexpected), soak.unexpected[:3]))
    if soak.socket_stalls:
        failures.append("the unix socket did not answer %d times (seconds: %s)" % (len(soak.socket_stalls),
                                                                                   soak.socket_stalls[:5]))
    if soak.max_rss > MAX_RSS_MIB:
        failures.append("agent RSS reached %.1f MiB (bound %d)" % (soak.max_rss, MAX_RSS_MIB))
    slow = [row for run, row in rows.items() if row[2] == "timeout"]

    print("| what | value |\n|---|---:|")
    print("| duration, clients, idle TCP connections | %d s, %d, %d |" % (SECONDS, CLIENTS, IDLE))
    print("| agent starts (incl. after SIGTERM and SIGKILL) | %d |" % agent.starts)
    print("| runs recorded | %d |" % len(rows))
    print("| results received by clients | %d |" % len(soak.results))
    print("| runs a client could not complete (agent restarting or refusing) | %d |" % soak.client_errors)
    print("| slow-reader runs started | %d |" % len(soak.slow_readers))
    print("| records by killed_by | %s |" % ", ".join("%s %d" % item for item in sorted(killed_by.items())))
    print("| timed-out runs | %d |" % len(slow))
    print("| agent peak RSS | %.1f MiB |" % soak.max_rss)
    print("| unix socket stalls | %d |" % len(soak.socket_stalls))
    print("| leftovers | %s |" % (left or "none"))
    for failure in failures:
        log("FAIL: " + failure)
    if not failures:
        log("every check passed")
        subprocess.run(["rm", "-rf", str(work)])
    else:
        log("agent log: %s" % (work / "agent.log"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
