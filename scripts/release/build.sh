#!/usr/bin/env bash
# The reproducible build of the three binaries (docs/release.md): the toolchain pinned here
# (not in a rust-toolchain.toml, which would make every build of the tree ask rustup for that
# version, and these machines cannot download one), Cargo.lock as it is (--locked), the commit's time as
# SOURCE_DATE_EPOCH, and every absolute path of this machine remapped, so that the same commit
# gives the same bytes in any directory.
source "$(dirname "$0")/common.sh"

pinned=1.95.0
actual=$(cd "$ROOT" && rustc -vV | sed -n 's/^release: //p')
[[ $actual == "$pinned" ]] || die "rustc is $actual but a release is built with $pinned (scripts/release/build.sh)"

cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
# The last matching prefix wins: the target directory may lie inside the tree or outside it.
remaps=(
  "--remap-path-prefix=$cargo_home=/cargo"
  "--remap-path-prefix=$rustup_home=/rustup"
  "--remap-path-prefix=$ROOT=/build/bkg"
  "--remap-path-prefix=$RELEASE_TARGET_DIR=/build/target"
)
export RUSTFLAGS="${remaps[*]}"
# The C of the bundled SQLite and of ring: its __FILE__ strings too.
export CFLAGS="-ffile-prefix-map=$cargo_home=/cargo -ffile-prefix-map=$ROOT=/build/bkg -ffile-prefix-map=$RELEASE_TARGET_DIR=/build/target"
export CARGO_TARGET_DIR=$RELEASE_TARGET_DIR
export CARGO_PROFILE_RELEASE_STRIP=symbols
export CARGO_INCREMENTAL=0

say "building ${BINARIES[*]} $VERSION for $TRIPLE (rustc $actual, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
cd "$ROOT"
cargo build --release --locked -p bkg-cli -p bkgr -p bkg-agent --bins
cargo build --release --locked -p bkg-zygote
for binary in "${BINARIES[@]}" "${HELPERS[@]}"; do
  [[ -x $(binary_path "$binary") ]] || die "the build made no $binary"
done
