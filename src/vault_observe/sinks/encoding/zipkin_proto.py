"""Zipkin ``ListOfSpans`` protobuf encoder in pure Python.

The fallback of the compiled ``vault_observe._zipkin_proto`` (same API, same bytes).
Both produce what ``opentelemetry-exporter-zipkin-proto-http`` serializes for the
same span built as a ``ReadableSpan`` (kind SERVER, sampled, the sink's resource and
scope, status ERROR with the entry's error), without its per-span Python objects:

* fields in field-number order, proto3 defaults (0, empty string) left out, so a
  zero duration or an empty name is absent (but a ``tags`` entry always holds both
  its key and its value, even empty ones); ``debug`` is true (a sampled span);
* tags in the order the exporter's dict gets them: the attributes in document
  order, then ``service.name``, ``otel.library.name``/``version``,
  ``otel.scope.name``/``version``, and for an error span ``otel.status_code`` =
  ``ERROR`` and ``error``. One of these later keys that is also an attribute keeps
  the attribute's place and takes the later value (``dict.update``);
* attribute values as the exporter turns them into text: strings as they are,
  booleans ``true``/``false``, numbers ``str()``, arrays their compact JSON text
  (the sink passes arrays to the SDK as that text, so nothing is lost); nulls and
  objects are skipped, as the exporter skips them.

``attrs_json`` is canonical (``_core_py.dump_attrs``), so the JSON text of a number
or an array equals what ``str()``/``json.dumps`` give for the decoded value.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..._core_py import attr_members
from ...model import SpanRecord

CONTENT_TYPE = "application/x-protobuf"
KIND_SERVER = 2
_U64 = 1 << 64

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _small_varints() -> list[bytes]:
    """Every one- and two-byte varint, made on first use (not at import)."""
    return [bytes((i,)) for i in range(0x80)] + [bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(0x80, 1 << 14)]


def varint(value: int) -> bytes:
    return _small_varints()[value] if value < 16384 else _varint(value)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + varint(len(payload)) + payload


def loads_attrs(attrs_json: bytes) -> dict[str, Any]:
    """The attributes decoded, for ``build_tags``. A value nested deeper than json
    reads (about 990 levels; the cores accept up to 1,023) comes as its tag text: an
    array is tagged with its JSON text anyway, which is its bytes in canonical
    attributes."""
    # json, not orjson: orjson reads an integer past 64 bits as a float
    try:
        attrs = json.loads(attrs_json)
    except RecursionError:
        return _loads_deep(attrs_json)
    if not isinstance(attrs, dict):
        raise ValueError("attrs_json is not a JSON object")
    return attrs


def _loads_deep(attrs_json: bytes) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, raw in attr_members(attrs_json):
        if raw[:1] == b"[":
            attrs[key] = raw.decode("utf-8", "surrogatepass")
        elif raw[:1] == b"{":
            attrs[key] = None  # no tag, as for a decoded object
        else:
            attrs[key] = json.loads(raw)
    return attrs


def tag_text(value: Any) -> str | None:
    """A decoded attribute value as the Zipkin exporter's tag text (None: no tag)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return _dumps(value)
    return None


def scope_tags(service_name: str, scope_name: str, scope_version: str) -> dict[str, str]:
    """The tags every span gets after its attributes: the resource's and the scope's."""
    return {
        "service.name": service_name,
        "otel.library.name": scope_name,
        "otel.library.version": scope_version,
        "otel.scope.name": scope_name,
        "otel.scope.version": scope_version,
    }


def wrap_spans(encoded: Iterable[bytes]) -> bytes:
    """``ListOfSpans`` from ``Span`` messages encoded one by one."""
    return b"".join(_len_field(0x0A, span) for span in encoded)


class ProtoEncoder:
    """Encode SpanRecords as a Zipkin ``ListOfSpans`` (protobuf, v2)."""

    implementation = "py"
    content_type = CONTENT_TYPE

    def __init__(self, service_name: str, scope_name: str, scope_version: str) -> None:
        self.service_name = service_name
        self.scope_name = scope_name
        self.scope_version = scope_version
        name = service_name.encode()
        self._endpoint = _len_field(0x42, _len_field(0x0A, name) if name else b"")
        self._tail = scope_tags(service_name, scope_name, scope_version)

    def encode(self, spans: Sequence[SpanRecord]) -> bytes:
        """The ``ListOfSpans`` message for ``spans``; ValueError (or another
        exception) if one of them cannot be encoded."""
        return wrap_spans(self.encode_span(span) for span in spans)

    def encode_span(self, span: SpanRecord) -> bytes:
        """One ``Span`` message."""
        trace_id = span.trace_id
        if not isinstance(trace_id, bytes) or len(trace_id) != 16:
            raise ValueError("trace_id must be 16 bytes")
        timestamp = (span.start_ns + 500) // 1000
        duration = (span.end_ns - span.start_ns + 500) // 1000
        if not 0 <= timestamp < _U64 or not 0 <= duration < _U64:
            raise ValueError("span time out of range")
        out = bytearray(b"\x0a\x10")
        out += trace_id
        if span.parent_span_id:
            out += b"\x12\x08" + span.parent_span_id.to_bytes(8, "big")
        out += b"\x1a\x08" + span.span_id.to_bytes(8, "big")
        out += b"\x20" + bytes((KIND_SERVER,))
        name = span.name.encode()
        if name:
            out += _len_field(0x2A, name)
        if timestamp:
            out += b"\x31" + timestamp.to_bytes(8, "little")
        if duration:
            out += b"\x38" + varint(duration)
        out += self._endpoint
        parts: list[bytes] = [bytes(out)]
        add = parts.extend
        for key, value in self.tags(span).items():
            # a map entry carries its key and value even when empty (unlike a field)
            k = key.encode()
            v = value.encode()
            kv = varint(len(k))
            vv = varint(len(v))
            size = 2 + len(kv) + len(k) + len(vv) + len(v)
            add((b"\x5a", varint(size), b"\x0a", kv, k, b"\x12", vv, v))
        parts.append(b"\x60\x01")
        return b"".join(parts)

    def tags(self, span: SpanRecord) -> dict[str, str]:
        """The span's tags, in wire order."""
        return build_tags(loads_attrs(span.attrs_json), self._tail, span.error)


def build_tags(attrs: dict[str, Any], tail: dict[str, str], error: str) -> dict[str, str]:
    """Tags as the exporter builds them: attributes, then ``tail`` (resource and
    scope), then the error status."""
    tags: dict[str, str] = {}
    for key, value in attrs.items():
        if type(value) is str:
            tags[key] = value
        else:
            text = tag_text(value)
            if text is not None:
                tags[key] = text
    tags.update(tail)
    if error:
        tags["otel.status_code"] = "ERROR"
        tags["error"] = error
    return tags
