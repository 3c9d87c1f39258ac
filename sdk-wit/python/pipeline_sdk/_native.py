"""Stand-ins for the componentize-py generated types, used when the SDK runs
on plain CPython (unit tests, tools/run_local.py). Same shapes as
`wit_world.imports.types` and `componentize_py_types` generate for
sdk-wit/wit/transform.wit."""

from dataclasses import dataclass
from typing import Any, Generic, List, Optional, TypeVar, Union

T = TypeVar("T")
E = TypeVar("E")


@dataclass
class Ok(Generic[T]):
    value: T


@dataclass(frozen=True)
class Err(Generic[E], Exception):
    value: E


@dataclass
class Header:
    key: str
    value: bytes


@dataclass
class InputRecord:
    key: Optional[bytes]
    # None is a tombstone (WIT 0.2.0 `option<list<u8>>`).
    value: Optional[bytes]
    headers: List[Header]
    topic: str
    partition: int
    offset: int
    timestamp: Optional[int]


@dataclass
class OutputRecord:
    key: Optional[bytes]
    # None produces a tombstone.
    value: Optional[bytes]
    headers: List[Header]
    topic: Optional[str]
    timestamp: Optional[int]


@dataclass
class TransformError_InvalidInput:
    value: str


@dataclass
class TransformError_Failed:
    value: str


TransformError = Union[TransformError_InvalidInput, TransformError_Failed]
