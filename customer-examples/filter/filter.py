"""Drops heartbeat events; every other record passes through unchanged."""

from pipeline_sdk import Record, transform


@transform
def filter_heartbeats(record: Record):
    if record.fields.get("event_type") == "heartbeat":
        return None  # filtered: no output record
    return record
