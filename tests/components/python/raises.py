"""Raises on every record: each one must be refused as `failed` with
"ValueError: bad amount" (plus the location raises.py:LINE)."""

from pipeline_sdk import Record, transform


@transform
def raises(record: Record) -> Record:
    raise ValueError("bad amount")
