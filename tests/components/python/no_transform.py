"""No @transform function: the build must fail, saying so."""

from pipeline_sdk import Record


def forgot_the_decorator(record: Record) -> Record:
    return record
