"""RES: resource exhaustion and escaping the end of a run."""

import os
import re
import subprocess
import time

import pytest

import bkgsec

MIB = 1024 * 1024


def agent_rss_bytes(agent):
    status = bkgsec.process_status(agent.pid) or {}
    match = re.match(r"(\d+) kB", status.get("VmRSS", ""))
    return int(match.group(1)) * 1024 if match else 0


def assert_healthy(agent):
    health = agent.request("GET", "/healthz", timeout=10)
    assert health.status == 200, health
    assert agent.alive()


def test_fork_bomb_is_killed_by_the_pids_limit(sandbox, agent):
    r = sandbox.attack("""
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, "--timeout", "20s")
    assert r.result["killed_by"] == "pids", r
    assert r.rc == 137, r
    assert r.result["limits"]["pids"] <= 256
    assert_healthy(agent)


def test_thread_bomb_is_killed_by_the_pids_limit(sandbox, agent):
    r = sandbox.attack("""
        import threading, time
        count = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                count += 1
        except RuntimeError:
            report(threads=count)
        time.sleep(10)
    """, "--timeout", "20s")
    assert r.result["killed_by"] == "pids", r
    assert r.rc == 137, r
    assert_healthy(agent)


def test_memory_bomb_is_killed_by_the_memory_limit(sandbox, agent):
    r = sandbox.attack("""
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))
    """, "--memory", "128MiB", "--timeout", "20s")
    assert r.result["killed_by"] == "memory", r
    assert r.rc == 137, r
    assert r.result["signal"] == 9, r
    assert r.result["peak_memory_bytes"] <= 128 * MIB + MIB, r
    assert_healthy(agent)


def test_cpu_spin_gets_at_most_one_cpu(sandbox):
    r = sandbox.attack("""
        import time
        deadline = time.time() + 2.0
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                while time.time() < deadline:
                    pass
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        report(spun=len(children))
    """, "--cpus", "1", "--timeout", "20s")
    assert r.rc == 0 and r.report["spun"] == 3, r
    wall, cpu = r.result["wall_ms"], r.result["cpu_ms"]
    # Three spinning processes on a 2-core host would use ~2x the wall time unconfined.
    assert cpu <= wall * 1.15 + 150, r
    assert cpu >= wall * 0.25, "the spin did not run at all: %r" % r


def test_sleep_past_the_timeout_is_killed(sandbox):
    r = sandbox.attack("""
        import time
        time.sleep(600)
    """, "--timeout", "2s")
    assert r.rc == 124, r
    assert r.result["killed_by"] == "timeout", r
    # Not before its time; ending at all (the script sleeps 600 s) is what killed_by proves.
    assert r.result["wall_ms"] >= 1900, r


def test_ignoring_sigterm_does_not_outlive_the_timeout(sandbox, agent):
    r = sandbox.attack("""
        import signal, time
        for number in range(1, signal.NSIG):
            if number not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(number, signal.SIG_IGN)
                except (OSError, ValueError, RuntimeError):
                    pass
        os.fork()
        while True:
            time.sleep(1)
    """, "--timeout", "2s")
    assert r.rc == 124, r
    assert r.result["killed_by"] == "timeout", r
    agent.wait_idle()
    assert agent.processes_left_by_runs() == []


def test_double_fork_setsid_daemon_dies_with_the_run(sandbox, agent):
    r = sandbox.attack("""
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for fd in (0, 1, 2):
                    os.close(fd)
                time.sleep(600)
                os._exit(0)
            os._exit(0)
        time.sleep(0.3)
        report(parent="done")
    """, "--timeout", "30s")
    assert r.rc == 0 and r.report["parent"] == "done", r
    agent.wait_idle()
    survivors = agent.processes_left_by_runs()
    assert survivors == [], "sandbox processes outlived the run: %s" % survivors


def test_daemon_holding_stdout_does_not_hang_the_run(sandbox, agent):
    r = sandbox.attack("""
        import time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    os.write(1, b"still here\\n")
                    time.sleep(0.2)
            os._exit(0)
        time.sleep(0.3)
        report(parent="exits")
    """, "--timeout", "30s")
    assert r.rc == 0, r
    assert r.result["killed_by"] is None, r
    # Had bkg waited for the daemon's end of stdout, the 30 s timeout would have ended the run.
    assert r.report["parent"] == "exits"
    agent.wait_idle()
    assert agent.processes_left_by_runs() == []


@pytest.mark.parametrize("directory", ["/workspace", "/tmp", "/dev/shm"], ids=["workspace", "tmp", "dev_shm"])
def test_disk_fill_ends_in_enospc(sandbox, directory):
    r = sandbox.attack("""
        import sys
        written, error = 0, None
        chunk = b"x" * (1 << 20)
        with open(sys.argv[1] + "/fill", "wb", buffering=0) as handle:
            try:
                while written < (256 << 20):
                    written += handle.write(chunk)
            except OSError as e:
                error = errname(e)
        report(written=written, error=error)
    """, "--disk", "32MiB", "--timeout", "30s", args=[directory])
    assert r.rc == 0, r
    assert r.report["error"] == "ENOSPC", r
    assert r.report["written"] <= 32 * MIB, r
    assert r.result["disk_bytes_used"] <= 32 * MIB, r


def test_inode_exhaustion_ends_in_enospc(sandbox):
    r = sandbox.attack("""
        count, error = 0, None
        try:
            while count < 200000:
                open("/workspace/f%d" % count, "w").close()
                count += 1
        except OSError as e:
            error = errname(e)
        st = os.statvfs("/workspace")
        report(count=count, error=error, inodes=st.f_files)
    """, "--disk", "16MiB", "--timeout", "30s")
    assert r.rc == 0, r
    assert r.report["error"] == "ENOSPC", r
    assert r.report["count"] <= r.report["inodes"] <= 16 * 1024, r


def test_huge_sparse_file_cannot_exceed_the_disk(sandbox):
    r = sandbox.attack("""
        fd = os.open("/workspace/sparse", os.O_WRONLY | os.O_CREAT, 0o600)
        truncate = attempt(os.ftruncate, fd, 1 << 40)
        apparent = os.fstat(fd).st_size
        written, error = 0, None
        chunk = b"x" * (1 << 20)
        for i in range(256):
            try:
                written += os.pwrite(fd, chunk, i * (1 << 32))
            except OSError as e:
                error = errname(e)
                break
        st = os.statvfs("/workspace")
        report(truncate=truncate, apparent=apparent, written=written, error=error,
               fs_bytes=st.f_blocks * st.f_frsize)
    """, "--disk", "32MiB", "--timeout", "30s")
    assert r.rc == 0, r
    assert r.report["error"] == "ENOSPC", r
    assert r.report["written"] <= 32 * MIB, r
    assert r.report["fs_bytes"] <= 32 * MIB, r
    assert r.result["disk_bytes_used"] <= 32 * MIB, r


def test_endless_output_is_capped(sandbox, agent):
    r = sandbox.attack("""
        block = b"x" * 65536
        while True:
            os.write(1, block)
            os.write(2, block)
    """, "--timeout", "2s")
    assert r.rc == 124 and r.result["killed_by"] == "timeout", r
    assert r.result["truncated"] is True
    assert len(r.result["stdout"]) == MIB and len(r.result["stderr"]) == MIB
    assert r.result["stdout_bytes"] > MIB and r.result["stderr_bytes"] > MIB
    assert agent_rss_bytes(agent) < 256 * MIB, "the agent kept the flood in memory"
    assert_healthy(agent)


def test_fd_exhaustion_stops_at_the_rlimit(sandbox):
    r = sandbox.attack("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds, error = [], None
        try:
            while len(fds) < 1000000:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            error = errname(e)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard * 16, hard * 16))
            raised = "OK"
        except (ValueError, OSError) as e:
            raised = "denied"
        report(soft=soft, hard=hard, opened=len(fds), error=error, raise_limit=raised)
    """, "--timeout", "30s")
    assert r.rc == 0, r
    assert r.report["error"] == "EMFILE", r
    assert r.report["hard"] <= 4096, r
    assert r.report["opened"] < 4096, r
    assert r.report["raise_limit"] == "denied", r



