#!/usr/bin/env bash
# SHA256SUMS over dist/ and a signature beside every file (FILE.sig), cosign-compatible
# (docs/release.md): `cosign sign-blob` when cosign is installed and the key is a cosign key,
# otherwise an ECDSA P-256 / SHA-256 signature made with openssl, base64 of its DER, which is
# what cosign writes and what `cosign verify-blob --key cosign.pub` checks.
#
# The key: COSIGN_KEY (a path), else ./cosign.key, else an ephemeral P-256 key made here and
# thrown away after signing. Its public half is published as dist/cosign.pub. No private key is
# ever written into the tree or dist/.
source "$(dirname "$0")/common.sh"

[[ -d $DIST ]] || die "dist/ is empty: run make release first"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

key=${COSIGN_KEY:-}
[[ -z $key && -f $ROOT/cosign.key ]] && key=$ROOT/cosign.key
if [[ -z $key ]]; then
  key=$work/ephemeral.key
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>/dev/null)
  say "no COSIGN_KEY: signing with an ephemeral P-256 key (only its public half, dist/cosign.pub, is kept)"
fi
[[ -r $key ]] || die "cannot read the signing key $key"

if grep -q 'ENCRYPTED \(SIGSTORE\|COSIGN\) PRIVATE KEY' "$key"; then
  command -v cosign >/dev/null || die "$key is a cosign key but cosign is not installed"
  signer=cosign
  cosign public-key --key "$key" >"$work/cosign.pub"
else
  openssl pkey -in "$key" -noout 2>/dev/null || die "$key is neither a cosign key nor a PEM private key openssl reads"
  openssl pkey -in "$key" -noout -text 2>/dev/null | grep -q 'NIST CURVE: P-256' ||
    die "$key is not an ECDSA P-256 key (cosign's kind)"
  signer=openssl
  openssl pkey -in "$key" -pubout -out "$work/cosign.pub"
fi

sign() { # sign FILE: writes FILE.sig
  if [[ $signer == cosign ]]; then
    cosign sign-blob --yes --tlog-upload=false --key "$key" --output-signature "$1.sig" "$1" >/dev/null
  else
    openssl dgst -sha256 -sign "$key" -out "$work/signature.der" "$1"
    base64 -w0 "$work/signature.der" >"$1.sig"
  fi
}

cd "$DIST"
rm -f ./*.sig SHA256SUMS
install -m 0644 "$work/cosign.pub" cosign.pub
mapfile -t artefacts < <(find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name '*.sig' -printf '%P\n' | LC_ALL=C sort)
sha256sum -- "${artefacts[@]}" >SHA256SUMS
for artefact in "${artefacts[@]}" SHA256SUMS; do
  sign "$artefact"
done
say "signed ${#artefacts[@]} artefacts and SHA256SUMS with $signer; public key dist/cosign.pub"
