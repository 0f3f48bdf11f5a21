"""The compiled encoders, when they are built and not switched off (``_compat``),
and the one place where a batch they leave to the Python encoders goes to them.

The switch is read at each call, so a test may flip ``_compat.USE_EXTENSIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Generic, TypeVar

from ... import _compat
from ...errors import LeftToPython
from ...model import SpanRecord
from .wire import JoinedBody

Body = TypeVar("Body")
Encode = Callable[[Sequence[SpanRecord]], Body]


def batch_json() -> tuple[ModuleType | None, str | None]:
    """The compiled Honeycomb/OTLP body encoders (``_batch_json``) or None, and why not."""
    if not _compat.USE_EXTENSIONS:
        return None, _compat.DISABLED_REASON
    try:
        from ... import _batch_json
    except ImportError as exc:
        return None, str(exc)
    return _batch_json, None


def zipkin_proto() -> tuple[ModuleType | None, str | None]:
    """The compiled Zipkin protobuf encoder (``_zipkin_proto``) or None, and why not."""
    if not _compat.USE_EXTENSIONS:
        return None, _compat.DISABLED_REASON
    try:
        from ... import _zipkin_proto
    except ImportError as exc:
        return None, str(exc)
    return _zipkin_proto, None


class CompiledFirst(Generic[Body]):
    """A body encoder that writes with its compiled encoder when there is one, and with
    its Python encoder (the reference) a batch the compiled one raises LeftToPython
    for. Only the Python encoder's exceptions mean a span cannot be encoded."""

    def __init__(self, compiled: Encode[Body] | None, python: Encode[Body], load_error: str | None) -> None:
        self.compiled_encode = compiled
        self.python_encode = python
        self.implementation = "c" if compiled is not None else "py"
        self.load_error = load_error  # why not compiled (None when it is)

    def encode(self, spans: Sequence[SpanRecord]) -> Body:
        if self.compiled_encode is not None:
            try:
                return self.compiled_encode(spans)
            except LeftToPython:
                pass
        return self.python_encode(spans)


def joined_bodies(encoder: Any, head_len: int, tail_len: int) -> Encode[JoinedBody]:
    """``encoder.encode`` (a ``_batch_json`` encoder's: body and item ends) as JoinedBody."""

    def encode(spans: Sequence[SpanRecord]) -> JoinedBody:
        body, ends = encoder.encode(spans)
        return JoinedBody(body, ends, head_len, tail_len)

    return encode
