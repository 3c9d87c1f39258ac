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
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TARGET=wasm32-wasip2
export CARGO_TARGET_DIR="${GUESTS_TARGET_DIR:-$ROOT/target/guests}"
ALL_CRATES=(enrich-rs hostile price-calculator router v01-echo)

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

args=()
for c in "${CRATES[@]}"; do args+=(-p "$c"); done

start=$(date +%s)
cargo build --release --target "$TARGET" "${args[@]}" >&2
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
