"""Two @transform functions: the build must fail, saying so."""

from pipeline_sdk import Record, transform


@transform
def first(record: Record) -> Record:
    return record


@transform
def second(record: Record) -> Record:
    return record
