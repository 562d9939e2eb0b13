"""META: the suite itself: the matrix in docs/security.md, and the guards that keep attacks
from ever firing on the host."""

import os
import re
import subprocess
import sys

import pytest

import bkgsec

MATRIX = bkgsec.REPO / "docs" / "security.md"
ROW = re.compile(r"^\|\s*([A-Z]+-\d{2,3})\s*\|(.*)\|\s*$")
TEST_ID = re.compile(r"`(security/test_[a-z0-9_]+\.py::[A-Za-z0-9_]+(?:\[[^\]`]+\])?)`")


def matrix_rows():
    rows = []
    for line in MATRIX.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        cells = [cell.strip() for cell in match.group(2).split("|")]
        tests = TEST_ID.findall(cells[-1]) if cells else []
        rows.append((match.group(1), cells, tests))
    return rows


def collected_tests():
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "security/"],
                          cwd=bkgsec.REPO, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = set()
    for line in done.stdout.splitlines():
        if "::" in line:
            line = line.strip()
            ids.add(line if line.startswith("security/") else "security/" + line)
    return ids


def test_matrix_is_complete():
    rows = matrix_rows()
    assert len(rows) >= 50, "docs/security.md has only %d matrix rows" % len(rows)
    ids = [row_id for row_id, _, _ in rows]
    assert len(ids) == len(set(ids)), "duplicate row ids: %s" % sorted(i for i in ids if ids.count(i) > 1)
    listed = []
    for row_id, cells, tests in rows:
        assert len(cells) == 5, "%s: expected id | threat | attack | expected | mitigation | test" % row_id
        assert all(cells[:4]), "%s has an empty cell" % row_id
        assert len(tests) == 1, "%s must name exactly one test, found %s" % (row_id, tests)
        listed.append(tests[0])
    assert len(listed) == len(set(listed)), "a test is named by two rows: %s" % sorted(
        t for t in listed if listed.count(t) > 1)
    collected = collected_tests()
    missing = sorted(set(listed) - collected)
    unlisted = sorted(collected - set(listed))
    assert not missing, "rows name tests that do not exist: %s" % missing
    assert not unlisted, "tests missing from the matrix in docs/security.md: %s" % unlisted


def run_on_host(code, as_nobody=False, interpreter=bkgsec.DEBIAN_PYTHON, env=None):
    argv = [interpreter, "-e" if interpreter.endswith("node") else "-c", code]
    if as_nobody:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/tmp",
                          env=env or {"PATH": "/usr/bin:/bin"})


GUARDED = {
    "python_as_root": (bkgsec.PRELUDE + "\nprint('FIRED')\n", False, bkgsec.DEBIAN_PYTHON),
    "python_as_nobody": (bkgsec.PRELUDE + "\nprint('FIRED')\n", True, bkgsec.DEBIAN_PYTHON),
    "node_as_root": (bkgsec.NODE_PRELUDE + "\nconsole.log('FIRED');\n", False, "/usr/bin/node"),
}


@pytest.mark.parametrize("case", list(GUARDED))
def test_attack_guard_refuses_on_the_host(case):
    code, as_nobody, interpreter = GUARDED[case]
    if as_nobody and os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    done = run_on_host(code, as_nobody=as_nobody, interpreter=interpreter)
    assert done.returncode == bkgsec.GUARD_EXIT, (done.returncode, done.stdout, done.stderr)
    assert bkgsec.GUARD_MARK in done.stderr
    assert "FIRED" not in done.stdout


PROBES = {
    "as_root": ({"PATH": "/usr/bin:/bin"}, False),
    "as_root_with_dry_run_env": ({"PATH": "/usr/bin:/bin", "BKG_PROBE_DRYRUN": "1"}, False),
    "as_nobody": ({"PATH": "/usr/bin:/bin"}, True),
}


@pytest.mark.parametrize("case", list(PROBES))
def test_probe_refuses_on_the_host(case):
    env, as_nobody = PROBES[case]
    if os.geteuid() != 0:
        pytest.skip("needs root to run the probe as root and as nobody")
    done = run_on_host(bkgsec.PROBE, as_nobody=as_nobody, env=env)
    assert done.returncode == bkgsec.GUARD_EXIT, (done.returncode, done.stdout[:300], done.stderr)
    assert bkgsec.GUARD_MARK in done.stderr
    assert done.stdout == ""
