#!/usr/bin/env bash
# Builds the Rust guest components (WASI 0.2 / component model) in release
# mode into target/guests, then prints each .wasm with its size and sha256.
#
#   scripts/build-rust-guests.sh            # all guests
#   scripts/build-rust-guests.sh hostile    # only the named crates
#
# The separate target dir keeps the guest build from contending for the lock
# of the host build in target/. The command per crate is exactly
#   CARGO_TARGET_DIR=target/guests cargo build --release --target wasm32-wasip2 -p <crate>
# so anything else (tests, benches) that runs it reuses these artifacts.
#
# Columnar guests (COLUMNAR_CRATES) are built by a second cargo invocation:
# they enable the SDK's `columnar` feature, and one invocation would unify it
# into the per-record guests too, changing their bytes (arrow in the SDK
# rlib, a second component-type section) for nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET=wasm32-wasip2
export CARGO_TARGET_DIR="${GUESTS_TARGET_DIR:-$ROOT/target/guests}"
# Guests without DWARF (cargo's default release profile; the workspace's
# line tables are for the host binary): it is 90% of a guest (columnar-probe
# 25.9 MB -> 2.5 MB, price-calculator 3.1 MB -> 0.2 MB) and nothing the
# worker reports reads it. A panic's file:line comes from the SDK's hook and
# the name section (function names) stays; compile time at load is the same.
# GUESTS_DEBUG=line-tables-only brings it back, e.g. for
# WASMTIME_BACKTRACE_DETAILS=1.
export CARGO_PROFILE_RELEASE_DEBUG="${GUESTS_DEBUG:-false}"
ALL_CRATES=(enrich-rs hostile price-calculator router v01-echo columnar-probe price-columnar)
COLUMNAR_CRATES=" columnar-probe price-columnar "

if [ "$#" -gt 0 ]; then
    CRATES=("$@")
else
    CRATES=("${ALL_CRATES[@]}")
fi

# Idempotent: a no-op when the target is already installed.
if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "installing rust target $TARGET" >&2
    rustup target add "$TARGET" >&2
fi

row_args=()
col_args=()
for c in "${CRATES[@]}"; do
    if [[ "$COLUMNAR_CRATES" == *" $c "* ]]; then col_args+=(-p "$c"); else row_args+=(-p "$c"); fi
done

start=$(date +%s)
if [ "${#row_args[@]}" -gt 0 ]; then
    cargo build --release --target "$TARGET" "${row_args[@]}" >&2
fi
if [ "${#col_args[@]}" -gt 0 ]; then
    cargo build --release --target "$TARGET" "${col_args[@]}" >&2
fi
end=$(date +%s)
echo "built ${#CRATES[@]} guest(s) in $((end - start))s" >&2

status=0
for c in "${CRATES[@]}"; do
    wasm="$CARGO_TARGET_DIR/$TARGET/release/${c//-/_}.wasm"
    if [ ! -f "$wasm" ]; then
        echo "missing output: $wasm" >&2
        status=1
        continue
    fi
    # A component starts with "\0asm" 0d 00 01 00; a core module with "\0asm" 01 00 00 00.
    header=$(od -An -tx1 -N8 "$wasm" | tr -d ' \n')
    if [ "$header" != "0061736d0d000100" ]; then
        echo "not a component (header $header): $wasm" >&2
        status=1
    fi
    size=$(stat -c %s "$wasm")
    sha=$(sha256sum "$wasm" | cut -d' ' -f1)
    printf '%s\t%s bytes\tsha256:%s\n' "$wasm" "$size" "$sha"
done
exit "$status"
