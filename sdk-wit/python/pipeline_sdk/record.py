"""The `Record` a customer function receives and returns.

`Record.fields` is the record value parsed as a JSON object. It is parsed
lazily, on first access, so a function that only routes or filters on
`key`/`headers` never pays for JSON. When the record is produced, the value is:

* the original bytes, untouched, if `fields` was never accessed, or was only
  read (checked, so that even a mutation of a nested object the SDK could not
  see is never lost);
* `fields` re-encoded as compact JSON (`separators=(",", ":")`, UTF-8, no
  ASCII escaping) if it was changed;
* whatever was assigned to `record.value` if the function set raw bytes.

A Kafka tombstone (a null value, a delete in a compacted topic) has
`record.value is None` (WIT `pipeline:transform@0.2.0`, `option<list<u8>>`),
which is distinct from an empty value `b""`. Reading `record.fields` of a
tombstone raises `InvalidInput` (never `{}`), so a function that does not
expect tombstones refuses them loudly instead of producing `{}`. Setting
`record.value = None` (or returning `Record.tombstone(key=...)`) produces a
tombstone.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

__all__ = [
    "Record",
    "Headers",
    "Fields",
    "InvalidInput",
    "MissingField",
]

_COMPACT = (",", ":")

BytesLike = Union[bytes, bytearray, memoryview, str]


class InvalidInput(Exception):
    """The record itself is bad (not JSON, a field missing, a wrong type...).

    Raise it from a transform function to send the record to the dead-letter
    topic as `invalid-input` instead of `failed`::

        if not isinstance(record.fields.get("amount"), (int, float)):
            raise InvalidInput("field 'amount' must be a number")
    """


class MissingField(InvalidInput, KeyError):
    """`record.fields[name]` (or a nested object's `[name]`) does not exist.

    It is a `KeyError`, so `except KeyError:` in customer code still works; if
    it escapes the function, the record is refused as `invalid-input` with a
    message naming the field.
    """

    def __init__(self, field: Any):
        self.field = field
        super().__init__(field)

    def __str__(self) -> str:
        return "missing field %r" % (self.field,)


def _to_bytes(what: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(
        "%s must be bytes or str, not %s" % (what, type(value).__name__)
    )


# ---------------------------------------------------------------------------
# fields


class Fields(dict):
    """A JSON object (`dict`) that raises `MissingField` for a missing key and
    notes when it is changed in place.

    Every JSON object of the parsed value (nested ones too) is a `Fields`, so
    `record.fields["user"]["id"]` on a record without `user.id` names the
    missing field. It is a real `dict` subclass: `isinstance(x, dict)` holds
    and `json.dumps` accepts it.
    """

    __slots__ = ("_changed",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._changed = False

    def __missing__(self, key: Any) -> Any:
        raise MissingField(key)

    # -- writes mark the object changed (checked before re-encoding) --------
    def __setitem__(self, key: Any, value: Any) -> None:
        self._changed = True
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self._changed = True
        try:
            super().__delitem__(key)
        except KeyError:
            raise MissingField(key) from None

    def pop(self, *args: Any) -> Any:
        self._changed = True
        if len(args) == 1 and args[0] not in self:
            raise MissingField(args[0])
        return super().pop(*args)

    def popitem(self) -> Tuple[Any, Any]:
        self._changed = True
        return super().popitem()

    def clear(self) -> None:
        self._changed = True
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed = True
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._changed = True
        return super().setdefault(key, default)

    def __ior__(self, other: Any) -> "Fields":
        self._changed = True
        super().update(other)
        return self

    def copy(self) -> "Fields":
        return _deep_copy(self)

    def __copy__(self) -> "Fields":
        return Fields(self)

    def __deepcopy__(self, memo: Any) -> "Fields":
        return _deep_copy(self)

    def __reduce__(self) -> Any:
        return (Fields, (dict(self),))


def _deep_copy(value: Any) -> Any:
    """Copies a parsed JSON tree (dicts, lists and scalars)."""
    if isinstance(value, dict):
        return Fields((k, _deep_copy(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not allowed in JSON" % name)


# Built once: `json.loads`/`json.dumps` with keyword arguments build a new
# decoder or encoder (and its scanner) on every call, which was a third of
# the SDK's cost per record.
_DECODER = json.JSONDecoder(object_hook=Fields, parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(separators=_COMPACT, ensure_ascii=False, allow_nan=False)


def _parse_object(value: Optional[bytes]) -> Fields:
    if value is None:
        raise InvalidInput(
            "record value is null (a tombstone), not a JSON object; "
            "check `record.value is None` before reading record.fields"
        )
    if not value:
        raise InvalidInput(
            "record value is empty, not a JSON object; "
            "use record.value for non-JSON payloads"
        )
    try:
        if not isinstance(value, str):
            # What json.loads does for bytes (UTF-8, or UTF-16/32 by BOM or
            # NUL bytes); an object opening with two non-NUL bytes is UTF-8.
            if value[:1] == b"{" and value[1:2] not in (b"", b"\x00"):
                encoding = "utf-8"
            else:
                encoding = json.detect_encoding(value)
            value = value.decode(encoding, "surrogatepass")
        if value[:1] == "{":
            # `decode` minus its two whitespace regex matches.
            parsed, end = _DECODER.raw_decode(value)
            if end != len(value) and value[end:].strip(" \t\n\r"):
                raise json.JSONDecodeError("Extra data", value, end)
        else:
            parsed = _DECODER.decode(value)
    except UnicodeDecodeError as e:
        raise InvalidInput(
            "record value is not valid JSON: not UTF-8 text (%s)" % e.reason
        ) from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise InvalidInput("record value is not valid JSON: %s" % e) from None
    except RecursionError:
        raise InvalidInput(
            "record value is not valid JSON here: nested too deeply"
        ) from None
    if not isinstance(parsed, Fields):
        raise InvalidInput(
            "record value is JSON but not an object (it is a JSON %s); "
            "use record.value for other payloads" % _json_kind(parsed)
        )
    return parsed


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


class EncodeError(Exception):
    """`record.fields` holds something JSON cannot represent."""


def _encode(fields: Any) -> bytes:
    try:
        return _ENCODER.encode(fields).encode("utf-8")
    except (TypeError, ValueError) as e:
        msg = str(e)
        if "Out of range float" in msg:
            msg = "NaN and Infinity cannot be encoded as JSON"
        raise EncodeError("record.fields cannot be encoded as JSON: %s" % msg) from None
    except RecursionError:
        raise EncodeError(
            "record.fields cannot be encoded as JSON: nested too deeply "
            "(or it contains itself)"
        ) from None


# ---------------------------------------------------------------------------
# headers


class Headers:
    """Kafka headers: an ordered list of `(key: str, value: bytes)` pairs that
    may repeat a key, with mapping-style helpers.

    * `for key, value in record.headers: ...` iterates the pairs in order;
    * `record.headers["trace-id"]` / `.get("trace-id")` give the *last* value
      for a key (`KeyError` / `None` if absent), `.get_all(key)` every value;
    * `record.headers["x"] = "v"` replaces every `x` with one header,
      `.add("x", b"v")` appends one, `del record.headers["x"]` removes all;
    * values may be given as `bytes` or `str` (UTF-8 encoded) or `None`
      (Kafka's null header value, which arrives as `b""`).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Any = None):
        self._items: List[Tuple[str, bytes]] = []
        if items is None:
            return
        if isinstance(items, Headers):
            self._items = list(items._items)
            return
        if isinstance(items, dict):
            items = items.items()
        for pair in items:
            try:
                key, value = pair
            except (TypeError, ValueError):
                raise TypeError(
                    "headers must be (key, value) pairs, got %r" % (pair,)
                ) from None
            self.add(key, value)

    @staticmethod
    def _check(key: Any, value: Any) -> Tuple[str, bytes]:
        if not isinstance(key, str):
            raise TypeError("header key must be str, not %s" % type(key).__name__)
        if value is None:
            return key, b""
        return key, _to_bytes("header %r value" % key, value)

    def add(self, key: str, value: Optional[BytesLike]) -> None:
        self._items.append(self._check(key, value))

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in reversed(self._items):
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> List[bytes]:
        return [v for k, v in self._items if k == key]

    def keys(self) -> List[str]:
        return [k for k, _ in self._items]

    def items(self) -> List[Tuple[str, bytes]]:
        return list(self._items)

    def remove(self, key: str) -> None:
        self._items = [(k, v) for k, v in self._items if k != key]

    def __getitem__(self, key: Union[str, int]) -> Any:
        if isinstance(key, int):
            return self._items[key]
        for k, v in reversed(self._items):
            if k == key:
                return v
        raise KeyError(key)

    def __setitem__(self, key: str, value: Optional[BytesLike]) -> None:
        pair = self._check(key, value)
        self.remove(key)
        self._items.append(pair)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.remove(key)

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._items)

    def __iter__(self) -> Iterator[Tuple[str, bytes]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._items == other._items
        if isinstance(other, (list, tuple)):
            return self._items == [tuple(p) for p in other]
        return NotImplemented

    def __repr__(self) -> str:
        return "Headers(%r)" % (self._items,)


# ---------------------------------------------------------------------------
# record

_UNSET = object()


class Record:
    """One Kafka record, as consumed and as it will be produced.

    Input metadata (read-only): `topic`, `partition`, `offset`.
    Kept on output unless changed: `key` (bytes or None), `headers`
    (`Headers`), `timestamp` (ms since the epoch, or None).
    Payload: `fields` (the value as a JSON object, parsed lazily) or `value`
    (the raw bytes, or None for a tombstone; assigning it replaces the payload
    and discards `fields`).
    Routing: `record.to("topic")` sets the output topic and returns the record.
    """

    __slots__ = (
        "_key",
        "_headers",
        "_timestamp",
        "_value",
        "_fields",
        "_fields_replaced",
        "_output_topic",
        "topic",
        "partition",
        "offset",
    )

    def __init__(
        self,
        value: Optional[BytesLike] = b"",
        *,
        key: Optional[BytesLike] = None,
        headers: Any = None,
        timestamp: Optional[int] = None,
        fields: Optional[dict] = None,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
    ):
        self._value = None if value is None else _to_bytes("record value", value)
        self._fields: Optional[Fields] = None
        self._fields_replaced = False
        self._output_topic: Optional[str] = None
        self.key = key
        self.headers = headers
        self.timestamp = timestamp
        self.topic = topic
        self.partition = partition
        self.offset = offset
        if fields is not None:
            self.fields = fields

    @classmethod
    def from_fields(cls, fields: dict, **kwargs: Any) -> "Record":
        """A new record whose value is `fields` encoded as JSON."""
        return cls(fields=fields, **kwargs)

    @classmethod
    def tombstone(cls, **kwargs: Any) -> "Record":
        """A new tombstone (null value), e.g. `Record.tombstone(key=record.key)`
        to delete a key downstream in a compacted topic."""
        return cls(None, **kwargs)

    @classmethod
    def _from_input(
        cls,
        key: Optional[bytes],
        value: Optional[bytes],
        headers: List[Tuple[str, bytes]],
        topic: str,
        partition: int,
        offset: int,
        timestamp: Optional[int],
    ) -> "Record":
        self = cls.__new__(cls)
        self._key = key
        self._value = value
        self._fields = None
        self._fields_replaced = False
        self._output_topic = None
        h = Headers.__new__(Headers)
        h._items = headers
        self._headers = h
        self._timestamp = timestamp
        self.topic = topic
        self.partition = partition
        self.offset = offset
        return self

    # -- key / headers / timestamp ----------------------------------------
    @property
    def key(self) -> Optional[bytes]:
        return self._key

    @key.setter
    def key(self, key: Optional[BytesLike]) -> None:
        self._key = None if key is None else _to_bytes("record key", key)

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, headers: Any) -> None:
        self._headers = Headers(headers)

    @property
    def timestamp(self) -> Optional[int]:
        return self._timestamp

    @timestamp.setter
    def timestamp(self, timestamp: Optional[int]) -> None:
        if timestamp is not None:
            if isinstance(timestamp, bool) or not isinstance(timestamp, int):
                raise TypeError(
                    "record timestamp must be int milliseconds or None, not %s"
                    % type(timestamp).__name__
                )
        self._timestamp = timestamp

    # -- payload -------------------------------------------------------------
    @property
    def fields(self) -> Fields:
        """The value as a JSON object (a `dict`), parsed on first access.

        Raises `InvalidInput` (the record goes to the dead-letter topic as
        `invalid-input`) if the value is not a JSON object, or is null (a
        tombstone: check `record.value is None` first).
        """
        f = self._fields
        if f is None:
            f = self._fields = _parse_object(self._value)
        return f

    @fields.setter
    def fields(self, fields: dict) -> None:
        if not isinstance(fields, dict):
            raise TypeError(
                "record.fields must be a dict, not %s" % type(fields).__name__
            )
        self._fields = fields if isinstance(fields, Fields) else Fields(fields)
        self._fields_replaced = True

    @property
    def value(self) -> Optional[bytes]:
        """The payload bytes; if `fields` was changed, its JSON encoding;
        None for a tombstone (a null value, distinct from `b""`)."""
        return self._output_value()

    @value.setter
    def value(self, value: Optional[BytesLike]) -> None:
        """Raw bytes (str is UTF-8 encoded), or None to produce a tombstone."""
        self._value = None if value is None else _to_bytes("record value", value)
        self._fields = None
        self._fields_replaced = False

    @property
    def is_tombstone(self) -> bool:
        """True if the value is null (`record.value is None`)."""
        return self._fields is None and self._value is None

    def _output_value(self) -> Optional[bytes]:
        f = self._fields
        if f is None:
            return self._value
        if self._fields_replaced or f._changed:
            return _encode(f)
        # Only read as far as the SDK could see; a nested object or list may
        # still have been changed in place (or via a copy sharing it), so
        # compare against the original before deciding to pass it through.
        new = _encode(f)
        if self._value is not None and new == _encode(json.loads(self._value)):
            return self._value
        return new

    # -- routing ---------------------------------------------------------------
    def to(self, topic: str) -> "Record":
        """Routes this record to output topic `topic` and returns it.

        The topic must be one of the pipeline's declared output topics (else
        the input goes to the dead-letter topic). To send the same input to
        several topics, route copies: `[record, record.copy().to("audit")]`.
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError("record.to() needs a non-empty topic name (str)")
        self._output_topic = topic
        return self

    @property
    def output_topic(self) -> Optional[str]:
        """The topic set by `to()`, or None for the pipeline's default."""
        return self._output_topic

    def copy(self) -> "Record":
        """An independent copy (fields deep-copied), e.g. for fan-out."""
        r = Record.__new__(Record)
        r._key = self._key
        r._headers = Headers(self._headers)
        r._timestamp = self._timestamp
        r._value = self._value
        r._fields = None if self._fields is None else _deep_copy(self._fields)
        if r._fields is not None and self._fields._changed:
            r._fields._changed = True
        r._fields_replaced = self._fields_replaced
        r._output_topic = self._output_topic
        r.topic = self.topic
        r.partition = self.partition
        r.offset = self.offset
        return r

    def __repr__(self) -> str:
        if self._fields is not None:
            payload = "fields=%r" % (self._fields,)
        elif self._value is None:
            payload = "value=None (tombstone)"
        else:
            v = self._value
            payload = "value=%r" % (v if len(v) <= 200 else v[:200] + b"...",)
        return "Record(%s, key=%r, topic=%r, partition=%r, offset=%r%s)" % (
            payload,
            self._key,
            self.topic,
            self.partition,
            self.offset,
            "" if self._output_topic is None else ", to=%r" % self._output_topic,
        )
