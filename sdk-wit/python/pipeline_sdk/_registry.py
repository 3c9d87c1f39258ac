"""The `@transform` decorator and the one-function-per-module rule."""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["transform", "TransformDefinitionError"]


class TransformDefinitionError(Exception):
    """The customer module does not define exactly one valid `@transform`.

    Raised while the module is imported, which componentize-py does at build
    time (pre-initialisation), so the build fails with this message.
    """


# (function, "file:line") of each registered function; at most one.
_registered: List[Tuple[Callable[..., Any], str]] = []


def _where(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return "?"
    return "%s:%d" % (os.path.basename(code.co_filename), code.co_firstlineno)


def transform(fn: Optional[Callable[..., Any]] = None) -> Any:
    """Marks the function that transforms each record.

        @transform
        def my_function(record: Record) -> Record | list[Record] | None: ...

    The function receives a `Record` and returns the record (one output),
    `None` (drop it), a list/tuple of records (fan-out; a generator that
    yields records works too). A module must define exactly one. The function
    is returned unchanged, so it can be called directly in unit tests.
    """
    if fn is None:  # @transform()
        return transform
    if not callable(fn):
        raise TransformDefinitionError(
            "@transform must decorate a function, not %s" % type(fn).__name__
        )
    name = getattr(fn, "__qualname__", repr(fn))
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TransformDefinitionError(
            "@transform function '%s' (%s) is async; transform functions must "
            "be plain (synchronous) functions" % (name, _where(fn))
        )
    try:
        inspect.signature(fn).bind(object())
    except TypeError:
        raise TransformDefinitionError(
            "@transform function '%s' (%s) must accept exactly one argument, "
            "the Record" % (name, _where(fn))
        ) from None
    except ValueError:  # no signature available (builtins): let it be
        pass
    if _registered:
        prev, prev_where = _registered[0]
        raise TransformDefinitionError(
            "more than one @transform function: '%s' (%s) and '%s' (%s); a "
            "module must define exactly one @transform function"
            % (getattr(prev, "__qualname__", prev), prev_where, name, _where(fn))
        )
    _registered.append((fn, _where(fn)))
    return fn


def registered() -> Optional[Callable[..., Any]]:
    return _registered[0][0] if _registered else None


def _reset() -> None:
    """Forgets the registered function (for tests)."""
    del _registered[:]
