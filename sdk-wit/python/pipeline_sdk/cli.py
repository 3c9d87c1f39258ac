"""The `pipeline-sdk` command (also `python -m pipeline_sdk`)."""

from __future__ import annotations

import argparse
import os
import sys

from . import WIT_PACKAGE, __version__


def main(argv=None):
    from . import _build

    argv = sys.argv[1:] if argv is None else argv
    # These take their arguments as they always did (flags anywhere).
    if argv[:1] == ["run"]:
        from . import _local

        return _local.main(argv[1:])
    if argv[:1] == ["imports"]:
        from . import _imports

        return _imports.main(argv[1:])
    p = argparse.ArgumentParser(
        prog="pipeline-sdk",
        description="Build and run pipeline-worker functions written in Python (WIT %s)." % WIT_PACKAGE,
    )
    p.add_argument(
        "--version", action="version",
        version="pipeline-sdk %s (WIT %s, componentize-py %s)"
        % (__version__, WIT_PACKAGE, _build.componentize_py_version() or "not installed"),
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build SRC.py into a WebAssembly component")
    b.add_argument("src", metavar="SRC.py")
    b.add_argument("-o", "--out", metavar="OUT.wasm", help="default: SRC with .wasm")
    b.add_argument(
        "-p", "--python-path", action="append", default=[], metavar="DIR",
        help="a directory of pure-Python dependencies to bundle (repeatable; also PIPELINE_PYTHON_PATH=dir1:dir2)",
    )
    b.add_argument(
        "--stub-wasi", action="store_true", default=os.environ.get("PIPELINE_STUB_WASI") == "1",
        help="replace every WASI import by a trapping stub (also PIPELINE_STUB_WASI=1)",
    )
    b.add_argument(
        "--skip-precheck", action="store_true", default=os.environ.get("PIPELINE_SKIP_PRECHECK") == "1",
        help="skip the quick static check (also PIPELINE_SKIP_PRECHECK=1)",
    )
    sub.add_parser("run", help="SRC.py [INPUT.jsonl] [--verbose] [--tombstone=LINE]: run the function natively on a JSONL file (one record value a line)")
    c = sub.add_parser("check", help="the quick static check of SRC.py (no code run)")
    c.add_argument("src", metavar="SRC.py")
    sub.add_parser("imports", help="[--imports] OUT.wasm: list a component's imports and exports")
    args = p.parse_args(argv)

    if args.command == "build":
        extra = [d for d in os.environ.get("PIPELINE_PYTHON_PATH", "").split(":") if d]
        out = args.out or os.path.splitext(args.src)[0] + ".wasm"
        return _build.build(
            args.src, out, python_path=args.python_path + extra,
            stub_wasi=args.stub_wasi, precheck=not args.skip_precheck,
        )
    from . import _precheck

    return _precheck.main([args.src])


if __name__ == "__main__":
    sys.exit(main())
