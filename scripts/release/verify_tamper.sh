#!/usr/bin/env bash
# The test of verify.sh (docs/release.md): for every file of dist/, a copy of dist/ with one byte
# of that file changed must fail verification, and the untouched copy must pass.
source "$(dirname "$0")/common.sh"

dir=${1:-$DIST}
[[ -f $dir/SHA256SUMS ]] || die "tamper test: $dir has no release: run make release first"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp -a "$dir" "$work/pristine"
QUIET=1 bash "$ROOT/scripts/release/verify.sh" "$work/pristine" 2>/dev/null ||
  die "tamper test: FAIL: the untouched copy of $dir does not verify"

checked=0 missed=()
while IFS= read -r name; do
  rm -rf "$work/copy"
  cp -a "$dir" "$work/copy"
  # Flip the low bit of the middle byte.
  python3 - "$work/copy/$name" <<'PY'
import sys
with open(sys.argv[1], "r+b") as handle:
    data = bytearray(handle.read())
    data[len(data) // 2] ^= 0x01
    handle.seek(0)
    handle.write(data)
PY
  if QUIET=1 bash "$ROOT/scripts/release/verify.sh" "$work/copy" 2>/dev/null; then
    missed+=("$name")
  fi
  checked=$((checked + 1))
done < <(find "$dir" -maxdepth 1 -type f -size +0 -printf '%P\n' | LC_ALL=C sort)

if ((${#missed[@]})); then
  echo "tamper test: FAIL: a changed byte went unnoticed in: ${missed[*]}" >&2
  exit 1
fi
echo "tamper test: one changed byte in any of the $checked files of dist/ fails make verify" >&2
echo "verify-tamper: $checked passed, 0 failed"
