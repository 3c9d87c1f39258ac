"""Sleeps for an hour on a record whose value is `sleep`, echoes any other.
`time.sleep` blocks in the host (wasi:clocks subscribe-duration + poll), where
no wasm runs: the worker must still stop it at the record's deadline with kind
`deadline`, and the next record (any other value) must come through."""

import time

from pipeline_sdk import Record, transform


@transform
def sleeps(record: Record) -> Record:
    if record.value == b"sleep":
        time.sleep(3600)
    return record
