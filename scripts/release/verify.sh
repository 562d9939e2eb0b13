#!/usr/bin/env bash
# Checks dist/ (or the directory given) as a user who downloaded it would (docs/release.md):
# every file is listed in SHA256SUMS or is a signature; every digest matches; every artefact and
# SHA256SUMS carry a valid signature by the public key; the provenance names these digests and
# the binaries inside the tarball and the package. Any changed byte fails it.
#
# The key: VERIFY_KEY (a path) to trust a key you hold; otherwise dist/cosign.pub, which only
# proves that dist/ is whole and self-consistent, not who made it.
# verify.sh [DIR]   QUIET=1 prints only the verdict.
source "$(dirname "$0")/common.sh"

dir=$(cd "${1:-$DIST}" 2>/dev/null && pwd) || die "verify: ${1:-$DIST} does not exist: run make release first"
key=${VERIFY_KEY:-$dir/cosign.pub}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
fail() { echo "verify: FAIL: $*" >&2; failures=$((failures + 1)); }
note() { [[ -n ${QUIET:-} ]] || echo "verify: $*" >&2; }

cd "$dir"
[[ -f SHA256SUMS ]] || die "verify: FAIL: $dir has no SHA256SUMS"
[[ -f $key ]] || die "verify: FAIL: no public key $key"
openssl pkey -pubin -in "$key" -noout 2>/dev/null || die "verify: FAIL: $key is not a public key"

# 1. Digests, and nothing unlisted.
if ! sha256sum --strict --quiet --check SHA256SUMS >"$work/sums.log" 2>&1; then
  fail "SHA256SUMS does not match: $(tr '\n' ' ' <"$work/sums.log")"
fi
mapfile -t listed < <(sed -n 's/^[0-9a-f]\{64\}  //p' SHA256SUMS)
[[ ${#listed[@]} -gt 0 ]] || fail "SHA256SUMS lists nothing"
while IFS= read -r name; do
  case $name in
    SHA256SUMS) ;;
    *.sig) [[ -f ${name%.sig} ]] || fail "$name signs nothing here" ;;
    *) printf '%s\n' "${listed[@]}" | grep -qxF -- "$name" || fail "$name is not in SHA256SUMS" ;;
  esac
done < <(find . -maxdepth 1 -type f -printf '%P\n')

# 2. Signatures: what cosign verify-blob checks, with openssl; with cosign too where installed.
for name in "${listed[@]}" SHA256SUMS; do
  if [[ ! -f $name.sig ]]; then
    fail "$name has no signature"
    continue
  fi
  if ! base64 -d "$name.sig" >"$work/signature.der" 2>/dev/null ||
    ! openssl dgst -sha256 -verify "$key" -signature "$work/signature.der" "$name" >/dev/null 2>&1; then
    fail "the signature of $name is not valid for $key"
  elif command -v cosign >/dev/null &&
    ! cosign verify-blob --insecure-ignore-tlog=true --key "$key" --signature "$name.sig" "$name" >/dev/null 2>&1; then
    fail "cosign verify-blob refuses $name"
  fi
done

# 3. The provenance: its subjects are these files and the binaries the packages carry.
provenance=$(printf '%s\n' "${listed[@]}" | grep '\.intoto\.json$' | head -1 || true)
if [[ -z $provenance ]]; then
  fail "no provenance (*.intoto.json)"
elif ! python3 - "$provenance" "$work" >"$work/provenance.log" 2>&1 <<'PY'; then
import hashlib, json, os, subprocess, sys
provenance, work = sys.argv[1], sys.argv[2]
with open(provenance, encoding="utf-8") as handle:
    statement = json.load(handle)
assert statement["_type"] == "https://in-toto.io/Statement/v1", "not an in-toto v1 statement"
assert statement["predicateType"] == "https://slsa.dev/provenance/v1", "not SLSA v1 provenance"
def sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()
unpacked = {}
for name in os.listdir("."):
    if name.endswith(".tar.gz"):
        target = os.path.join(work, "tar")
        os.makedirs(target, exist_ok=True)
        subprocess.run(["tar", "-xzf", name, "-C", target], check=True)
        for top in os.listdir(target):
            unpacked["tarball"] = os.path.join(target, top, "bin")
    elif name.endswith(".deb"):
        target = os.path.join(work, "deb")
        subprocess.run(["dpkg-deb", "-x", name, target], check=True)
        unpacked["deb"] = os.path.join(target, "usr", "bin")
assert set(unpacked) == {"tarball", "deb"}, f"expected a tarball and a .deb, found {sorted(unpacked)}"
for subject in statement["subject"]:
    name, digest = subject["name"], subject["digest"]["sha256"]
    if name.startswith("bin/"):
        for where, directory in unpacked.items():
            assert sha256(os.path.join(directory, name[4:])) == digest, f"{name} in the {where} differs from the provenance"
    else:
        assert os.path.exists(name), f"the provenance names {name}, which is missing"
        assert sha256(name) == digest, f"{name} differs from the provenance"
names = {subject["name"] for subject in statement["subject"]}
for name in os.listdir("."):
    if not (name.endswith(".sig") or name in ("SHA256SUMS", "cosign.pub", provenance)):
        assert name in names, f"{name} is not a subject of the provenance"
commit = statement["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"]["gitCommit"]
print(f"provenance: {len(names)} subjects, source commit {commit}")
PY
  fail "provenance: $(tail -1 "$work/provenance.log")"
else
  note "$(cat "$work/provenance.log")"
fi

if ((failures)); then
  echo "verify: $dir FAILED ($failures problems)" >&2
  exit 1
fi
[[ -n ${VERIFY_KEY:-} ]] || note "signatures checked against dist's own cosign.pub; pass VERIFY_KEY=PATH to pin the key you trust"
echo "verify: $dir OK: ${#listed[@]} artefacts and SHA256SUMS, digests, signatures and provenance" >&2