def newest_runs(agent, limit=10):
    response = agent.request("GET", "/api/v1/runs?limit=%d" % limit)
    assert response.status == 200, response
    return response.json


def test_a_stopped_reader_cannot_hold_a_sandbox_past_its_timeout(sandbox, agent):
    """RES-16: the client stops reading while the run floods stdout; the timeout still fires."""
    client = sandbox.spawn_attack("""
        while True:
            print("x" * 4096)
    """, "--timeout", "2s")
    try:
        deadline = time.monotonic() + 60
        ended = None
        while ended is None and time.monotonic() < deadline:
            ended = next((run for run in newest_runs(agent, 3)
                          if run.get("killed_by") == "timeout" and run.get("finished_at_ms")), None)
            time.sleep(0.2)
        assert ended is not None, "the run outlived its timeout while its client read nothing"
        assert client.poll() is None, "the client is still stuck: it read nothing"
    finally:
        client.kill()
        client.wait()
    agent.wait_idle()


@pytest.mark.parametrize("exhausted", ["blocks", "inodes"])
def test_a_full_disk_is_reported_as_disk(sandbox, exhausted):
    """RES-17: a script that dies of a full disk reports it, whether of blocks or of inodes."""
    fill = {
        "blocks": """
            chunk = b"x" * (1 << 20)
            with open("/workspace/fill", "wb") as handle:
                while True:
                    handle.write(chunk)
                    handle.flush()
        """,
        "inodes": """
            n = 0
            while True:
                open("/workspace/f%d" % n, "w").close()
                n += 1
        """,
    }[exhausted]
    r = sandbox.attack(fill, "--disk", "32MiB", "--timeout", "60s")
    assert r.rc == 1, r
    assert r.result["killed_by"] == "disk", r
    assert r.result["exit_code"] == 1, r
    assert "No space left on device" in r.result["stderr"], r


