#!/usr/bin/env bash
# Builds the Python customer examples and the negative-test components into
# OUT_DIR (default: <repo>/target/components/python) and checks that the two
# that must not build fail with the expected message.
#
#   tests/components/python/build_all.sh [OUT_DIR]
#
# About a minute per component on 2 cores (9 builds, the two failing ones
# included: two_transforms.py is built with PIPELINE_SKIP_PRECHECK=1 so that
# the check inside the component, at build time, is exercised too).
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
out_dir="${1:-$repo_root/target/components/python}"
build="$repo_root/scripts/build-python.sh"
mkdir -p "$out_dir"
failures=0
passed=0

ok() { passed=$((passed + 1)); echo "ok: $*"; }
fail() { failures=$((failures + 1)); echo "FAIL: $*"; }

for src in \
    "$repo_root/customer-examples/enrich_event/enrich_event.py" \
    "$repo_root/customer-examples/pii_redaction/pii_redaction.py" \
    "$repo_root/customer-examples/filter/filter.py" \
    "$repo_root/tests/components/python/raises.py" \
    "$repo_root/tests/components/python/wrong_type.py" \
    "$repo_root/tests/components/python/opens_file.py" \
    "$repo_root/tests/components/python/uses_socket.py"; do
    name="$(basename "$src" .py)"
    if "$build" "$src" "$out_dir/$name.wasm"; then
        ok "$name builds"
    else
        fail "$name does not build"
    fi
done

expect_build_failure() {
    local src="$1" pattern="$2" log
    log="$(mktemp)"
    if "$build" "$src" "$out_dir/should-not-exist.wasm" >"$log" 2>&1; then
        fail "$(basename "$src") built but must not"
    elif grep -q -- "$pattern" "$log"; then
        ok "$(basename "$src") fails to build: $(grep -m1 -- "$pattern" "$log" | sed 's/^ *| *//')"
    else
        fail "$(basename "$src") failed to build without the expected message '$pattern':"
        sed 's/^/    /' "$log"
    fi
    rm -f "$log" "$out_dir/should-not-exist.wasm"
}

py_dir="$repo_root/tests/components/python"
expect_build_failure "$py_dir/two_transforms.py" "more than one @transform function"
PIPELINE_SKIP_PRECHECK=1 expect_build_failure "$py_dir/two_transforms.py" "TransformDefinitionError: more than one @transform function"
expect_build_failure "$py_dir/no_transform.py" "defines no @transform function"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
