#!/usr/bin/env bash
# The tarball and the Debian package of the binaries build.sh made (docs/release.md), both
# byte-for-byte reproducible: sorted entries, fixed owners and times, gzip without a timestamp,
# dpkg-deb under SOURCE_DATE_EPOCH. `package.sh tarball`, `package.sh deb`, or both.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/stage.sh"

for binary in "${BINARIES[@]}" "${HELPERS[@]}"; do
  [[ -x $(binary_path "$binary") ]] || die "$(binary_path "$binary") is missing: run scripts/release/build.sh (make release) first"
done
mkdir -p "$DIST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022

make_tarball() {
  local top=bkg-$VERSION
  stage_tree "$work/tar/$top" .
  install -m 0644 "$ROOT/README.md" "$work/tar/$top/README.md"
  touch -h -d "@$SOURCE_DATE_EPOCH" "$work/tar/$top/README.md" "$work/tar/$top"
  tar --sort=name --format=gnu --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -C "$work/tar" -cf - "$top" | gzip -9n >"$DIST/$TARBALL"
  say "wrote dist/$TARBALL"
}

# The glibc the binaries need at least: the highest GLIBC_ symbol version they import.
glibc_floor() {
  local binary
  for binary in "${BINARIES[@]}" "${HELPERS[@]}"; do
    objdump -T "$(binary_path "$binary")"
  done | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1
}

# The package's Maintainer: set DEB_MAINTAINER for a real address.
DEB_MAINTAINER=${DEB_MAINTAINER:-bkg maintainers <maintainers@bkg.invalid>}

make_deb() {
  local stage=$work/deb
  stage_tree "$stage" usr
  install -d -m 0755 "$stage/usr/share/lintian/overrides"
  install -m 0644 "$ROOT/packaging/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/bkg"
  # A native package's changelog: one entry for the commit, dated by it.
  printf 'bkg (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
    "$VERSION" "$(git -C "$ROOT" rev-parse HEAD)" "$DEB_MAINTAINER" \
    "$(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")" | gzip -9n >"$stage/usr/share/doc/bkg/changelog.gz"
  chmod 0644 "$stage/usr/share/doc/bkg/changelog.gz"
  install -d -m 0755 "$stage/DEBIAN"
  local installed_kib
  # Apparent sizes, as dpkg-gencontrol counts them: the same on every filesystem.
  installed_kib=$(find "$stage" -path "$stage/DEBIAN" -prune -o -type f -printf '%s\n' |
    awk '{ total += int(($1 + 1023) / 1024) } END { print total }')
  sed -e "s/@VERSION@/$VERSION/" -e "s/@MAINTAINER@/$DEB_MAINTAINER/" -e "s/@ARCH@/$DEB_ARCH/" -e "s/@INSTALLED_SIZE@/$installed_kib/" \
    -e "s/@DEPENDS@/libc6 (>= $(glibc_floor))/" "$ROOT/packaging/deb/control.in" >"$stage/DEBIAN/control"
  echo /etc/bkg/agent.env >"$stage/DEBIAN/conffiles"
  install -m 0755 "$ROOT"/packaging/deb/{postinst,prerm,postrm} "$stage/DEBIAN/"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort | xargs md5sum) >"$stage/DEBIAN/md5sums"
  chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
  find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  dpkg-deb --root-owner-group -Zxz --build "$stage" "$DIST/$DEB" >/dev/null
  say "wrote dist/$DEB"
}

what=${1:-all}
case $what in
  tarball) make_tarball ;;
  deb) make_deb ;;
  all) make_tarball; make_deb ;;
  *) die "package.sh: tarball, deb or all, not $what" ;;
esac
