"""Writes an in-toto Statement v1 with a SLSA v1 provenance predicate for the artefacts in
dist/ (docs/release.md): each artefact and each binary inside them with its sha256, the source
commit, the builder and the build command. Usage: slsa.py DIST OUT."""

import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys

dist, out = sys.argv[1], sys.argv[2]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
binaries_dir = os.environ["RELEASE_BINARIES"]
binaries = os.environ["RELEASE_BINARY_NAMES"].split()


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(*command):
    return subprocess.run(command, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def stamp(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# What the statement covers: the published files (not the signatures, sums or itself) and the
# binaries, which the tarball and the package carry at these digests.
skipped = {"SHA256SUMS", os.path.basename(out)}
subjects = [
    {"name": name, "digest": {"sha256": sha256(os.path.join(dist, name))}}
    for name in sorted(os.listdir(dist))
    if name not in skipped and not name.endswith(".sig") and name != "cosign.pub"
]
subjects += [
    {"name": f"bin/{name}", "digest": {"sha256": sha256(os.path.join(binaries_dir, name))}} for name in binaries
]

commit = run("git", "rev-parse", "HEAD")
dirty = bool(run("git", "status", "--porcelain", "--untracked-files=no"))
try:
    origin = run("git", "remote", "get-url", "origin")
except subprocess.CalledProcessError:
    origin = "file://" + root
rustc = run("rustc", "-vV")
rustc_fields = dict(line.split(": ", 1) for line in rustc.splitlines() if ": " in line)
in_ci = os.environ.get("CI") == "true"

statement = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": subjects,
    "predicateType": "https://slsa.dev/provenance/v1",
    "predicate": {
        "buildDefinition": {
            "buildType": "https://bkg.invalid/release/make-release/v1",
            "externalParameters": {
                "command": "make release",
                "source": {"uri": "git+" + origin, "digest": {"gitCommit": commit}, "dirty": dirty},
            },
            "internalParameters": {
                "SOURCE_DATE_EPOCH": os.environ["SOURCE_DATE_EPOCH"],
                "cargoFlags": "build --release --locked -p bkg-cli -p bkgr -p bkg-agent --bins",
                "remapPathPrefix": "/build/bkg",
                "strip": "symbols",
            },
            "resolvedDependencies": [
                {"uri": "git+" + origin, "digest": {"gitCommit": commit}},
                {"uri": "file:Cargo.lock", "digest": {"sha256": sha256(os.path.join(root, "Cargo.lock"))}},
                {
                    "uri": "pkg:generic/rustc@" + rustc_fields.get("release", "unknown"),
                    "digest": {"gitCommit": rustc_fields.get("commit-hash", "unknown")},
                },
            ],
        },
        "runDetails": {
            "builder": {
                "id": "https://bkg.invalid/builders/" + ("ci" if in_ci else "local"),
                "version": {"os": platform.system() + " " + platform.release(), "machine": platform.machine()},
            },
            "metadata": {
                "invocationId": os.environ.get("RELEASE_INVOCATION", ""),
                "startedOn": stamp(int(os.environ.get("RELEASE_STARTED", "0"))),
                "finishedOn": stamp(int(datetime.datetime.now(datetime.timezone.utc).timestamp())),
            },
        },
    },
}
with open(out, "w", encoding="utf-8") as handle:
    json.dump(statement, handle, indent=2)
    handle.write("\n")
