#!/usr/bin/env bash
# Installs what bkg and its tests need on Debian, as root. Safe to run again: it installs only
# what is missing.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: run as root (the agent needs namespaces, cgroups and loop devices)" >&2
  exit 1
fi

missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}
need mkfs.ext4 e2fsprogs
need losetup mount
need python3 python3
need node nodejs
need hyperfine hyperfine
need bwrap bubblewrap
need gcc gcc
need make make

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The security suite runs on pytest (the only Python package the tests need).
if ! python3 -m pytest --version >/dev/null 2>&1; then
  echo "setup: installing pytest" >&2
  python3 -m pip install -q -r "$(dirname "$0")/../security/requirements.txt"
fi

# The sandbox runtimes are the host's: bkg runs /usr/bin/python3 and /usr/bin/node.
for runtime in /usr/bin/python3 /usr/bin/node; do
  [[ -x $runtime ]] || { echo "setup: $runtime is missing" >&2; exit 1; }
done
