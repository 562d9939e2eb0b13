#!/usr/bin/env bash
# A long test run beside the rest of `make test` (Makefile): `start NAME FILTER` starts the
# nextest filter FILTER (an ignored test) in the background, its output in target/NAME.log;
# `wait NAME` waits for it, shows how it ended and exits with its status; `stop NAME` ends it
# (the Makefile does when a step before `wait` fails). The suite's other steps run meanwhile, so
# the long test adds nothing to the suite's time.
set -euo pipefail
cd "$(dirname "$0")/.."
action=${1:?start NAME FILTER, wait NAME or stop NAME}
name=${2:?a name}
log=target/$name.log
status=target/$name.status
# The process group of the run going on: it, nextest and the test's agent end together.
group=target/$name.pgid

# stop_earlier: ends a run of NAME that is still going (an earlier `make test` that failed
# before its `wait`), which would otherwise write this run's status file and leave its agent's
# sandboxes for the leftover check to find.
stop_earlier() {
  [[ -s $group ]] || return 0
  local pgid
  pgid=$(<"$group")
  rm -f "$group"
  kill -0 -- "-$pgid" 2>/dev/null || return 0
  echo "background-test: ending the $name still going from an earlier run (process group $pgid)"
  kill -TERM -- "-$pgid" 2>/dev/null || true
  for _ in $(seq 300); do
    kill -0 -- "-$pgid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}

case $action in
  start)
    filter=${3:?a nextest filter}
    mkdir -p target
    stop_earlier
    rm -f "$status"
    # The status file is written only when the run has ended, however it ended.
    # A session of its own, whose id (its first process's pid) names the group to end.
    setsid bash -c 'echo $$ >"$4"; cargo nextest run --workspace --locked --run-ignored only --no-tests=fail -E "$1" >"$2" 2>&1; echo $? >"$3"' \
      background-test "$filter" "$log" "$status" "$group" &
    echo "background-test: $name started (log: $log)"
    ;;
  wait)
    [[ -e $log ]] || { echo "background-test: $name was never started" >&2; exit 2; }
    echo "background-test: waiting for $name"
    until [[ -s $status ]]; do sleep 5; done
    rm -f "$group"
    code=$(cat "$status")
    tail -n 5 "$log"
    if [[ $code != 0 ]]; then
      echo "background-test: $name failed (exit $code); its whole output is in $log" >&2
      cat "$log" >&2
    fi
    exit "$code"
    ;;
  stop) stop_earlier ;;
  *) echo "background-test: unknown action $action" >&2; exit 2 ;;
esac
