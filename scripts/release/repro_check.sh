#!/usr/bin/env bash
# Reproducibility check (docs/release.md): builds this commit again in a fresh clone in another
# directory, with its own target directory, and compares the binaries, the tarball and the .deb
# byte for byte with the ones in dist/ (make release). Any difference fails.
source "$(dirname "$0")/common.sh"

[[ -f $DIST/$TARBALL && -f $DIST/$DEB ]] || die "repro-check: dist/ has no release: run make release first"
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no) ]] ||
  die "repro-check: the tree has uncommitted changes; a clone would build something else"
commit=$(git -C "$ROOT" rev-parse HEAD)
built_from=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"]["gitCommit"])' "$DIST/$PROVENANCE")
[[ $built_from == "$commit" ]] || die "repro-check: dist/ was built from $built_from, HEAD is $commit: run make release again"

elsewhere=$(mktemp -d "${TMPDIR:-/tmp}/bkg-repro.XXXXXX")
trap 'rm -rf "$elsewhere"' EXIT
git clone -q --no-hardlinks "$ROOT" "$elsewhere/src"
git -C "$elsewhere/src" checkout -q "$commit"
say "repro-check: building $commit again in $elsewhere/src"
DIST=$elsewhere/dist RELEASE_TARGET_DIR=$elsewhere/src/target/dist bash "$elsewhere/src/scripts/release/build.sh"
DIST=$elsewhere/dist RELEASE_TARGET_DIR=$elsewhere/src/target/dist bash "$elsewhere/src/scripts/release/package.sh"

differ=()
for binary in "${BINARIES[@]}" "${HELPERS[@]}"; do
  cmp -s "$(binary_path "$binary")" "$elsewhere/src/target/dist/release/$binary" || differ+=("bin/$binary")
done
for artefact in "$TARBALL" "$DEB"; do
  cmp -s "$DIST/$artefact" "$elsewhere/dist/$artefact" || differ+=("$artefact")
done
if ((${#differ[@]})); then
  echo "repro-check: FAIL: differ between $ROOT and $elsewhere/src: ${differ[*]}" >&2
  exit 1
fi
echo "repro-check: identical in two directories: bin/${BINARIES[*]}, ${HELPERS[*]}, $TARBALL, $DEB" >&2
