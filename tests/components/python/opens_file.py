"""Tries to read /etc/passwd. The worker grants no filesystem (no preopened
directories), so open() must fail; the error is returned inside the record:
{"opened": false, "error": "<ExceptionType>: <message>"}. If the file could be
read, the record says {"opened": true, "first_line": ...}: a sandbox escape
the host tests must flag."""

from pipeline_sdk import Record, transform


@transform
def opens_file(record: Record) -> Record:
    try:
        with open("/etc/passwd") as f:
            first = f.readline().strip()
    except Exception as e:  # expected: the sandbox has no filesystem
        record.fields = {"opened": False, "error": "%s: %s" % (type(e).__name__, e)}
    else:
        record.fields = {"opened": True, "first_line": first}
    return record
