#!/usr/bin/env bash
# The release tools, from crates.io at pinned versions (docs/release.md): cargo-deny for
# `make lint`, cargo-cyclonedx for `make sbom`. Built from source when missing (these machines
# reach package registries, not release downloads); a few minutes each, so only the targets that
# need them install them, not scripts/setup.sh. Usage: tools.sh CRATE...
set -euo pipefail
declare -A version=([cargo-deny]=0.20.2 [cargo-cyclonedx]=0.5.9)
for crate in "$@"; do
  wanted=${version[$crate]:?"tools.sh: no pinned version of $crate"}
  if ! (cd / && cargo install --list) | grep -qxF "$crate v$wanted:"; then
    echo "release: installing $crate $wanted (cargo install, a few minutes)" >&2
    (cd / && cargo install --quiet --locked "$crate" --version "$wanted")
  fi
done
