#!/usr/bin/env bash
# A long test run beside the rest of `make test` (Makefile): `start NAME FILTER` starts the
# nextest filter FILTER (an ignored test) in the background, its output in target/NAME.log;
# `wait NAME` waits for it, shows how it ended and exits with its status. The suite's other
# steps run meanwhile, so the long test adds nothing to the suite's time.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start NAME FILTER, or wait NAME}
name=${2:?a name}
log=target/$name.log
status=target/$name.status
case $action in
  start)
    filter=${3:?a nextest filter}
    mkdir -p target
    rm -f "$status"
    # The status file is written only when the run has ended, however it ended.
    (
      set +e
      cargo nextest run --workspace --locked --run-ignored only --no-tests=fail -E "$filter" >"$log" 2>&1
      echo $? >"$status"
    ) &
    echo "background-test: $name started (log: $log)"
    ;;
  wait)
    [[ -e $log ]] || { echo "background-test: $name was never started" >&2; exit 2; }
    echo "background-test: waiting for $name"
    until [[ -s $status ]]; do sleep 5; done
    code=$(cat "$status")
    tail -n 5 "$log"
    if [[ $code != 0 ]]; then
      echo "background-test: $name failed (exit $code); its whole output is in $log" >&2
      cat "$log" >&2
    fi
    exit "$code"
    ;;
  *) echo "background-test: unknown action $action" >&2; exit 2 ;;
esac
