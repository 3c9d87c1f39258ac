"""Runs a customer function on plain CPython, without building a component.

    pipeline-sdk run CUSTOMER.py [INPUT.jsonl] [--verbose] [--tombstone=LINE]

Each input line is one record value (bytes as written; blank lines skipped).
With --tombstone=LINE, an input line equal to LINE is sent as a tombstone
(a null value, `record.value is None`), e.g. --tombstone='<tombstone>'.
Prints the value of each output record, one a line, in order (so the output
of a sample file can be diffed against its expected.jsonl); filtered records
print nothing; a tombstone output prints `<tombstone>` (no JSON line starts
with `<`, so it cannot be mistaken for a value). Errors go to stderr as `line N: invalid-input: ...` /
`line N: failed: ...`; the exit status is 1 if any record was refused.
With --verbose, each output line is prefixed by its topic, key and headers.

This goes through the same code path as the component (pipeline_sdk._runtime)
but on the host's CPython, which may differ in version from the CPython
inside the component (3.14 with componentize-py 0.25.1).
"""

import os
import sys


def main(argv):
    verbose = "--verbose" in argv
    tombstone = None
    for a in argv:
        if a.startswith("--tombstone="):
            tombstone = a[len("--tombstone="):].encode("utf-8")
    args = [a for a in argv if a != "--verbose" and not a.startswith("--tombstone=")]
    if not args or len(args) > 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src = os.path.abspath(args[0])
    sys.path.insert(0, os.path.dirname(src))
    from . import _runtime
    from ._native import InputRecord, Ok

    _runtime.load(os.path.basename(src)[:-3])
    data = open(args[1], "rb").read() if len(args) == 2 else sys.stdin.buffer.read()
    refused = 0
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        value = None if tombstone is not None and line.rstrip(b"\r") == tombstone else line
        inp = InputRecord(
            key=b"key-%d" % n, value=value, headers=[], topic="input",
            partition=0, offset=n - 1, timestamp=None,
        )
        result = _runtime._run(inp)
        if isinstance(result, Ok):
            for out in result.value:
                if verbose:
                    sys.stdout.write("[topic=%s key=%r headers=%r] " % (
                        out.topic, out.key, [(h.key, h.value) for h in out.headers]))
                if out.value is None:
                    sys.stdout.write("<tombstone>\n")
                else:
                    sys.stdout.write(out.value.decode("utf-8", "replace") + "\n")
        else:
            refused += 1
            kind = "invalid-input" if type(result.value).__name__.endswith("InvalidInput") else "failed"
            print("line %d: %s: %s" % (n, kind, result.value.value), file=sys.stderr)
    return 1 if refused else 0

