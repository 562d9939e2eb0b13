#!/usr/bin/env bash
# A CycloneDX SBOM per binary (cargo-cyclonedx, installed by tools.sh when missing): every crate built
# into it, with its version, licence and checksum from Cargo.lock. Written to dist/NAME.cdx.json.
source "$(dirname "$0")/common.sh"

bash "$(dirname "$0")/tools.sh" cargo-cyclonedx
mkdir -p "$DIST"
cd "$ROOT"
# It writes beside each Cargo.toml; those files are moved out at once (and never committed).
trap 'find "$ROOT" -path "$ROOT/target" -prune -o -path "$ROOT/dist" -prune -o -name "*.cdx.json" -print0 | xargs -0r rm -f' EXIT
cargo cyclonedx --format json --describe binaries --target "$TRIPLE" --spec-version 1.5 >/dev/null
for binary in "${BINARIES[@]}"; do
  found=$(find "$ROOT" -path "$ROOT/target" -prune -o -path "$ROOT/dist" -prune -o -name "${binary}_bin.cdx.json" -print | head -1)
  [[ -n $found ]] || die "cargo-cyclonedx wrote no SBOM for $binary"
  python3 "$ROOT/scripts/release/sbom_normalize.py" "$found" "$DIST/$binary.cdx.json"
  say "wrote dist/$binary.cdx.json"
done
