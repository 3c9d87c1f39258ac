#!/usr/bin/env bash
# Builds a customer JavaScript function into a WebAssembly component.
#
#   scripts/build-js.sh SRC.js OUT.wasm      (or SRC.ts / .mjs / .mts)
#
# SRC.js is the customer's ES module: it imports from "pipeline-sdk" and
# default-exports its function, `export default transform((record) => ...)`.
# A TypeScript file has its types stripped first (amaro, strip-only: types
# become whitespace, so lines and columns are kept; no type checking — run
# tsc for that; no enum / namespace / parameter properties).
# The component targets the WIT world `pipeline:transform/transform-batch@0.2.0`
# (sdk-wit/wit/transform.wit): it exports `transformer` and
# `batch-transformer` and imports `host` plus a few WASI 0.2 interfaces.
#
# How: the build tools (@bytecodealliance/componentize-js and
# @bytecodealliance/jco, plus amaro for TypeScript, pinned in
# sdk-wit/js/package.json and
# package-lock.json) are installed into sdk-wit/js/node_modules with `npm ci`
# when missing or out of date. A scratch directory gets a copy of SRC.js
# (same file name), a copy of sdk-wit/js/pipeline-sdk.js and a generated entry
# module, pipeline-entry.js, that imports the host log, the SDK and the
# customer module and exports the two WIT interfaces; then `componentize-js`.
# componentize-js evaluates the module graph at build time (Wizer
# pre-initialisation inside the engine, then snapshots the heap), resolving
# the imports itself: the bare specifier "pipeline-sdk" resolves to
# ./pipeline-sdk.js next to the customer file. So no bundler is needed, and
# error locations keep the customer's file name and line numbers. Only the
# customer file and the SDK are in the component: SRC.js may import nothing
# but "pipeline-sdk".
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
[ $# -eq 2 ] || usage
src="$1"
out="$2"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wit_dir="$repo_root/sdk-wit/wit"
sdk_dir="$repo_root/sdk-wit/js"
world="transform-batch"

if [ ! -f "$src" ]; then
    echo "error: $src: no such file" >&2
    exit 2
fi
name="$(basename "$src")"
case "$name" in
*.js | *.mjs | *.ts | *.mts) ;;
*) echo "error: $src: expected a .js or .mjs file (an ES module), or .ts / .mts" >&2; exit 2 ;;
esac
case "$name" in
pipeline-sdk.* | pipeline-entry.js)
    echo "error: $src: the file name $name is taken by the build; rename the file" >&2
    exit 2
    ;;
esac
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "error: node and npm are needed (Node >= 20)" >&2
    exit 2
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "error: Node >= 20 is needed, found $(node --version)" >&2
    exit 2
fi

# --- the build tools, pinned by package-lock.json ---------------------------
# npm ci is idempotent but slow (it deletes node_modules); run it only when
# node_modules is missing or older than the lock file.
stamp="$sdk_dir/node_modules/.pipeline-build-stamp"
if [ ! -f "$stamp" ] || [ "$sdk_dir/package-lock.json" -nt "$stamp" ] ||
    [ ! -x "$sdk_dir/node_modules/.bin/componentize-js" ]; then
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
componentize="$sdk_dir/node_modules/.bin/componentize-js"
cjs_version="$(node -p "require('$sdk_dir/node_modules/@bytecodealliance/componentize-js/package.json').version")"

disable=(http fetch-event)
if [ "${PIPELINE_JS_MINIMAL_WASI:-0}" = "1" ]; then
    disable+=(stdio random clocks)
fi

# --- quick static check of the customer file, no code run -------------------
node "$sdk_dir/tools/precheck.mjs" "$src" || exit 1

# --- scratch directory: customer file, SDK, entry module --------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/pipeline-js-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir "$work/app"
case "$name" in
*.ts | *.mts)
    # Same file name: the engine does not care about the extension, and
    # error locations then name the .ts file at its own lines.
    node "$sdk_dir/tools/strip-types.mjs" "$src" "$work/app/$name" || exit 1
    ;;
*) cp "$src" "$work/app/$name" ;;
esac
cp "$sdk_dir/pipeline-sdk.js" "$work/app/pipeline-sdk.js"
cat >"$work/app/pipeline-entry.js" <<EOF
// Generated by scripts/build-js.sh: the componentize-js entry module. It is
// evaluated at build time and checks that $name default-exports a function.
import { log as hostLog } from "pipeline:transform/host@0.2.0";
import { _component } from "pipeline-sdk";
import * as customer from "./$name";

const component = _component(customer, { hostLog, file: "$name" });
export const transformer = component.transformer;
export const batchTransformer = component.batchTransformer;
EOF

echo "building $src -> $out (world $world, componentize-js $cjs_version, --disable ${disable[*]})" >&2
start_ns="$(date +%s%N)"
set +e
(
    # componentize-js maps the working directory to / inside the component
    # at build time, so file names in stack traces are just "$name".
    cd "$work/app"
    "$componentize" pipeline-entry.js --wit "$wit_dir" --world-name "$world" \
        --disable "${disable[@]}" -o "$work/out.wasm"
) >"$work/build.log" 2>&1
rc=$?
set -e
end_ns="$(date +%s%N)"
build_secs="$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')"

if [ $rc -ne 0 ] || [ ! -s "$work/out.wasm" ]; then
    echo "error: building $src failed after ${build_secs}s; componentize-js said:" >&2
    # Drop the componentize-js CLI's own Node stack trace and the temporary
    # paths; keep the engine's message and the guest's stack.
    grep -v -E '^\s+at .*(node_modules|node:internal)|^file:///.*node_modules|^\s+throw new Error\(err\);$|^\s+\^$|^Node\.js v' "$work/build.log" |
        sed -e "s#$work/app/##g" -e 's/^/  | /' >&2
    # Point at the customer's file and line when the exception names it
    # ("NAME:LINE:COL Error: message" after "Exception while evaluating").
    where="$(grep -m1 -E "^$(printf '%s' "$name" | sed 's/[.[\*^$]/\\&/g'):[0-9]+:[0-9]+ " "$work/build.log" || true)"
    if [ -n "$where" ]; then
        line_no="$(printf '%s' "$where" | cut -d: -f2)"
        col_no="$(printf '%s' "$where" | cut -d: -f3 | cut -d' ' -f1)"
        echo "$src:$line_no:$col_no: ${where#* }" >&2
        code="$(sed -n "${line_no}p" "$src" | sed 's/^[[:space:]]*//')"
        [ -n "$code" ] && echo "    $code" >&2
    fi
    exit 1
fi

mkdir -p "$(dirname "$out")"
mv "$work/out.wasm" "$out"
size="$(wc -c <"$out" | tr -d ' ')"
sha="$(sha256sum "$out" | awk '{print $1}')"
echo "built $out"
echo "  size:       $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f MiB", s / 1048576 }'))"
echo "  sha256:     $sha"
echo "  build time: ${build_secs}s"
echo "  imports:"
python3 "$repo_root/sdk-wit/python/tools/component_imports.py" --imports "$out" | sed 's/^/    /'
