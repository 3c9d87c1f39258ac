"""Builds a customer module into a WebAssembly component with componentize-py.

The one implementation of the Python build: `pipeline-sdk build`,
`scripts/build-python.sh` (a checkout) and `pipeline-worker build` all end
here.

A scratch directory gets a copy of the customer file (same module name), a
copy of this package (without its build-only modules and the WIT) and a
generated app module, `pipeline_app.py`, that imports the customer module
through the SDK; then `componentize-py componentize pipeline_app` against the
WIT bundled in this package. componentize-py imports the app module at build
time (pre-initialisation), so an import error in the customer file, or zero /
two @transform functions, fails the build; the error is then reported as
`FILE:LINE: message` for the customer's file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from . import WIT_PACKAGE, __version__
from . import _imports, _precheck

# The dependency pinned in pyproject.toml; a mismatch is only warned about, so
# that a deliberate upgrade can be tried without a new SDK release.
COMPONENTIZE_PY_VERSION = "0.25.1"
WORLD = "transform-batch"
APP_MODULE = "pipeline_app"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
WIT_DIR = os.path.join(PACKAGE_DIR, "wit")
# Needed on the host only: left out of the component.
BUILD_ONLY = {"wit", "_build.py", "cli.py", "__main__.py", "_precheck.py", "_local.py", "_imports.py", "__pycache__"}


def componentize_py_version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("componentize-py")
    except PackageNotFoundError:
        return None


class _Ticker:
    """Elapsed time on stderr while the slow step runs: a live counter on a
    terminal, else a line every 10 s (CI logs)."""

    def __init__(self, what):
        self.what = what
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        period = 1.0 if self.tty else 10.0
        while not self.stop.wait(period):
            secs = time.monotonic() - self.started
            if self.tty:
                sys.stderr.write("\r  %s: %d s" % (self.what, secs))
            else:
                sys.stderr.write("  %s: %d s\n" % (self.what, secs))
            sys.stderr.flush()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.tty:
            sys.stderr.write("\r\033[K")
        return False


def _locate(log_text, stem, src):
    """`SRC:LINE: message` (and the line) from componentize-py's build log,
    where the guest traceback names the customer's file."""
    name = stem + ".py"
    frames = re.findall(r'File "/\d+/%s", line (\d+)' % re.escape(name), log_text)
    syntax = re.findall(
        r'File "/\d+/%s", line (\d+)\n(?:.*\n){0,3}?\s*(SyntaxError|IndentationError|TabError): (.*)' % re.escape(name),
        log_text,
    )
    # The exception line: "Caused by:" is followed by "    Type: message".
    m = re.search(r"Caused by:\n\s+(.+)", log_text)
    message = m.group(1).strip() if m else ""
    if not message:
        lines = [l for l in log_text.splitlines() if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b", l)]
        message = lines[-1] if lines else ""
    line = syntax[-1][0] if syntax else (frames[-1] if frames else None)
    if line is None:
        return "%s: %s" % (src, message) if message else None
    out = "%s:%s: %s" % (src, line, message or "error while importing the module at build time")
    try:
        with open(src, encoding="utf-8") as f:
            code = f.read().splitlines()[int(line) - 1]
        out += "\n    " + code.strip()
    except (OSError, IndexError, ValueError):
        pass
    return out


def _clean_log(text):
    # Drop the host-side traceback of the componentize-py CLI itself
    # (everything before "AssertionError: "), keep the guest's.
    if "\nAssertionError: " in "\n" + text:
        head, _, rest = ("\n" + text).partition("\nAssertionError: ")
        return rest
    return text


def build(src, out, python_path=(), stub_wasi=False, precheck=True, err=sys.stderr):
    """Returns the exit status: 0 built, 1 the customer's code is at fault,
    2 bad arguments or a missing tool."""
    if not os.path.isfile(src):
        print("error: %s: no such file" % src, file=err)
        return 2
    if not src.endswith(".py"):
        print("error: %s: expected a .py file" % src, file=err)
        return 2
    if not os.path.isfile(os.path.join(WIT_DIR, "transform.wit")):
        print("error: %s: the SDK's WIT is missing (a broken install? reinstall pipeline-sdk)" % WIT_DIR, file=err)
        return 2
    cpy = componentize_py_version()
    if cpy is None:
        print(
            "error: componentize-py is not installed for %s; install it with: %s -m pip install componentize-py==%s"
            % (sys.executable, sys.executable, COMPONENTIZE_PY_VERSION),
            file=err,
        )
        return 2
    if cpy != COMPONENTIZE_PY_VERSION:
        print("warning: componentize-py %s, the SDK is tested with %s" % (cpy, COMPONENTIZE_PY_VERSION), file=err)
    if precheck:
        problem = _precheck.check(src)
        if problem:
            print("error: " + problem, file=err)
            return 1
    stem = os.path.basename(src)[:-3]
    extra = []
    for d in python_path:
        if not os.path.isdir(d):
            print("error: --python-path %s: no such directory" % d, file=err)
            return 2
        extra += ["-p", os.path.abspath(d)]

    work = tempfile.mkdtemp(prefix="pipeline-py-build.")
    try:
        app = os.path.join(work, "app")
        os.mkdir(app)
        shutil.copyfile(src, os.path.join(app, stem + ".py"))
        shutil.copytree(PACKAGE_DIR, os.path.join(app, "pipeline_sdk"), ignore=lambda d, names: [n for n in names if n in BUILD_ONLY and d == PACKAGE_DIR or n == "__pycache__"])
        with open(os.path.join(app, APP_MODULE + ".py"), "w", encoding="utf-8") as f:
            f.write(
                "# Generated by pipeline-sdk build: the componentize-py app module.\n"
                "# Importing it (at build time) loads the customer module %r and checks\n"
                "# that it defines exactly one @transform function.\n"
                "from pipeline_sdk._runtime import load, Transformer, BatchTransformer\n\n"
                "load(%r)\n" % (stem, stem)
            )
        wasm = os.path.join(work, "out.wasm")
        cmd = [
            sys.executable, "-c",
            "import sys, componentize_py; sys.argv[0] = 'componentize-py'; componentize_py.script()",
            "-d", WIT_DIR, "-w", WORLD, "componentize",
        ]
        cmd += ["--stub-wasi"] if stub_wasi else []
        cmd += ["-p", app] + extra + ["-o", wasm, APP_MODULE]
        # VIRTUAL_ENV and PYTHONPATH would make componentize-py bundle that
        # environment's packages too; the build must see only the app, the
        # SDK and the --python-path directories.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env.update(RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0")
        print(
            "building %s -> %s (world %s of %s, pipeline-sdk %s, componentize-py %s)"
            % (src, out, WORLD, WIT_PACKAGE, __version__, cpy),
            file=err,
        )
        started = time.monotonic()
        with _Ticker("componentize-py (pre-initialising CPython with your module; 10-60 s)"):
            proc = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        secs = time.monotonic() - started
        log_text = proc.stdout.decode("utf-8", "replace")
        if proc.returncode != 0 or not os.path.isfile(wasm) or os.path.getsize(wasm) == 0:
            print("error: building %s failed after %.1fs; componentize-py said:" % (src, secs), file=err)
            for line in _clean_log(log_text).splitlines():
                print("  | " + line, file=err)
            where = _locate(log_text, stem, src)
            if where:
                print(where, file=err)
            return 1
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        shutil.move(wasm, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(out, "rb") as f:
        data = f.read()
    print("built %s" % out)
    print("  size:       %d bytes (%.1f MiB)" % (len(data), len(data) / 1048576))
    print("  sha256:     %s" % hashlib.sha256(data).hexdigest())
    print("  build time: %.1fs" % secs)
    print("  imports:")
    for name, _kind in _imports.imports_exports(data)[0]:
        print("    " + name)
    return 0
