"""Keeps state between records, to prove a fresh instance starts clean.

Every record's key and value are appended to module-level state (a list and a
dict, so CPython's heap and its static objects are both written), and the
output says what the instance had seen before this record:

    {"calls": <records this instance served, this one included>,
     "seen_before": [<keys of earlier records, oldest first>],
     "secret_before": <value of the previous record, or null>}

With a fresh instance per record (`instance_max_records = 1`) every output
must be `{"calls": 1, "seen_before": [], "secret_before": null}`; with kept
instances the counts grow, which shows the test can tell the two apart.
"""

import json

from pipeline_sdk import transform, Record

_SEEN = []
_STATE = {"calls": 0, "last_value": None}


@transform
def stateful(record: Record) -> Record:
    _STATE["calls"] += 1
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    value = record.value.decode("utf-8", "replace") if record.value is not None else None
    out = {
        "calls": _STATE["calls"],
        "seen_before": list(_SEEN),
        "secret_before": _STATE["last_value"],
    }
    _SEEN.append(key)
    _STATE["last_value"] = value
    record.value = json.dumps(out).encode()
    return record
