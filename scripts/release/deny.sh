#!/usr/bin/env bash
# cargo-deny against deny.toml: licences, banned and duplicate crates, sources, and advisories.
# The advisory database comes from GitHub; where it cannot be fetched (CI and these machines
# reach only the package registries) a copy already on disk is used, and with none the
# advisories check is SKIPPED and said so loudly: the other checks still gate.
source "$(dirname "$0")/common.sh"

bash "$(dirname "$0")/tools.sh" cargo-deny
cd "$ROOT"
cargo deny --locked check licenses bans sources

db_home=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
if cargo deny --locked check advisories 2>"${TMPDIR:-/tmp}/bkg-deny-advisories.log"; then
  say "advisories: checked against a freshly fetched database"
elif compgen -G "$db_home/*" >/dev/null && cargo deny --locked check --disable-fetch advisories; then
  say "advisories: checked OFFLINE against the database on disk ($db_home), which may be stale"
elif grep -qiE 'fetch|clone|network|resolve|connect' "${TMPDIR:-/tmp}/bkg-deny-advisories.log"; then
  echo "################################################################################" >&2
  echo "lint: advisories SKIPPED: the advisory database (GitHub) cannot be reached and no copy" >&2
  echo "lint: is on disk; no known-vulnerability check was made. Licences, bans and sources passed." >&2
  echo "################################################################################" >&2
else
  cat "${TMPDIR:-/tmp}/bkg-deny-advisories.log" >&2
  die "advisories: cargo-deny found problems"
fi
