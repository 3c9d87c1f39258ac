#!/usr/bin/env bash
# Copies the one source of truth, sdk-wit/wit/transform.wit, into each SDK
# package (each must carry its own: a wheel, an npm tarball and a .crate
# cannot reach outside themselves). `cargo test -p pipeline-worker --lib
# wit_copies` and scripts/check-sdk-packages.sh fail when a copy differs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for d in sdk-wit/rust/wit sdk-wit/python/pipeline_sdk/wit sdk-wit/js/wit; do
    mkdir -p "$root/$d"
    cp "$root/sdk-wit/wit/transform.wit" "$root/$d/transform.wit"
    echo "$d/transform.wit"
done
