# Lays out the installed files under a root (sourced by package.sh): the same tree goes into the
# tarball (under /usr/local or wherever it is unpacked) and into the .deb (under /).
# stage_tree DEST USR: binaries, completions and man pages under DEST/USR, the systemd units
# under DEST/lib/systemd/system, the default configuration in DEST/etc/bkg.
stage_tree() {
  local dest=$1 usr=$2
  install -d -m 0755 "$dest/$usr/bin" "$dest/$usr/share/man/man1" "$dest/$usr/share/man/man8" \
    "$dest/$usr/share/bash-completion/completions" "$dest/$usr/share/zsh/vendor-completions" \
    "$dest/$usr/share/fish/vendor_completions.d" "$dest/lib/systemd/system" "$dest/etc/bkg" \
    "$dest/$usr/share/doc/bkg" "$dest/$usr/lib/bkg"
  for binary in "${BINARIES[@]}"; do
    install -m 0755 "$(binary_path "$binary")" "$dest/$usr/bin/$binary"
    install -m 0644 "$ROOT/completions/$binary.bash" "$dest/$usr/share/bash-completion/completions/$binary"
    install -m 0644 "$ROOT/completions/_$binary" "$dest/$usr/share/zsh/vendor-completions/_$binary"
    install -m 0644 "$ROOT/completions/$binary.fish" "$dest/$usr/share/fish/vendor_completions.d/$binary.fish"
  done
  local helper
  for helper in "${HELPERS[@]}"; do
    # A shared library is not run: only the init's binary is executable.
    if [[ $helper == *.so ]]; then
      install -m 0644 "$(binary_path "$helper")" "$dest/$usr/lib/bkg/$helper"
    else
      install -m 0755 "$(binary_path "$helper")" "$dest/$usr/lib/bkg/$helper"
    fi
  done
  local page section
  for page in "$ROOT"/docs/man/*.[18]; do
    section=${page##*.}
    gzip -9nc "$page" >"$dest/$usr/share/man/man$section/$(basename "$page").gz"
    chmod 0644 "$dest/$usr/share/man/man$section/$(basename "$page").gz"
  done
  install -m 0644 "$ROOT/packaging/deb/bkg-agent.service" "$ROOT/packaging/deb/bkg-agent.socket" "$dest/lib/systemd/system/"
  install -m 0644 "$ROOT/packaging/deb/agent.env" "$dest/etc/bkg/agent.env"
  install -m 0644 "$ROOT/packaging/deb/copyright" "$dest/$usr/share/doc/bkg/copyright"
  # Same times everywhere: the commit's.
  find "$dest" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}
