#!/usr/bin/env bash
# Builds behaviours.js into a component and runs behaviours.jsonl through it
# in the worker's production sandbox (`pipeline-worker test`), comparing with
# behaviours.expected.jsonl (one line per input: its outputs, or
# {"error": kind}). Needs target/release/pipeline-worker (or $PIPELINE_WORKER).
#
#   sdk-wit/js/test/component/run.sh [OUT.wasm]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../../../.." && pwd)"
worker="${PIPELINE_WORKER:-$repo_root/target/release/pipeline-worker}"
out="${1:-${TMPDIR:-/tmp}/pipeline-js-behaviours.wasm}"
"$repo_root/scripts/build-js.sh" "$here/behaviours.js" "$out"
"$worker" test --component "$out" --input "$here/behaviours.jsonl" \
    --expect "$here/behaviours.expected.jsonl" \
    --cache-dir "${PIPELINE_JS_TEST_CACHE:-${TMPDIR:-/tmp}/pipeline-js-test-cache}"
