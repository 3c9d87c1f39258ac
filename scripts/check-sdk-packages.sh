#!/usr/bin/env bash
# CI for the SDK packages, as a customer gets them: builds the Python wheel,
# the npm tarball and the Rust .crate, then, in a temporary folder outside the
# checkout, with no PIPELINE_SDK_HOME and a copy of the pipeline-worker binary
# (as `cargo install --path worker` would leave it), installs each one and
# runs `pipeline-worker init` + `build` + `test` of one function per language
# (JavaScript and TypeScript from the one tarball; Rust by path to the unpacked
# .crate and by `git =` to a local file:// clone of this repository).
#
#   scripts/check-sdk-packages.sh            # needs target/release/pipeline-worker
#
# Environment:
#   PIPELINE_WORKER      the binary to test (default target/release/pipeline-worker)
#   SDK_CHECK_LANGS      which languages (default "python js rust"; js covers TypeScript)
#   SDK_CHECK_KEEP=1     keep the temporary folder (its path is printed)
#
# pip's and npm's caches live in target/sdk-packages-cache, so a second run
# downloads nothing. The three languages run in parallel (each is mostly one
# single-threaded tool); each one's log is printed when it ends. Exits 1 on
# the first failed check, naming it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="${PIPELINE_WORKER:-$root/target/release/pipeline-worker}"
langs="${SDK_CHECK_LANGS:-python js rust}"
cache="$root/target/sdk-packages-cache"
dist="$root/target/sdk-packages"
started=$(date +%s)
step() { echo "--- $* ($(( $(date +%s) - started )) s)"; }
fail() { echo "check-sdk-packages: FAIL: $*" >&2; exit 1; }
# expect TEXT NEEDLE WHAT: TEXT contains NEEDLE, or fail naming WHAT.
expect() { grep -qF -- "$2" <<<"$1" || { printf '%s\n' "$1" >&2; fail "$3: no \"$2\" in the output above"; }; }

[ -x "$bin" ] || fail "$bin: no pipeline-worker binary (cargo build --release -p pipeline-worker)"

step "WIT copies"
for c in sdk-wit/rust/wit/transform.wit sdk-wit/python/pipeline_sdk/wit/transform.wit sdk-wit/js/wit/transform.wit; do
    cmp -s sdk-wit/wit/transform.wit "$c" || fail "$c differs from sdk-wit/wit/transform.wit (scripts/sync-wit.sh copies it)"
done

rm -rf "$dist"
mkdir -p "$dist" "$cache/pip" "$cache/npm"

step "wheel (pip wheel sdk-wit/python)"
# From a copy: setuptools leaves build/ and *.egg-info next to its input.
mkdir "$dist/python-src"
cp -R sdk-wit/python/pyproject.toml sdk-wit/python/README.md sdk-wit/python/pipeline_sdk "$dist/python-src/"
python3 -m pip wheel --quiet --no-deps --cache-dir "$cache/pip" -w "$dist" "$dist/python-src"
wheel="$(ls "$dist"/pipeline_sdk-0.2.0-py3-none-any.whl)" || fail "no pipeline_sdk-0.2.0 wheel in $dist"
listing="$(python3 -m zipfile -l "$wheel")"
for f in pipeline_sdk/wit/transform.wit pipeline_sdk/_build.py pipeline_sdk/cli.py entry_points.txt; do
    expect "$listing" "$f" "wheel contents"
done
expect "$(unzip -p "$wheel" 'pipeline_sdk-0.2.0.dist-info/METADATA' 2>/dev/null || python3 -c "import zipfile,sys; print(zipfile.ZipFile(sys.argv[1]).read('pipeline_sdk-0.2.0.dist-info/METADATA').decode())" "$wheel")" \
    "Requires-Dist: componentize-py==0.25.1" "wheel metadata"

