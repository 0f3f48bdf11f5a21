"""The OTLP/HTTP JSON ``ExportTraceServiceRequest``, written by hand: the reference
the compiled ``_batch_json.OtlpEncoder`` matches byte for byte, and its fallback.

One resource (``service.name``), one scope (``vault-observe``), one span per record
with kind SERVER, times as decimal strings, ids as hex, and each flattened attribute
as an ``AnyValue`` that keeps its JSON type: strings, 64-bit integers (as decimal
strings, per the mapping), doubles, booleans, arrays as ``arrayValue`` and objects
inside arrays as ``kvlistValue``. A JSON null inside an array becomes an empty
``AnyValue``; an integer outside int64 (JSON allows up to uint64 here) a
``stringValue`` with its exact decimal text. Values nest as AnyValues
``MAX_VALUE_DEPTH`` (32) levels deep at most: an array or object deeper than that
becomes a ``stringValue`` holding its JSON text (a client sets the nesting of the
request body it sends to Vault, up to the cores' limit of about 1,000 levels).
Spans with an error get ``status {code: 2 (ERROR), message}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ... import __version__
from ..._core_py import dump_value
from ...model import SpanRecord
from .compiled import CompiledFirst, batch_json, joined_bodies
from .wire import JoinedBody

SCOPE_NAME = "vault-observe"
SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
# An array or object nested deeper than this (a top-level value is at 1) is written as
# the stringValue of its JSON text; the compiled encoder has the same limit.
MAX_VALUE_DEPTH = 32


def any_value(value: Any, depth: int = 1) -> dict[str, Any]:
    """A decoded JSON value as an OTLP ``AnyValue`` (JSON mapping), at nesting ``depth``."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):  # before int: bool is an int
        return {"boolValue": value}
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, dict)) and depth > MAX_VALUE_DEPTH:
        return {"stringValue": dump_value(value)}
    if isinstance(value, list):
        return {"arrayValue": {"values": [any_value(item, depth + 1) for item in value]}}
    if isinstance(value, dict):
        return {
            "kvlistValue": {
                "values": [{"key": str(k), "value": any_value(v, depth + 1)} for k, v in value.items()]
            }
        }
    return {}  # null


def attributes(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": any_value(value)} for key, value in attrs.items()]


def encode_span(record: SpanRecord) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": record.trace_id.hex(),
        "spanId": f"{record.span_id:016x}",
    }
    if record.parent_span_id:
        span["parentSpanId"] = f"{record.parent_span_id:016x}"
    span["name"] = record.name
    span["kind"] = SPAN_KIND_SERVER
    span["startTimeUnixNano"] = str(record.start_ns)
    span["endTimeUnixNano"] = str(record.end_ns)
    span["attributes"] = attributes(orjson.loads(record.attrs_json))
    if record.error:
        span["status"] = {"code": STATUS_CODE_ERROR, "message": record.error}
    return span


def request_head(service_name: str) -> bytes:
    """The request body up to its first span."""
    resource = orjson.dumps({"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]})
    scope = orjson.dumps({"name": SCOPE_NAME, "version": __version__})
    return b'{"resourceSpans":[{"resource":' + resource + b',"scopeSpans":[{"scope":' + scope + b',"spans":['


REQUEST_TAIL = b"]}]}]}"


class BodyEncoder(CompiledFirst[JoinedBody]):
    """The request body of a batch with each span's end, written by the compiled
    ``_batch_json.OtlpEncoder`` when it is built and allowed, else by ``encode_span``
    and orjson, whose bytes it matches."""

    def __init__(self, service_name: str, compiled: bool = True) -> None:
        head = self.head = request_head(service_name)
        tail = self.tail = REQUEST_TAIL
        module, load_error = batch_json() if compiled else (None, "not asked for")
        fast = None
        if module is not None:
            fast = joined_bodies(module.OtlpEncoder(head, tail), len(head), len(tail))

        def python(spans: Sequence[SpanRecord]) -> JoinedBody:
            return JoinedBody.join([orjson.dumps(encode_span(record)) for record in spans], head, tail)

        super().__init__(fast, python, load_error)
