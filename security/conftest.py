"""Fixtures of the bkg security suite (`python3 -m pytest -q security/`, as root).

The suite builds nothing: it expects `bkg` and `bkg-agent` in target/debug/ (or $BKG_BIN_DIR)
and starts one real agent per session with its own temp socket, state dir, cgroup dir and uid
range. Every attack is sent with `bkg exe --json` behind a guard (attack_prelude.py) that refuses
to fire outside a sandbox.

Environment:
  BKG_SECURITY_STRICT=1    every skipped (or xfailed) test counts as a failure.
  BKG_SEC_DRYRUN_HOST=1    demonstration mode: no agent; the posture probe runs directly on
                           the host as `nobody` (probe.py's dry-run) so the posture tests can be
                           seen failing against an unconfined process; attacks are skipped.
"""

import json
import os
import secrets
import subprocess
import textwrap

import pytest

import bkgsec

STRICT = os.environ.get("BKG_SECURITY_STRICT") == "1"
DRY_RUN = os.environ.get("BKG_SEC_DRYRUN_HOST") == "1"
SECRET_VALUE = "bkg-sec-" + secrets.token_hex(16)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not STRICT:
        return
    if report.skipped or hasattr(report, "wasxfail"):
        if isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        else:
            reason = getattr(report, "wasxfail", None) or str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "BKG_SECURITY_STRICT=1: a skipped or xfailed security test is a failure (%s)" % reason
        if hasattr(report, "wasxfail"):
            del report.wasxfail


def pytest_report_header(config):
    mode = "DRY-RUN on the host (posture probe only)" if DRY_RUN else "real agent"
    return "bkg security suite: %s; strict=%s" % (mode, STRICT)


def _require_root():
    if os.geteuid() != 0:
        pytest.skip("the security suite starts a real bkg-agent and must run as root")


@pytest.fixture(scope="session")
def secret():
    """Name and value of a secret in the agent's environment (must never reach a sandbox)."""
    return ("BKG_TEST_SECRET", SECRET_VALUE)


@pytest.fixture(scope="session")
def agent():
    if DRY_RUN:
        pytest.skip("BKG_SEC_DRYRUN_HOST=1: no agent is started in the dry-run demonstration")
    _require_root()
    try:
        instance = bkgsec.Agent("main", warm_pool=1,
                                extra_env={"BKG_TEST_SECRET": SECRET_VALUE})
    except bkgsec.MissingBinaries as error:
        pytest.fail(str(error), pytrace=False)
    try:
        instance.start()
    except RuntimeError as error:
        instance.remove()
        pytest.fail(str(error), pytrace=False)
    yield instance
    instance.remove()


@pytest.fixture
def second_agent():
    """A separate agent for tests that kill or restart it (never the session's)."""
    if DRY_RUN:
        pytest.skip("BKG_SEC_DRYRUN_HOST=1: no agent is started in the dry-run demonstration")
    _require_root()
    try:
        instance = bkgsec.Agent("kill", warm_pool=1)
    except bkgsec.MissingBinaries as error:
        pytest.fail(str(error), pytrace=False)
    yield instance
    instance.remove()


class Sandbox:
    """Runs attacks (behind the guard) and the posture probe through the real CLI."""

    def __init__(self, agent):
        self.agent = agent

    def code(self, body, lang="python"):
        prelude = bkgsec.PRELUDE if lang == "python" else bkgsec.NODE_PRELUDE
        return prelude + "\n" + textwrap.dedent(body).strip("\n") + "\n"

    def attack(self, body, *flags, lang="python", args=(), stdin=b"", json_mode=True, timeout=90):
        outcome = self.agent.exe(self.code(body, lang), *flags, lang=lang, args=args,
                                 stdin=stdin, json_mode=json_mode, timeout=timeout)
        if outcome.guard_refused:
            pytest.fail("the guard refused to fire inside the sandbox: it does not look like "
                        "one\n%s" % outcome.describe())
        return outcome

    def spawn_attack(self, body, *flags, lang="python"):
        return self.agent.spawn_exe(self.code(body, lang), *flags, lang=lang)

    def probe(self):
        outcome = self.agent.exe(bkgsec.PROBE)
        assert outcome.rc == 0 and outcome.result is not None, outcome.describe()
        return json.loads(outcome.out)


class HostDryRun:
    """BKG_SEC_DRYRUN_HOST=1: the probe on the host as nobody; attacks never run."""

    agent = None

    def attack(self, *args, **kwargs):
        pytest.skip("dry-run: attacks never run on the host")

    spawn_attack = attack

    def probe(self):
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "env", "-i", "BKG_PROBE_DRYRUN=1", "PATH=/usr/bin:/bin",
             bkgsec.DEBIAN_PYTHON, "-c", bkgsec.PROBE],
            capture_output=True, cwd="/tmp", timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return json.loads(done.stdout)


@pytest.fixture(scope="session")
def sandbox(request):
    if DRY_RUN:
        return HostDryRun()
    return Sandbox(request.getfixturevalue("agent"))


@pytest.fixture(scope="session")
def posture(sandbox):
    """The probe's report, taken once per session."""
    return sandbox.probe()


@pytest.fixture(scope="session")
def uid_range(request):
    if DRY_RUN:
        return (65534, 65535)
    agent = request.getfixturevalue("agent")
    return (agent.uid_base, agent.uid_base + 65536)
