#!/usr/bin/env bash
# The Web UI's browser suite (tests/ui/suite.mjs): Debian's chromium, driven by playwright-core,
# against a real agent on loopback TCP; axe-core scans every page and screenshots of every page at
# desktop and phone width land in target/ui-screenshots (a CI artefact, not committed). Needs root
# (the agent does), the debug binaries and tests/ui's npm packages (scripts/setup.sh installs
# them). `make ui-browser` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The binaries of the target directory cargo builds into (CARGO_TARGET_DIR, as cargo reads it).
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}")/debug
work=$(mktemp -d /tmp/bkg-ui-XXXXXX)
agent_pid=""
cleanup() {
  if [[ -n $agent_pid ]]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/bkg-agent" --foreground --socket "$work/agent.sock" --state-dir "$work/state" \
  --cgroup-dir "bkg-ui-$$" --uid-base $((0x58000000)) --warm-pool 1 \
  --listen 127.0.0.1:0 --listen-address-file "$work/address" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 200); do
  [[ -s $work/address ]] && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log" >&2; echo "ui-browser: the agent did not start" >&2; exit 1; }
  sleep 0.05
done

status=0
BKG_ADDRESS=$(cat "$work/address") BKG_SOCKET="$work/agent.sock" BKG_BIN="$bin/bkg" \
  BKG_NO_AUTOSTART=1 BKG_SCREENSHOTS="${BKG_SCREENSHOTS:-$PWD/target/ui-screenshots}" \
  node tests/ui/suite.mjs || status=$?
if ((status != 0)); then
  echo "ui-browser: the browser suite failed (exit $status); the agent's log follows" >&2
  tail -n 40 "$work/agent.log" >&2
fi
exit "$status"
