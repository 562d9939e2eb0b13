"""FS: a persistent sandbox's volumes and the links its code leaves behind.

A persistent sandbox keeps its /workspace between runs and may write to the project through a
`:rw` volume, so what one run's code leaves there (a symbolic link) is on the path of the next
run's mounts. Each attack here is code behind the guard (attack_prelude.py) that plants such a
link from inside the sandbox, then a later run of the real agent, as root, is checked: refused
in one line, nothing made or shown where the link leads.
"""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import bkgsec

MARK = "bkg-sec-volume-outside-" + os.urandom(8).hex()


def cave(volumes):
    listed = ", ".join('"%s"' % volume for volume in volumes)
    return ("version: 1\nnamespace: default\nsandboxes:\n  v:\n    type: python\n"
            "    volumes: [ %s ]\n    scripts:\n      py: python3 -c\n" % listed)


class Project:
    """A project in a fresh 0700 directory, run with the real bkg and bkgr as root."""

    def __init__(self, agent, root):
        self.agent = agent
        self.dir = Path(root)
        os.chmod(self.dir, 0o700)

    def define(self, volumes):
        (self.dir / "cave.yaml").write_text(cave(volumes))

    def run(self, tool, *args):
        argv = [str(self.agent.bin_dir / tool), *map(str, args)]
        done = subprocess.run(argv, capture_output=True, env=self.agent.cli_env(), cwd=str(self.dir),
                              timeout=120)
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")

    def attack(self, code):
        """One run of the sandbox `v` whose code is `code` behind the guard."""
        rc, out, err = self.run("bkgr", "v", "py", "--", bkgsec.PRELUDE + "\n" + code)
        assert rc != bkgsec.GUARD_EXIT, "the guard refused: not a sandbox?\n" + err
        return rc, out, err


@pytest.fixture
def project(agent):
    with tempfile.TemporaryDirectory(prefix="bkg-sec-project-") as root:
        yield Project(agent, root)


@pytest.fixture
def outside():
    """A host folder no volume names, holding one file: it must stay as it is."""
    with tempfile.TemporaryDirectory(prefix="bkg-sec-outside-") as folder:
        Path(folder, "secret").write_text(MARK + "\n")
        yield Path(folder)


def one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith(("bkg:", "bkgr:"))


def test_a_link_left_in_the_workspace_does_not_lead_a_volume_s_mount_point_out(agent, project, outside):
    (project.dir / "data").mkdir()
    project.define([])
    relative = "../" * 10 + str(outside).lstrip("/")
    rc, _, err = project.attack("os.symlink(%r, '/workspace/abs')\nos.symlink(%r, '/workspace/rel')\n"
                                % (str(outside), relative))
    assert rc == 0, err
    for link in ("abs", "rel"):
        project.define(["./data:/workspace/%s/made/deeper:ro" % link])
        rc, out, err = project.run("bkgr", "v", "py", "--", "print('ran')")
        assert rc == 125, (link, rc, out, err)
        assert "/workspace/%s is a symbolic link" % link in err and one_line(err), (link, err)
        assert str(agent.state_dir) not in err, err
        assert sorted(os.listdir(outside)) == ["secret"], "made on the host through /workspace/%s" % link


def test_a_link_made_in_the_project_does_not_lead_a_volume_s_source_out(agent, project, outside):
    (project.dir / "data" / "sub").mkdir(parents=True)
    project.define(["./data:/workspace/data:rw", "./data/sub:/workspace/sub:rw"])
    rc, _, err = project.attack("import shutil\nshutil.rmtree('/workspace/data/sub')\n"
                                "os.symlink(%r, '/workspace/data/sub')\n" % str(outside))
    assert rc == 0, err
    assert (project.dir / "data" / "sub").is_symlink(), "the code made the link in the project"
    # The runs that keep the stored definition: bkg exec, and bkg cp out of the sandbox.
    rc, out, err = project.run("bkg", "exec", "v", "-c",
                               "print(open('/workspace/sub/secret').read()); open('/workspace/sub/made', 'w')")
    assert rc == 125, (rc, out, err)
    # A note that the session was made may come first; the refusal is one line of its own.
    said = [line for line in err.splitlines() if "symbolic link" in line]
    assert len(said) == 1 and "is reached through a symbolic link now" in said[0], err
    assert MARK not in out and MARK not in err
    rc, out, err = project.run("bkg", "cp", "v:sub/secret", "copied")
    assert rc == 125, (rc, out, err)
    assert not (project.dir / "copied").exists()
    assert sorted(os.listdir(outside)) == ["secret"], "written on the host through data/sub"
