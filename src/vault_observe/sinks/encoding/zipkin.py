"""Zipkin bodies: the protobuf ``ListOfSpans`` (``ProtoBodyEncoder``: the compiled
``_zipkin_proto`` or its reference ``zipkin_proto``) and JSON v2 (``JsonEncoder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ...model import SpanRecord
from . import zipkin_proto
from .compiled import CompiledFirst
from .compiled import zipkin_proto as compiled_zipkin_proto
from .zipkin_proto import build_tags, loads_attrs, scope_tags

_U64 = 1 << 64


class ZipkinBodyEncoder(Protocol):
    """What the Zipkin sink encodes with."""

    content_type: str
    implementation: str  # "c" or "py"
    load_error: str | None  # why not "c"

    def encode(self, spans: Sequence[SpanRecord]) -> bytes: ...


class ProtoBodyEncoder(CompiledFirst[bytes]):
    """The ``ListOfSpans`` protobuf body, written by the compiled ``_zipkin_proto`` when
    it is built and allowed, else by ``zipkin_proto.ProtoEncoder``, whose bytes it matches."""

    content_type = zipkin_proto.CONTENT_TYPE

    def __init__(self, service_name: str, scope_name: str, scope_version: str, compiled: bool = True) -> None:
        python = zipkin_proto.ProtoEncoder(service_name, scope_name, scope_version)
        module, load_error = compiled_zipkin_proto() if compiled else (None, "not asked for")
        fast = module.ProtoEncoder(service_name, scope_name, scope_version) if module is not None else None
        super().__init__(fast.encode if fast is not None else None, python.encode, load_error)


class JsonEncoder:
    """Zipkin JSON v2: the SDK JSON exporter's span shape with the protobuf's content
    (all tags, untruncated; a zero duration left out, as the Zipkin API asks)."""

    implementation = "py"
    load_error: str | None = None
    content_type = "application/json"

    def __init__(self, service_name: str, scope_name: str, scope_version: str) -> None:
        self._endpoint = {"serviceName": service_name}
        self._tail = scope_tags(service_name, scope_name, scope_version)

    def _span(self, span: SpanRecord) -> dict[str, Any]:
        timestamp = (span.start_ns + 500) // 1000
        duration = (span.end_ns - span.start_ns + 500) // 1000
        if not 0 <= timestamp < _U64 or not 0 <= duration < _U64 or len(span.trace_id) != 16:
            raise ValueError("span time or trace id out of range")
        out: dict[str, Any] = {"traceId": span.trace_id.hex(), "id": f"{span.span_id:016x}"}
        if span.parent_span_id:
            out["parentId"] = f"{span.parent_span_id:016x}"
        out["kind"] = "SERVER"
        out["name"] = span.name
        if timestamp:
            out["timestamp"] = timestamp
        if duration:
            out["duration"] = duration
        out["localEndpoint"] = self._endpoint
        out["tags"] = build_tags(loads_attrs(span.attrs_json), self._tail, span.error)
        out["debug"] = True
        return out

    def encode(self, spans: Sequence[SpanRecord]) -> bytes:
        import orjson  # here, not at start-up (~4 ms): the protobuf encoder does not use it

        return orjson.dumps([self._span(span) for span in spans])


def merge_bodies(content_type: str, bodies: list[bytes]) -> bytes:
    """One body of the spans of several (consecutive runs of one batch)."""
    if content_type == "application/json":  # arrays: their items joined
        return b"[" + b",".join(body[1:-1] for body in bodies if len(body) > 2) + b"]"
    return b"".join(bodies)  # ListOfSpans: a repeated field, so bodies concatenate
