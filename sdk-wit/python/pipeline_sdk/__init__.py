"""pipeline_sdk: write a pipeline-worker transform function in Python.

    from pipeline_sdk import transform, Record

    @transform
    def enrich(record: Record) -> Record:
        record.fields["seen"] = True
        return record

Build it into a WebAssembly component (WIT world
`pipeline:transform/transform-batch@0.2.0`) with `scripts/build-python.sh`.
See sdk-wit/python/README.md.
"""

from . import log
from ._registry import TransformDefinitionError, transform
from .record import Fields, Headers, InvalidInput, MissingField, Record

__version__ = "0.2.0"
# The WIT package this SDK targets.
WIT_PACKAGE = "pipeline:transform@0.2.0"

__all__ = [
    "transform",
    "Record",
    "Headers",
    "Fields",
    "InvalidInput",
    "MissingField",
    "TransformDefinitionError",
    "log",
]
