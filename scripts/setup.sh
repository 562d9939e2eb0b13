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
need_file() { # need_file PATH PACKAGE
  [[ -e $1 ]] || missing+=("$2")
}
need mkfs.ext4 e2fsprogs
need losetup mount
need python3 python3
need node nodejs
need hyperfine hyperfine
need bwrap bubblewrap
need gcc gcc
need make make
# The API tests run docs/api.md's curl examples (curl, jq).
need curl curl
need jq jq
# The CLI tests complete in a real bash and render the man pages (docs/man/).
need bash bash
need man man-db
# The TLS tests make certificates and serve https with the openssl CLI.
need openssl openssl
# Sandboxes show the host's /etc/services and /etc/protocols (docs/compatibility.md).
need_file /etc/services netbase
# Runs' Python packages are installed by the runtime's own pip (bkg-agent/src/engine/install.rs).
if ! /usr/bin/python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
# The seccomp unit tests read the target's syscall table from the kernel headers.
need_file /usr/include/linux/unistd.h linux-libc-dev
# The compatibility suite (tests/compat) runs CPython's own test modules outside and inside.
need_file /usr/lib/python3.11/test/test_os.py libpython3.11-testsuite
# Sessions show a matplotlib figure as a PNG (tests/e2e/sessions.rs), from Debian's package.
need_file /usr/lib/python3/dist-packages/matplotlib/__init__.py python3-matplotlib
# The Web UI's browser suite (tests/ui): playwright-core drives Debian's chromium, no download.
need chromium chromium

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

# The run artefact tests (tests/e2e/artefacts.rs) store objects in a real S3-compatible server
# on loopback: moto's server, from PyPI.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "setup: installing moto[server]" >&2
  python3 -m pip install -q 'moto[server]==5.2.1'
fi

# The sandbox runtimes are the host's: bkg runs /usr/bin/python3 and /usr/bin/node.
for runtime in /usr/bin/python3 /usr/bin/node; do
  [[ -x $runtime ]] || { echo "setup: $runtime is missing" >&2; exit 1; }
done

# bkg_db's tests start throwaway PostgreSQL clusters (scripts/postgres.sh). Debian keeps initdb
# and pg_ctl in /usr/lib/postgresql/<version>/bin, outside PATH. The server package would also
# create and start a default cluster on port 5432, which nothing here uses: postgresql-common goes
# first so that it can be told not to (as the official postgres images do).
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  echo "setup: installing postgresql" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends postgresql-common >/dev/null
  sed -ri 's/^#? *(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf
  apt-get install -y -q --no-install-recommends postgresql >/dev/null
fi

# The API tests and checks: the MCP TypeScript SDK
# (tests/mcp) is the MCP client; prometheus_client parses /metrics and schemathesis fuzzes the API
# (tests/api/requirements.txt, pinned); the OpenAPI validator comes with schema/'s npm packages
# (`make api-validate` installs those).
api_requirements="$(dirname "$0")/../tests/api/requirements.txt"
installed=$(python3 -m pip freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
for pin in $(grep -v '^#' "$api_requirements"); do
  if ! grep -qxF "$(tr '[:upper:]_' '[:lower:]-' <<<"$pin")" <<<"$installed"; then
    echo "setup: installing the API tests' Python packages" >&2
    python3 -m pip install -q -r "$api_requirements"
    break
  fi
done
# Sessions show a matplotlib figure as a PNG (tests/e2e/sessions.rs), from Debian's package.
need_file /usr/lib/python3/dist-packages/matplotlib/__init__.py python3-matplotlib
# The Web UI's browser suite: playwright-core and axe-core (tests/ui).
ui_dir="$(dirname "$0")/../tests/ui"
if [[ ! -d $ui_dir/node_modules/playwright-core || $ui_dir/package-lock.json -nt $ui_dir/node_modules ]]; then
  echo "setup: installing playwright-core and axe-core for the Web UI's browser tests" >&2
  (cd "$ui_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
mcp_dir="$(dirname "$0")/../tests/mcp"
if [[ ! -d $mcp_dir/node_modules/@modelcontextprotocol/sdk || $mcp_dir/package-lock.json -nt $mcp_dir/node_modules ]]; then
  echo "setup: installing the MCP SDK for the tests" >&2
  (cd "$mcp_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The dependency tests (tests/e2e/deps.rs) serve a package index on loopback from wheels kept
# here; installs in sandboxes use pip, which Debian's python3 gets from python3-pip.
test_wheels=/var/cache/bkg-test-wheels
if [[ ! -f $test_wheels/six-1.17.0-py2.py3-none-any.whl ]]; then
  echo "setup: downloading the wheels the dependency tests serve" >&2
  python3 -m pip download -q --only-binary=:all: --no-deps -d "$test_wheels" six==1.17.0
fi
