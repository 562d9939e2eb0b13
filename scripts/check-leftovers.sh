#!/usr/bin/env bash
# Fails when a test agent left anything on the host: a cgroup directory of a test, fuzz or
# security agent (bkg-test-*, bkg-sec-*, bkg-fuzz-*) in any hierarchy, or a loop device backed by
# a file in a test's temp dir, or a cgroup directory's lock file naming a test's state directory.
#
#   check-leftovers.sh --snapshot FILE   writes what is there now to FILE (at the start of
#                                        `make test`)
#   check-leftovers.sh [--before FILE]   fails on what is there now, leaving out (and naming)
#                                        what FILE lists: an earlier run killed on this host
#                                        left those, not this one
set -euo pipefail

mode=check
before=""
case ${1:-} in
  --snapshot) mode=snapshot; before=${2:?--snapshot FILE} ;;
  --before) before=${2:?--before FILE} ;;
  "") ;;
  *) echo "check-leftovers: unknown argument $1" >&2; exit 2 ;;
esac

left=()
while read -r mount_point; do
  while IFS= read -r dir; do
    left+=("cgroup $dir")
  done < <(find "$mount_point" -maxdepth 4 -type d \( -name 'bkg-test-*' -o -name 'bkg-sec-*' -o -name 'bkg-fuzz-*' \) 2>/dev/null)
done < <(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts)

for backing in /sys/block/loop*/loop/backing_file; do
  [[ -r $backing ]] || continue
  file=$(<"$backing")
  case $file in
    /tmp/bkg-e2e-*|/tmp/bkg-sec*|/tmp/tmp*) left+=("loop device ${backing#/sys/block/} -> $file") ;;
  esac
done

for lock in /run/bkg/locks/cgroup-*.lock /run/bkg/locks/socket-*.lock; do
  [[ -r $lock ]] || continue
  case $(<"$lock") in
    *"state directory /tmp/bkg-e2e-"*|*"state directory /tmp/bkg-sec-"*) left+=("lock file $lock: $(<"$lock")") ;;
  esac
done

# describe_holders: what is known of the agents named by the leftover lock files, so that a
# failure says which test left them: whether the agent still runs (its command line and parent)
# and the end of its log (tests/lib.rs keeps it beside the state directory).
describe_holders() {
  local seen=" " lock record pid state_dir
  for lock in /run/bkg/locks/cgroup-*.lock /run/bkg/locks/socket-*.lock; do
    [[ -r $lock ]] || continue
    record=$(<"$lock")
    [[ $record =~ ^pid\ ([0-9]+),\ state\ directory\ (/tmp/bkg-(e2e|sec)-.*)$ ]] || continue
    pid=${BASH_REMATCH[1]}
    state_dir=${BASH_REMATCH[2]}
    [[ $seen == *" $pid "* ]] && continue
    seen+="$pid "
    if [[ -r /proc/$pid/cmdline ]]; then
      echo "  agent $pid still runs: $(tr '\0' ' ' </proc/"$pid"/cmdline)(parent $(awk '/^PPid:/ { print $2 }' /proc/"$pid"/status))" >&2
    else
      echo "  agent $pid no longer runs" >&2
    fi
    if [[ -r ${state_dir%/state}/agent.log ]]; then
      echo "  the end of its log (${state_dir%/state}/agent.log):" >&2
      tail -n 30 "${state_dir%/state}/agent.log" | sed 's/^/    /' >&2
    fi
  done
}

if [[ $mode == snapshot ]]; then
  mkdir -p "$(dirname "$before")"
  printf '%s\n' "${left[@]}" >"$before"
  ((${#left[@]})) && echo "check-leftovers: ${#left[@]} thing(s) of earlier runs are here before this one (the check at its end leaves them out)" >&2
  exit 0
fi

if [[ -n $before && -s $before ]]; then
  earlier=()
  new=()
  for item in "${left[@]}"; do
    if grep -qxF -- "$item" "$before"; then earlier+=("$item"); else new+=("$item"); fi
  done
  if ((${#earlier[@]})); then
    echo "check-leftovers: left out, as they were here before this run began:" >&2
    printf '  %s\n' "${earlier[@]}" >&2
  fi
  left=("${new[@]}")
fi

if ((${#left[@]})); then
  echo "check-leftovers: the tests left ${#left[@]} thing(s) behind:" >&2
  printf '  %s\n' "${left[@]}" >&2
  describe_holders
  exit 1
fi
echo "check-leftovers: nothing left behind"
