#!/usr/bin/env bash
# Fails when a test agent left anything on the host: a cgroup directory of a test, fuzz or
# security agent (bkg-test-*, bkg-sec-*, bkg-fuzz-*) in any hierarchy, or a loop device backed by
# a file in a test's temp dir, or a cgroup directory's lock file naming a test's state directory.
# Run at the end of `make test`.
set -euo pipefail

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

if ((${#left[@]})); then
  echo "check-leftovers: the tests left ${#left[@]} thing(s) behind:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "check-leftovers: nothing left behind"
