# Shared by the release scripts (docs/release.md): where things are and what they are called.
# Sourced, not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIST=${DIST:-$ROOT/dist}
# The release binaries get a target directory of their own: their flags (path remapping,
# stripping) differ from a developer's `cargo build --release`, which they must not churn.
RELEASE_TARGET_DIR=${RELEASE_TARGET_DIR:-$ROOT/target/dist}
BINARIES=(bkg bkgr bkg-agent)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")
TRIPLE=$(cd "$ROOT" && rustc -vV | sed -n 's/^host: //p')
DEB_ARCH=$(dpkg --print-architecture)
TARBALL=bkg-$VERSION-$TRIPLE.tar.gz
DEB=bkg_${VERSION}_$DEB_ARCH.deb
PROVENANCE=bkg-$VERSION.intoto.json
# Every build of one commit carries that commit's time: in `bkg version`, in the tarball and in
# the package, whatever day it is built.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH

say() { echo "release: $*" >&2; }
die() { echo "release: $*" >&2; exit 1; }

# The binaries as the reproducible build left them.
binary_path() { echo "$RELEASE_TARGET_DIR/release/$1"; }
# What bkg-agent starts besides itself, installed in USR/lib/bkg/, where it looks for them (beside
# itself first, as in target/; bkg-agent/src/engine/mod.rs, `installed_beside_agent`): the
# zygote's library (engine/zygote.rs) and the sandbox init's binary (src/bin/bkg-sandbox-init.rs).
HELPERS=(libbkg_zygote.so bkg-sandbox-init)
