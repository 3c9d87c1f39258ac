#!/usr/bin/env bash
# Builds a customer Python function into a WebAssembly component.
#
#   scripts/build-python.sh SRC.py OUT.wasm
#
# A thin caller of the SDK's own build, `pipeline-sdk build` (implemented in
# sdk-wit/python/pipeline_sdk/_build.py, the same code a customer gets from
# the wheel): the checkout's sdk-wit/python is put on PYTHONPATH of the venv
# that scripts/python-env.sh keeps with the pinned componentize-py.
#
# SRC.py is the customer's module: it imports pipeline_sdk and defines exactly
# one @transform function. The component targets the WIT world
# `pipeline:transform/transform-batch@0.2.0` (the package's copy of
# sdk-wit/wit/transform.wit), so it exports both `transformer` and
# `batch-transformer`, and imports `host` plus the WASI 0.2 interfaces
# componentize-py's CPython needs. An import error in SRC.py, or zero / two
# @transform functions, fails the build with the customer's file:line.
#
# Environment:
#   PIPELINE_VENV            venv with componentize-py (see scripts/python-env.sh)
#   PIPELINE_PYTHON_PATH     extra ':'-separated directories with pure-Python
#                            dependencies to bundle (optional)
#   PIPELINE_SKIP_PRECHECK=1 skip the quick static check (tests use it to
#                            exercise the build-time checks in the component)
#   PIPELINE_STUB_WASI=1     pass --stub-wasi: every WASI import is replaced by
#                            a trapping stub, so the component imports only
#                            pipeline:transform/*. The function then traps if
#                            it reads a clock, a file, stdout (print), ...,
#                            and Python's `random` replays the seed baked in at
#                            build time (see sdk-wit/python/README.md)
#
# Prints the size, sha256 and build time of OUT.wasm, and its imports.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SRC.py OUT.wasm" >&2
    exit 2
fi
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$repo_root/scripts/python-env.sh")"
PYTHONPATH="$repo_root/sdk-wit/python" exec "$venv/bin/python" -m pipeline_sdk build "$1" -o "$2"
