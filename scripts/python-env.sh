#!/usr/bin/env bash
# Creates (idempotently) the Python virtualenv used to build customer Python
# functions into WebAssembly components, and prints its path on stdout.
#
#   PIPELINE_VENV   where the venv lives (default: <repo>/.venv)
#   PYTHON          interpreter used to create it (default: python3.11, else python3)
#
# Fast path: when the venv already has the pinned componentize-py, this only
# runs one `python -c` and prints the path.
set -euo pipefail

COMPONENTIZE_PY_VERSION="0.25.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PIPELINE_VENV:-$repo_root/.venv}"

log() { echo "python-env: $*" >&2; }

have_pinned() {
    [ -x "$venv/bin/python" ] && [ -x "$venv/bin/componentize-py" ] &&
        "$venv/bin/python" - "$COMPONENTIZE_PY_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version("componentize-py") == sys.argv[1] else 1)
PY
}

if have_pinned; then
    echo "$venv"
    exit 0
fi

# Serialise concurrent first runs (parallel builds on a fresh machine).
if command -v flock >/dev/null 2>&1; then
    lock="${TMPDIR:-/tmp}/pipeline-python-env.$(printf '%s' "$venv" | cksum | cut -d' ' -f1).lock"
    exec 9>"$lock"
    flock 9
    if have_pinned; then
        echo "$venv"
        exit 0
    fi
fi

if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif command -v python3.11 >/dev/null 2>&1; then
    py="python3.11"
elif command -v python3 >/dev/null 2>&1; then
    py="python3"
else
    log "no python3 found (set PYTHON=/path/to/python3)"
    exit 1
fi

# componentize-py bundles its own CPython (compiled to wasm); the host
# interpreter only runs the CLI, so any Python >= 3.9 will do.
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
    log "$py is older than 3.9"
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv at $venv with $("$py" --version 2>&1)"
    if ! "$py" -m venv "$venv" >&2; then
        log "'$py -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)"
        exit 1
    fi
fi

log "installing componentize-py==$COMPONENTIZE_PY_VERSION"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet \
    "componentize-py==$COMPONENTIZE_PY_VERSION" >&2

if ! have_pinned; then
    log "componentize-py==$COMPONENTIZE_PY_VERSION is not usable in $venv"
    exit 1
fi

echo "$venv"
