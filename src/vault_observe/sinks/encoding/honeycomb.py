"""Honeycomb batch-API events written as bytes (``EventEncoder``, the reference of the
compiled ``_batch_json.HoneycombEncoder``) and as libhoney fields (``event_fields``).

An event's ``time`` is the span's start (nanoseconds), its ``data`` every attribute,
spliced in from the record's canonical ``attrs_json``, then the trace fields Honeycomb
reads; on a clash the trace field wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..._core_py import attr_members
from ...model import PAIRED, PAIRING_KEY, PAIRING_NAMES, SpanRecord
from .compiled import CompiledFirst, batch_json, joined_bodies
from .wire import JoinedBody, duration_ms, json_str, rfc3339_ns

_canonical_str = json.encoder.encode_basestring  # the string form of ``_core_py.dump_attrs``
_ERROR_KEY = b'"error":'


def trace_fields(record: SpanRecord, service_name: str) -> dict[str, Any]:
    """The trace fields of one span's event, as the libhoney encoder adds them."""
    fields: dict[str, Any] = {
        # In the caller's trace (traceparent), else the request id as Vault wrote it.
        "trace.trace_id": record.trace_id.hex()
        if record.parent_span_id or not record.request_id
        else record.request_id,
        "trace.span_id": f"{record.span_id:016x}",
    }
    if record.parent_span_id:
        fields["trace.parent_id"] = f"{record.parent_span_id:016x}"
    fields["service_name"] = service_name
    fields["service.name"] = service_name
    fields["name"] = record.name
    fields["duration_ms"] = duration_ms(record.start_ns, record.end_ns)
    if record.error:
        fields["error"] = record.error
    return fields


def event_fields(record: SpanRecord, service_name: str) -> dict[str, Any]:
    """Every data field of one span's event (attributes decoded, trace fields last)."""
    fields = record.attributes()
    fields.update(trace_fields(record, service_name))
    return fields


class EventEncoder:
    """Writes one batch-API event per record as bytes, splicing ``attrs_json`` in."""

    def __init__(self, service_name: str) -> None:
        service = json_str(service_name)
        self._service = b',"service_name":' + service + b',"service.name":' + service

    def encode(self, record: SpanRecord) -> bytes:
        attrs = record.attrs_json
        error = b""
        if record.error:
            attrs, error = self._error(record)
        if record.request_id and not record.parent_span_id:
            trace_id = json_str(record.request_id)
        else:
            trace_id = b'"' + record.trace_id.hex().encode("ascii") + b'"'
        parent = b',"trace.parent_id":"%016x"' % record.parent_span_id if record.parent_span_id else b""
        return b"".join(
            (
                b'{"time":"',
                rfc3339_ns(record.start_ns).encode("ascii"),
                b'","samplerate":%d,"data":' % record.sample_rate,
                # Attributes first, trace fields after: a JSON reader keeps the last of
                # duplicate keys, so on a clash (not seen in Vault's output) the trace
                # fields win, as in the libhoney encoder.
                memoryview(attrs)[:-1] if len(attrs) > 2 else b"{",
                b',"trace.trace_id":' if len(attrs) > 2 else b'"trace.trace_id":',
                trace_id,
                b',"trace.span_id":"%016x"' % record.span_id,
                parent,
                self._service,
                b',"name":',
                json_str(record.name),
                b',"duration_ms":',
                repr(duration_ms(record.start_ns, record.end_ns)).encode("ascii"),
                error,
                b"}}",
            )
        )

    @staticmethod
    def _error(record: SpanRecord) -> tuple[bytes, bytes]:
        """The attributes and the ``,"error":...`` member to add: none when the
        attributes already hold that very top-level key (they do for Vault entries)."""
        attrs = record.attrs_json
        text = _canonical_str(record.error).encode("utf-8", "surrogatepass")
        needle = _ERROR_KEY + text
        # Fast path: Vault writes ``error`` last, so in canonical bytes it ends the
        # object (or precedes the pairing marker). A match that ends the top-level
        # object is a top-level key: a nested one would need its own closing bracket.
        if record.pairing == PAIRED:
            tail = needle + b"}"
        elif 0 <= record.pairing < len(PAIRING_NAMES):
            tail = (
                needle
                + b',"'
                + PAIRING_KEY.encode()
                + b'":"'
                + PAIRING_NAMES[record.pairing].encode()
                + b'"}'
            )
        else:
            tail = b""
        if tail and attrs.endswith(tail) and attrs[-len(tail) - 1 : -len(tail)] in (b",", b"{"):
            return attrs, b""
        if _ERROR_KEY not in attrs:
            return attrs, b"," + needle
        # Rare: an ``error`` key elsewhere (nested, or not last): read the top-level
        # members, with their values as raw JSON text (any nesting the cores accept).
        # A repeated key keeps its last value at its first place, as json.loads does.
        try:
            members = dict(attr_members(attrs))
        except ValueError:
            return attrs, b"," + needle
        own = members.pop("error", None)
        if own is None:
            return attrs, b"," + needle
        if own[:1] == b'"' and json.loads(own) == record.error:
            return attrs, b""
        # another value: the span's own wins, without a duplicate key
        body = b",".join(
            _canonical_str(key).encode("utf-8", "surrogatepass") + b":" + raw for key, raw in members.items()
        )
        return b"{" + body + b"}", b"," + needle


class BatchEncoder(CompiledFirst[JoinedBody]):
    """The batch body ``[event,...]`` of ``EventEncoder`` with each event's end, written
    by the compiled ``_batch_json.HoneycombEncoder`` when it is built and allowed."""

    def __init__(self, service_name: str, compiled: bool = True) -> None:
        events = EventEncoder(service_name)
        module, load_error = batch_json() if compiled else (None, "not asked for")
        fast = joined_bodies(module.HoneycombEncoder(service_name), 1, 1) if module is not None else None

        def python(spans: Sequence[SpanRecord]) -> JoinedBody:
            encode = events.encode
            return JoinedBody.join([encode(record) for record in spans], b"[", b"]")

        super().__init__(fast, python, load_error)
