#!/usr/bin/env bash
# Installs dist/'s .deb on a clean Debian (docs/release.md): a minimal bookworm made with
# debootstrap, used through a throwaway overlay so each run starts clean. Checks what apt
# installed (binaries, completions, man pages, the unit and socket enabled, /etc/bkg, the `bkg`
# group), starts the agent as its socket unit would (systemd-socket-activate, the socket's
# group and mode as bkg-agent.socket sets them), runs examples/hello.py through it as root and
# as an unprivileged member of `bkg`, then purges the package. As root; needs debootstrap.
source "$(dirname "$0")/common.sh"

[[ $(id -u) -eq 0 ]] || die "deb-test: run as root (debootstrap, chroot, mounts)"
[[ -f $DIST/$DEB ]] || die "deb-test: dist/$DEB is missing: run make release (or make deb) first"
command -v debootstrap >/dev/null || die "deb-test: debootstrap is missing (apt-get install debootstrap)"
base=${DEB_TEST_BASE:-/var/tmp/bkg-debtest/root}
if [[ ! -x $base/usr/bin/apt-get ]]; then
  say "deb-test: making a minimal Debian bookworm in $base (debootstrap, a few minutes)"
  debootstrap --variant=minbase bookworm "$base" http://deb.debian.org/debian >/dev/null
fi

