#!/usr/bin/env bash
# Builds a customer JavaScript function into a WebAssembly component.
#
#   scripts/build-js.sh SRC.js OUT.wasm      (or SRC.ts / .mjs / .mts)
#   scripts/build-js.sh --tools              only install the build tools (CI
#                                            runs this while cargo compiles)
#
# A thin caller of the npm package's own build, `pipeline-sdk-js build`
# (sdk-wit/js/bin/pipeline-sdk-js.mjs, the same code a customer gets from the
# tarball): this script only keeps the checkout's sdk-wit/js/node_modules
# installed (npm ci of package-lock.json, so the pinned componentize-js, jco,
# preview2-shim, amaro, rolldown and apache-arrow) and then runs it.
#
# SRC.js is the customer's ES module: it imports from "pipeline-sdk" and
# default-exports its function, `export default transform((record) => ...)`.
# A TypeScript file has its types stripped first (amaro, strip-only: types
# become whitespace, so lines and columns are kept; no type checking — run
# tsc for that; no enum / namespace / parameter properties).
# The component targets the WIT world `pipeline:transform/transform-batch@0.2.0`
# (the package's copy of sdk-wit/wit/transform.wit): it exports `transformer`
# and `batch-transformer` and imports `host` plus a few WASI 0.2 interfaces.
# SRC.js may import nothing but "pipeline-sdk"; a build error names the
# customer's file:line:column. A columnar function (SRC imports
# "pipeline-sdk/columnar" and default-exports `columnar((table) => ...)`)
# targets `transform-columnar` instead, exporting only `columnar-transformer`;
# it may also import "apache-arrow", which the build bundles (rolldown) from
# the package's pinned apache-arrow 21.2.0 (sdk-wit/js/README.md, "Columnar
# functions").
#
# Default features: `--disable http fetch-event`, so the component does not
# import wasi:http (the worker refuses it). stdio (console.log → WASI stdout),
# random (Math.random, crypto.getRandomValues) and clocks (Date.now,
# performance.now) stay, so it imports wasi:cli, wasi:clocks, wasi:filesystem,
# wasi:io and wasi:random interfaces at 0.2.x.
#
# Environment:
#   PIPELINE_JS_MINIMAL_WASI=1  also disable stdio, random and clocks: the
#                               component imports only pipeline:transform/*.
#                               console.log output is then dropped, and the
#                               clock and the random seed are those frozen
#                               at build time (see sdk-wit/js/README.md)
#   PIPELINE_JS_OFFLINE=1       never run npm; fail if the tools are missing
#
# Prints the size, sha256 and build time of OUT.wasm, and its imports.
set -euo pipefail

usage() {
    echo "usage: $0 SRC.js|SRC.ts OUT.wasm" >&2
    exit 2
}
tools_only=0
if [ $# -eq 1 ] && [ "$1" = "--tools" ]; then
    tools_only=1
else
    [ $# -eq 2 ] || usage
    src="$1"
    out="$2"
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sdk_dir="$repo_root/sdk-wit/js"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "error: node and npm are needed (Node >= 20)" >&2
    exit 2
fi

# --- the build tools, pinned by package-lock.json ---------------------------
# npm ci is idempotent but slow (it deletes node_modules); run it only when
# node_modules is missing or older than the lock file.
stamp="$sdk_dir/node_modules/.pipeline-build-stamp"
stale() {
    [ ! -f "$stamp" ] || [ "$sdk_dir/package-lock.json" -nt "$stamp" ] ||
        [ ! -x "$sdk_dir/node_modules/.bin/componentize-js" ]
}
# Serialise concurrent installs (CI's --tools in the background and a build):
# npm ci deletes node_modules, which would pull it from under the other one.
if stale && command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/pipeline-build-js.$(printf '%s' "$sdk_dir" | cksum | cut -d' ' -f1).lock"
    flock 9
fi
if stale; then
    if [ "${PIPELINE_JS_OFFLINE:-0}" = "1" ]; then
        echo "error: $sdk_dir/node_modules is missing or stale and PIPELINE_JS_OFFLINE=1" >&2
        exit 1
    fi
    echo "installing the JS build tools into $sdk_dir/node_modules (npm ci)" >&2
    if ! (cd "$sdk_dir" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        echo "error: npm ci failed in $sdk_dir" >&2
        exit 1
    fi
    touch "$stamp"
fi
exec 9>&-
[ "$tools_only" = 0 ] || exit 0
exec node "$sdk_dir/bin/pipeline-sdk-js.mjs" build "$src" -o "$out"