step "npm pack (sdk-wit/js)"
tgz="$dist/$(cd sdk-wit/js && npm pack --silent --cache "$cache/npm" --pack-destination "$dist" | tail -1)"
[ "$(basename "$tgz")" = pipeline-sdk-0.2.0.tgz ] || fail "npm pack made $tgz, expected pipeline-sdk-0.2.0.tgz"
listing="$(tar tzf "$tgz")"
for f in package/pipeline-sdk.js package/pipeline-sdk.d.ts package/pipeline-sdk-columnar.js package/pipeline-sdk-columnar.d.ts package/tools/columnar-build.mjs package/wit/transform.wit package/bin/pipeline-sdk-js.mjs package/tools/precheck.mjs; do
    expect "$listing" "$f" "npm tarball contents"
done

# --no-verify: verifying compiles the crate and all its dependencies from
# scratch in target/package for the host (minutes on CI's 2 cores); the Rust
# step below builds the unpacked .crate for its real target instead.
step "cargo package -p pipeline-sdk"
cargo package --quiet -p pipeline-sdk --allow-dirty --no-verify
crate="$root/target/package/pipeline-sdk-0.2.0.crate"
listing="$(tar tzf "$crate")"
for f in pipeline-sdk-0.2.0/wit/transform.wit pipeline-sdk-0.2.0/src/lib.rs pipeline-sdk-0.2.0/Cargo.toml; do
    expect "$listing" "$f" "crate contents"
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/sdk-packages.XXXXXX")"
case "$tmp" in "$root"/*) fail "the temporary folder $tmp is inside the checkout" ;; esac
if [ "${SDK_CHECK_KEEP:-0}" = "1" ]; then echo "keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
mkdir "$tmp/bin"
cp "$bin" "$tmp/bin/pipeline-worker"
cd "$tmp"
# What a customer has: the installed binary, no checkout, no PIPELINE_SDK_HOME.
pw() { env -u PIPELINE_SDK_HOME -u VIRTUAL_ENV "$tmp/bin/pipeline-worker" "$@" 2>&1; }
# A component passes the project's own expected output.
pw_test() {
    local out
    out="$(pw test --cache-dir "$tmp/cache" --component "$1/$1.wasm" --input "$1/sample.jsonl" --expect "$1/expected.jsonl")" ||
        { printf '%s\n' "$out" >&2; fail "$1: pipeline-worker test failed"; }
    expect "$out" "PASS" "$1: pipeline-worker test"
}
# `build` of a project whose SDK is not installed fails, naming what to install.
pw_build_missing() {
    local out
    if out="$(pw build "$1")"; then printf '%s\n' "$out" >&2; fail "$1: built without its SDK installed"; fi
    expect "$out" "$2" "$1: build without the SDK"
}
pw_build() {
    local out
    out="$(pw build "$1")" || { printf '%s\n' "$out" >&2; fail "$1: pipeline-worker build failed"; }
    expect "$out" "sha256:" "$1: build"
    printf '%s\n' "$out" | tail -1
}

check_python() {
    pw init --lang python py_fn >/dev/null
    expect "$(cat py_fn/requirements.txt)" "pipeline-sdk==0.2.*" "py_fn/requirements.txt"
    pw_build_missing py_fn "pip install 'pipeline-sdk==0.2.*'"
    python3 -m venv py_fn/.venv
    # Pulls componentize-py from PyPI as the wheel's dependency.
    py_fn/.venv/bin/pip install --quiet --cache-dir "$cache/pip" "$wheel"
    expect "$(py_fn/.venv/bin/pipeline-sdk --version)" \
        "pipeline-sdk 0.2.0 (WIT pipeline:transform@0.2.0, componentize-py 0.25.1)" "pipeline-sdk --version"
    # The local runner: same outputs as the expected file, byte for byte.
    diff <(py_fn/.venv/bin/pipeline-sdk run py_fn/py_fn.py py_fn/sample.jsonl) py_fn/expected.jsonl ||
        fail "pipeline-sdk run: output differs from py_fn/expected.jsonl"
    # A build error names the customer's file and line.
    printf 'from pipeline_sdk import transform\n\n@transform\ndef a(r):\n    return r\n\n@transform\ndef b(r):\n    return r\n' >two.py
    if out="$(py_fn/.venv/bin/pipeline-sdk build two.py -o two.wasm 2>&1)"; then fail "two.py (two @transform) built"; fi
    expect "$out" "two.py:7: more than one @transform" "pipeline-sdk build two.py"
    pw_build py_fn
    pw_test py_fn
}

check_js() {
    pw init --lang js js_fn >/dev/null
    expect "$(cat js_fn/package.json)" '"pipeline-sdk": "0.2.x"' "js_fn/package.json"
    pw_build_missing js_fn "npm install"
    # The tarball replaces the registry version range (it is not published).
    (cd js_fn && npm install --silent --no-audit --no-fund --prefer-offline --cache "$cache/npm" "$tgz")
    expect "$(js_fn/node_modules/.bin/pipeline-sdk-js --version)" \
        "pipeline-sdk 0.2.0 (WIT pipeline:transform@0.2.0, componentize-js 0.23.0)" "pipeline-sdk-js --version"
    pw_build js_fn
    pw_test js_fn
    # TypeScript from the same tarball: types stripped by the package's own
    # build (amaro), lines kept.
    pw init --lang ts ts_fn >/dev/null
    grep -q "interface " ts_fn/ts_fn.ts && grep -q ": Record" ts_fn/ts_fn.ts || fail "ts_fn/ts_fn.ts is not TypeScript"
    [ -f ts_fn/tsconfig.json ] || fail "init --lang ts wrote no ts_fn/tsconfig.json"
    (cd ts_fn && npm install --silent --no-audit --no-fund --prefer-offline --cache "$cache/npm" "$tgz")
    pw_build ts_fn
    pw_test ts_fn
    expect "$(pw test --cache-dir "$tmp/cache" --component ts_fn/ts_fn.wasm --input ts_fn/sample.jsonl)" \
        '"session_duration_minutes":60' "ts_fn: pipeline-worker test output"
}

check_rust() {
    tar xzf "$crate" -C "$tmp"
    pw init --lang rust rs_fn --rust-sdk "$tmp/pipeline-sdk-0.2.0" >/dev/null
    expect "$(cat rs_fn/Cargo.toml)" "pipeline-sdk = { path = \"$tmp/pipeline-sdk-0.2.0\" }" "rs_fn/Cargo.toml"
    # The workspace's lock and guest target dir: the same dependency versions
    # as the repository's guests, already compiled, so this builds in seconds.
    cp "$root/Cargo.lock" rs_fn/Cargo.lock
    CARGO_TARGET_DIR="$root/target/guests" pw_build rs_fn
    pw_test rs_fn
    # By git, as `cargo add --git` leaves it: a file:// clone of this
    # repository (its committed HEAD; no network). Cargo finds the crate
    # inside the workspace by its package name.
    git clone --quiet --bare "$root" "$tmp/pipeline-worker.git"
    local url="file://$tmp/pipeline-worker.git"
    pw init --lang rust rs_git --rust-sdk "$url" >/dev/null
    expect "$(cat rs_git/Cargo.toml)" "pipeline-sdk = { git = \"$url\" }" "rs_git/Cargo.toml"
    cp "$root/Cargo.lock" rs_git/Cargo.lock
    CARGO_TARGET_DIR="$root/target/guests" pw_build rs_git
    expect "$(cat rs_git/Cargo.lock)" "source = \"git+$url" "rs_git/Cargo.lock (pipeline-sdk from the git clone)"
    pw_test rs_git
}

pids=()
for lang in $langs; do
    ( set -euo pipefail; "check_$lang" ) >"$tmp/$lang.log" 2>&1 &
    pids+=("$lang:$!")
done
status=0
for p in "${pids[@]}"; do
    lang="${p%%:*}"
    if wait "${p#*:}"; then result=ok; else result=FAILED; status=1; fi
    step "$lang: $result"
    sed 's/^/  | /' "$tmp/$lang.log"
done
[ "$status" -eq 0 ] || fail "see the failed language's log above"
step "SDK packages ok"