work=$(mktemp -d /var/tmp/bkg-debtest.XXXXXX)
root=$work/merged
agent_pid=
cleanup() {
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && sleep 1
  for mount in run dev/pts dev sys proc ""; do
    mountpoint -q "$root/$mount" && umount -l "$root/$mount"
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/upper" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
# The agent and its clients run in the installed system through bubblewrap, which pivots into it:
# a chrooted process may not create user namespaces, which every sandbox needs.
in_system() {
  bwrap --bind "$root" / --dev-bind /dev /dev --proc /proc --bind /sys /sys --bind "$root/run" /run \
    --bind "$root/tmp" /tmp --die-with-parent \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

failures=0
check() { # check WHAT COMMAND...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then
    say "deb-test: ok: $what"
  else
    say "deb-test: FAIL: $what"
    failures=$((failures + 1))
  fi
}

cp "$DIST/$DEB" "$root/tmp/"
cp "$ROOT/examples/hello.py" "$root/tmp/hello.py"
chmod 0644 "$root/tmp/hello.py"
say "deb-test: apt install ./$DEB (and systemd, for its socket-activation tool)"
in_root apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -q --no-install-recommends "/tmp/$DEB" systemd >"$work/apt.log" 2>&1 ||
  { cat "$work/apt.log" >&2; die "deb-test: FAIL: apt install"; }

for binary in bkg bkgr bkg-agent; do
  check "/usr/bin/$binary runs" in_root "/usr/bin/$binary" --version
  check "bash completion of $binary" test -f "$root/usr/share/bash-completion/completions/$binary"
  check "zsh completion of $binary" test -f "$root/usr/share/zsh/vendor-completions/_$binary"
  check "fish completion of $binary" test -f "$root/usr/share/fish/vendor_completions.d/$binary.fish"
done
check "the zygote's library" test -f "$root/usr/lib/bkg/libbkg_zygote.so"
check "the sandbox init's binary" test -x "$root/usr/lib/bkg/bkg-sandbox-init"
check "man page bkg(1)" test -f "$root/usr/share/man/man1/bkg.1.gz"
check "man page bkg-exe(1)" test -f "$root/usr/share/man/man1/bkg-exe.1.gz"
check "man page bkg-agent(8)" test -f "$root/usr/share/man/man8/bkg-agent.8.gz"
check "the unit bkg-agent.service" test -f "$root/lib/systemd/system/bkg-agent.service"
check "the socket bkg-agent.socket" test -f "$root/lib/systemd/system/bkg-agent.socket"
check "bkg-agent.socket enabled" in_root systemctl is-enabled bkg-agent.socket
check "/etc/bkg/agent.env, a conffile" grep -qx /etc/bkg/agent.env "$root/var/lib/dpkg/info/bkg.conffiles"
check "the bkg group" in_root getent group bkg
if verified=$(in_root systemd-analyze verify --man=no /lib/systemd/system/bkg-agent.socket /lib/systemd/system/bkg-agent.service 2>&1); then
  say "deb-test: ok: systemd-analyze verify accepts the unit and the socket"
else
  say "deb-test: FAIL: systemd-analyze verify: $verified"
  failures=$((failures + 1))
fi

# The agent as systemd would start it: the socket made by systemd (here its tool), with the
# owner, group and mode of bkg-agent.socket, and the agent started with its environment file.
# Its own cgroup directory and uid range keep it apart from any other agent on this host.
in_root useradd --create-home --groups bkg alice
mkdir -p "$root/run/bkg"
socket_line=$(sed -n 's/^ListenStream=//p' "$root/lib/systemd/system/bkg-agent.socket")
# shellcheck disable=SC2046 # one NAME=value per word
in_system $(grep -v '^#' "$root/etc/bkg/agent.env" | grep .) BKG_CGROUP_DIR="bkg-debtest-$$" BKG_UID_BASE=$((0x5f000000)) \
  systemd-socket-activate --listen "$socket_line" /usr/bin/bkg-agent --foreground >"$work/agent.log" 2>&1 &
launcher=$!
for _ in $(seq 100); do [[ -S $root$socket_line ]] && break; sleep 0.1; done
# A function run in the background is a subshell of its own, bubblewrap its child (unless bash
# made the subshell bubblewrap itself). Bubblewrap's child is systemd-socket-activate, which
# becomes the agent at the first connection.
bwrap_pid=$launcher
[[ $(cat "/proc/$launcher/comm" 2>/dev/null) == bwrap ]] || bwrap_pid=$(pgrep -P "$launcher" -x bwrap | head -1)
agent_pid=$(pgrep -P "$bwrap_pid" | head -1)
chgrp bkg "$root$socket_line" 2>/dev/null || in_root chgrp bkg "$socket_line"
chmod 0660 "$root$socket_line"

if out=$(in_system timeout 120 bkg exe /tmp/hello.py 2>&1) && [[ $out == "hello from python"* ]]; then
  say "deb-test: ok: root runs bkg exe examples/hello.py through the socket-activated agent: $out"
else
  say "deb-test: FAIL: root's bkg exe: $out"
  say "deb-test: the agent's log: $(tail -5 "$work/agent.log")"
  failures=$((failures + 1))
fi
if out=$(in_system setpriv --reuid=alice --regid=alice --init-groups env HOME=/home/alice USER=alice \
  timeout 120 bkg exe /tmp/hello.py 2>&1) && [[ $out == "hello from python"* ]]; then
  say "deb-test: ok: alice (group bkg, not root) runs bkg exe examples/hello.py: $out"
else
  say "deb-test: FAIL: alice (group bkg) could not run bkg exe: $out"
  failures=$((failures + 1))
fi
# The agent is bubblewrap's child (systemd-socket-activate execs it): stopped as systemd stops
# it, and it must end cleanly.
[[ -n $agent_pid ]] && { kill -TERM "$agent_pid" 2>/dev/null || say "deb-test: the agent had already ended"; }
if wait "$launcher" 2>/dev/null; then
  say "deb-test: ok: the agent stopped cleanly on SIGTERM"
else
  say "deb-test: FAIL: the agent ended with status $? on SIGTERM"
  failures=$((failures + 1))
fi
agent_pid=

DEBIAN_FRONTEND=noninteractive in_root apt-get purge -y -q bkg >"$work/purge.log" 2>&1 ||
  { cat "$work/purge.log" >&2; die "deb-test: FAIL: apt purge"; }
check "purge removes the binaries" test ! -e "$root/usr/bin/bkg-agent"
check "purge removes /etc/bkg/agent.env" test ! -e "$root/etc/bkg/agent.env"
check "purge keeps the bkg group" in_root getent group bkg

if ((failures)); then
  say "deb-test: agent log:"
  tail -20 "$work/agent.log" >&2
  echo "deb-test: $failures checks failed" >&2
  exit 1
fi
echo "deb-test: every check passed" >&2
