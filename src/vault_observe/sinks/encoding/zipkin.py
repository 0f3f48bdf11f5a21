"""Zipkin bodies: JSON v2 (``JsonEncoder``) and the choice of the protobuf
``ListOfSpans`` encoder (compiled ``_zipkin_proto`` or its reference ``zipkin_proto``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from ...model import SpanRecord
from . import compiled, zipkin_proto
from .zipkin_proto import build_tags, loads_attrs, scope_tags

_U64 = 1 << 64


class ZipkinBodyEncoder(Protocol):
    """What the Zipkin sink encodes with: a body of spans, or of one span."""

    content_type: str

    def encode(self, spans: Sequence[SpanRecord]) -> bytes: ...

    def encode_span(self, span: SpanRecord) -> bytes: ...


EncoderFactory = Callable[[str, str, str], ZipkinBodyEncoder]  # (service name, scope name, version)


def proto_encoder_class() -> tuple[EncoderFactory, str | None]:
    """The compiled encoder when it is built, else the pure-Python one, and why."""
    module, load_error = compiled.zipkin_proto()
    if module is None:
        return zipkin_proto.ProtoEncoder, load_error
    factory: EncoderFactory = module.ProtoEncoder
    return factory, None


class JsonEncoder:
    """Zipkin JSON v2: the SDK JSON exporter's span shape with the protobuf's content
    (all tags, untruncated; a zero duration left out, as the Zipkin API asks)."""

    implementation = "py"
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
        return orjson.dumps([self._span(span) for span in spans])

    def encode_span(self, span: SpanRecord) -> bytes:
        return orjson.dumps(self._span(span))


def merge_bodies(content_type: str, bodies: list[bytes]) -> bytes:
    """One body of the spans of several (consecutive runs of one batch)."""
    if content_type == "application/json":  # arrays: their items joined
        return b"[" + b",".join(body[1:-1] for body in bodies if len(body) > 2) + b"]"
    return b"".join(bodies)  # ListOfSpans: a repeated field, so bodies concatenate
