#!/usr/bin/env bash
# Builds every Python example and Python test component into
# target/components/<name>.wasm with scripts/build-python.sh. A component is
# rebuilt only when its source, the SDK or the WIT changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/components"
mkdir -p "$out"
sdk_hash=$(cat "$root"/sdk-wit/wit/*.wit $(find "$root/sdk-wit/python" -name '*.py' | sort) | sha256sum | cut -c1-16)
build() { # name source
  local name=$1 src=$2 stamp="$out/$1.stamp"
  local want="$(sha256sum "$src" | cut -c1-16)-$sdk_hash"
  if [[ -f "$out/$name.wasm" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "up to date: $out/$name.wasm"
    return
  fi
  "$root/scripts/build-python.sh" "$src" "$out/$name.wasm"
  echo "$want" > "$stamp"
}
build enrich_event "$root/customer-examples/enrich_event/enrich_event.py"
build pii_redaction "$root/customer-examples/pii_redaction/pii_redaction.py"
build filter "$root/customer-examples/filter/filter.py"
for f in raises wrong_type opens_file uses_socket sleeps stateful; do
  [[ -f "$root/tests/components/python/$f.py" ]] && build "py_$f" "$root/tests/components/python/$f.py"
done
exit 0
