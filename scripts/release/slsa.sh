#!/usr/bin/env bash
# The SLSA v1 provenance of what dist/ holds, as an in-toto statement (slsa.py).
source "$(dirname "$0")/common.sh"
[[ -d $DIST ]] || die "dist/ is empty: run make release first"
export RELEASE_BINARIES=$RELEASE_TARGET_DIR/release RELEASE_BINARY_NAMES="${BINARIES[*]}"
export RELEASE_STARTED=${RELEASE_STARTED:-$(date +%s)}
export RELEASE_INVOCATION=${RELEASE_INVOCATION:-$(cat /proc/sys/kernel/random/uuid)}
rm -f "$DIST/$PROVENANCE"
python3 "$ROOT/scripts/release/slsa.py" "$DIST" "$DIST/$PROVENANCE"
say "wrote dist/$PROVENANCE"
