#!/usr/bin/env bash
# Checks the cave.yaml examples against cave.schema.json with ajv, a validator independent of
# bkg's own: every examples/**/cave.yaml must be valid and every examples/invalid/*.yaml invalid.
# Needs `npm ci` in schema/ first. Exits non-zero on any mismatch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
examples="$(dirname "$here")/examples"
bin="$here/node_modules/.bin"
if [[ ! -x "$bin/ajv" || ! -x "$bin/js-yaml" ]]; then
  echo "validate-examples: run 'npm ci' in $here first" >&2
  exit 2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The schema uses one union type on purpose (cpus: number or string); everything else is strict.
ajv_flags=(--spec=draft2020 --strict=true --allow-union-types -c ajv-formats -s "$here/cave.schema.json")

# A schema ajv cannot compile must fail loudly, not make every example look invalid.
"$bin/ajv" compile "${ajv_flags[@]}" >/dev/null

# ajv's errors as JSON pointers the way bkg names them: an unknown, missing or badly named key
# is pointed at itself rather than at the object holding it; an `if` whose `then` failed is
# only the summary of the error under it.
pointers_js='
const text = require("fs").readFileSync(process.argv[1], "utf8");
const errors = JSON.parse(text.slice(text.indexOf("["))).filter((error) => error.keyword !== "if");
const key = (name) => "/" + String(name).replace(/~/g, "~0").replace(/\//g, "~1");
const pointers = new Set(errors.map((error) => {
  const named = error.params.additionalProperty ?? error.params.missingProperty
    ?? error.params.propertyName ?? error.propertyName;
  return named === undefined ? error.instancePath : error.instancePath + key(named);
}));
console.log([...pointers].sort().join(" "));
'

passed=0
failed=0
check() {
  local file="$1" expected="$2" name json verdict
  name="${file#"$examples"/}"
  json="$tmp/${name//\//_}.json"
  if ! "$bin/js-yaml" "$file" >"$json" 2>"$tmp/yaml.err"; then
    verdict="invalid (not YAML: $(head -n 1 "$tmp/yaml.err"))"
  elif "$bin/ajv" validate "${ajv_flags[@]}" -d "$json" >"$tmp/ajv.out" 2>&1; then
    verdict=valid
  elif grep -q ' invalid$' "$tmp/ajv.out"; then
    verdict=invalid
  else
    echo "FAIL $name: ajv did not give a verdict:" >&2
    cat "$tmp/ajv.out" >&2
    failed=$((failed + 1))
    return
  fi
  if [[ "$verdict" == invalid && "$expected" == invalid ]]; then
    # Invalid for the reason the example states in its first line, `# expect: POINTER`.
    local wanted found
    wanted="$(sed -n '1s/^# expect: //p' "$file")"
    "$bin/ajv" validate "${ajv_flags[@]}" -d "$json" --all-errors --errors=json >"$tmp/ajv.json" 2>&1 || true
    found="$(node -e "$pointers_js" "$tmp/ajv.json")"
    if [[ -z "$wanted" || "$found" != "$wanted" ]]; then
      echo "FAIL $name: expected an error at '${wanted:-(no # expect: line)}', ajv reports '$found'" >&2
      failed=$((failed + 1))
      return
    fi
    expected="invalid at $wanted"
    verdict="$expected"
  fi
  if [[ "${verdict%% *}" == "${expected%% *}" ]]; then
    echo "ok   $name: $expected"
    passed=$((passed + 1))
  else
    echo "FAIL $name: expected $expected, ajv says $verdict" >&2
    cat "$tmp/ajv.out" >&2
    failed=$((failed + 1))
  fi
}

while IFS= read -r -d '' file; do
  check "$file" valid
done < <(find "$examples" -name cave.yaml -not -path '*/invalid/*' -print0 | sort -z)
while IFS= read -r -d '' file; do
  check "$file" invalid
done < <(find "$examples/invalid" -name '*.yaml' -print0 | sort -z)

if ((passed + failed == 0)); then
  echo "validate-examples: no examples found under $examples" >&2
  exit 1
fi
echo "ajv: $passed passed, $failed failed"
((failed == 0))