@pytest.fixture
def bounded_agent():
    """An agent with one run at a time, one waiting, and a disk budget of 600 MiB."""
    instance = bkgsec.Agent("bounded", warm_pool=0,
                            extra_args=["--max-running-runs", "1", "--max-queued-runs", "1",
                                        "--disk-budget", "1200MiB"])
    instance.start()
    yield instance
    instance.remove()


def test_a_flood_of_runs_and_a_disk_hog_are_refused_not_queued_forever(bounded_agent):
    """RES-18: past the queue bound, 503 with Retry-After at once; past the disk budget, one line."""
    sleeper = bkgsec.PRELUDE + "\nimport time\ntime.sleep(600)\n"
    held = [bounded_agent.spawn_exe(sleeper), bounded_agent.spawn_exe(sleeper)]
    try:
        deadline = time.monotonic() + 30

        def going_and_waiting():
            info = bounded_agent.request("GET", "/api/v1/agent").json or {}
            return info.get("active_runs"), info.get("queued_runs")

        while going_and_waiting() != (1, 1):
            assert time.monotonic() < deadline, f"one run never went in and one never waited: {going_and_waiting()}"
            time.sleep(0.05)
        refused = bounded_agent.request("POST", "/api/v1/runs", {"language": "python", "code": "print(1)"})
        assert refused.status == 503, refused
        assert int(refused.headers.get("Retry-After", refused.headers.get("retry-after", "x"))) > 0, refused
    finally:
        for client in held:
            client.kill()
            client.wait()
    bounded_agent.wait_idle()
    hog = bounded_agent.exe("print('never')", "--disk", "2GiB")
    assert hog.rc == 125, hog
    assert len(hog.err.splitlines()) == 1 and "disk" in hog.err, hog


@pytest.fixture
def probed_agent():
    """An agent whose health needs a run that succeeded within the last second. No zygote: its
    forks, started before the test lowers the agent's limit, would not fail of it."""
    instance = bkgsec.Agent("probed", warm_pool=0,
                            extra_args=["--health-interval", "1s", "--zygote", "false"])
    instance.start()
    yield instance
    instance.remove()


def test_health_says_503_when_runs_fail(probed_agent):
    """RES-19: with a hard open-files limit below what a sandbox needs, every run fails and
    /healthz says so instead of answering ok."""
    assert probed_agent.request("GET", "/healthz").status == 200
    limited = subprocess.run(["prlimit", "--pid", str(probed_agent.pid), "--nofile=1024:2048"],
                             capture_output=True, text=True)
    assert limited.returncode == 0, limited.stderr
    deadline = time.monotonic() + 60
    health = probed_agent.request("GET", "/healthz")
    while health.status == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        health = probed_agent.request("GET", "/healthz")
    assert health.status == 503, health
    assert "runs fail" in health.body.decode(errors="replace"), health
