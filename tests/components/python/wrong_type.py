"""Returns an int: each record must be refused as `failed` with a message
naming the type returned (int)."""

from pipeline_sdk import Record, transform


@transform
def wrong_type(record: Record):
    return 42
