"""What the core hands to the sinks: spans, each seen as a SpanRecord, in batches
(stdlib only). The compiled core keeps them packed and makes a SpanRecord only
when one is asked for (``_spans.pyx``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, overload

# How a span's request and response were paired.
PAIRED = 0  # a response whose request was seen: real duration
ORPHAN = 1  # a response whose request was never seen (or had expired): zero length
UNANSWERED = 2  # a request whose response did not come within the TTL or before the end
EVICTED = 3  # a request pushed out of the full pending cache

PAIRING_NAMES = ("paired", "orphan", "unanswered", "evicted")

# Attribute added to spans that are not a plain request/response pair.
PAIRING_KEY = "vault_observe.pairing"


class SpanRecord:
    """One span, ready for the sinks.

    ``attrs_json`` is a flat JSON object (UTF-8 bytes) of the entry's flattened keys
    in document order: scalars keep their JSON type, arrays stay JSON arrays (unless
    arrays are flattened), nulls and empty containers are absent. Its bytes are
    canonical (``_core_py.dump_attrs``): both cores give the same bytes. Keeping the
    attributes as bytes lets the compiled core build them without one Python object
    per attribute and lets JSON sinks splice them in as they are.

    ``operation`` and ``mount`` are the parts of the name read from the entry that
    named the span: its ``request.operation`` and ``request.mount_point``, "" when
    absent, empty or not a string (whatever the attribute filters keep).
    """

    __slots__ = (
        "attrs_json",
        "end_ns",
        "error",
        "mount",
        "name",
        "operation",
        "pairing",
        "parent_span_id",
        "request_id",
        "sample_rate",
        "span_id",
        "start_ns",
        "trace_id",
    )

    def __init__(
        self,
        trace_id: bytes,
        span_id: int,
        parent_span_id: int,
        name: str,
        start_ns: int,
        end_ns: int,
        error: str,
        pairing: int,
        request_id: str,
        attrs_json: bytes,
        sample_rate: int = 1,
        operation: str = "",
        mount: str = "",
    ) -> None:
        self.trace_id = trace_id  # 16 bytes: the request id's UUID bytes, or a hash
        self.span_id = span_id  # 1 .. 2**64-1
        self.parent_span_id = parent_span_id  # 0 when the span is a root
        self.name = name
        self.start_ns = start_ns  # unix epoch nanoseconds
        self.end_ns = end_ns
        self.error = error  # "" when the entry carries no error
        self.pairing = pairing
        self.request_id = request_id  # as written by Vault, "" when absent
        self.attrs_json = attrs_json
        self.sample_rate = sample_rate  # kept 1 in N (Honeycomb's samplerate); 1 = not sampled
        self.operation = operation  # the name's first part ("read"), "" when the entry has none
        self.mount = mount  # its mount ("secret/"), "" when the entry has none

    @property
    def trace_id_hex(self) -> str:
        return self.trace_id.hex()

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def attributes(self) -> dict[str, Any]:
        """The flattened attributes as a dict (decoded on demand)."""
        value: dict[str, Any] = json.loads(self.attrs_json)
        return value

    def as_tuple(self) -> tuple[Any, ...]:
        """Every field, attributes decoded: what two cores must agree on."""
        return (
            self.trace_id,
            self.span_id,
            self.parent_span_id,
            self.name,
            self.start_ns,
            self.end_ns,
            self.error,
            self.pairing,
            self.request_id,
            self.attributes(),
            self.sample_rate,
            self.operation,
            self.mount,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpanRecord):
            return NotImplemented
        return self.as_tuple() == other.as_tuple()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SpanRecord(name={self.name!r}, trace_id={self.trace_id_hex}, "
            f"pairing={PAIRING_NAMES[self.pairing]}, start_ns={self.start_ns}, "
            f"end_ns={self.end_ns}, error={self.error!r})"
        )


class SpanBatch(Sequence[SpanRecord]):
    """The spans of one send: the core's chunks, in order.

    A chunk is a list of SpanRecord (reference core) or the compiled core's
    ``PackedSpans``, which the compiled encoders read without making records.
    Everything else iterates it as SpanRecords.
    """

    __slots__ = ("_len", "chunks")

    def __init__(self, chunks: Sequence[Sequence[SpanRecord]]) -> None:
        self.chunks = chunks
        self._len = sum(len(chunk) for chunk in chunks)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[SpanRecord]:
        return chain.from_iterable(self.chunks)

    @overload
    def __getitem__(self, index: int) -> SpanRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[SpanRecord]: ...
    def __getitem__(self, index: int | slice) -> SpanRecord | list[SpanRecord]:
        return list(self)[index]

    def __repr__(self) -> str:
        return f"SpanBatch({self._len} spans in {len(self.chunks)} chunks)"
