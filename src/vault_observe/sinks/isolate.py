"""The network sinks' second line of defence: one span that cannot be encoded costs
only itself.

The encoders handle every value the cores produce. Should one still raise on a
batch (a bug, a record made by hand), ``EncodeGuard.encode`` splits the batch in
halves until the spans that fail alone are found: each is dropped, counted as the
sink's ``unencodable`` (part of its ``failed``) and logged, rate-limited, with its
request id; the other spans' encodings are merged into one body and delivered.
Every network sink (Zipkin, Honeycomb, OTLP) encodes through one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from ..model import SpanBatch, SpanRecord

log = logging.getLogger(__name__)

Body = TypeVar("Body")


class RateLog(Protocol):
    """``ratelog.RateLimitedLog``."""

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None: ...


def slice_spans(spans: Sequence[SpanRecord], lo: int, hi: int) -> Sequence[SpanRecord]:
    """``spans[lo:hi]``; a SpanBatch stays a SpanBatch of its chunks' slices, so packed
    chunks stay packed for the compiled encoders."""
    if not isinstance(spans, SpanBatch):
        return spans[lo:hi]
    chunks = []
    at = 0
    for chunk in spans.chunks:
        size = len(chunk)
        a, b = max(lo - at, 0), min(hi - at, size)
        if a < b:
            chunks.append(chunk if a == 0 and b == size else chunk[a:b])
        at += size
        if at >= hi:
            break
    return SpanBatch(chunks)


class EncodeGuard:
    """Encodes batches for one sink; counts and logs the spans it had to drop."""

    def __init__(self, sink_name: str, rate_log: RateLog) -> None:
        self.sink_name = sink_name
        self._log = rate_log
        self._lock = threading.Lock()  # a sink may encode in two sender threads
        self.unencodable = 0

    def encode(
        self,
        encode: Callable[[Sequence[SpanRecord]], Body],
        spans: Sequence[SpanRecord],
        merge: Callable[[Sequence[Body]], Body],
    ) -> tuple[Body | None, int]:
        """``(body, dropped)``: the body of the spans that encode (None when none does)
        and how many were dropped. ``merge`` joins the bodies of consecutive runs."""
        try:
            return encode(spans), 0
        except Exception as exc:  # any failure is one span's until shown otherwise
            if len(spans) == 1:
                self.drop(next(iter(spans)), exc)
                return None, 1
        parts: list[Body] = []
        dropped = 0
        # halves in order, the first half first: a stack of (lo, hi), the last pushed on top
        size = len(spans)
        todo = [(size // 2, size), (0, size // 2)]
        while todo:
            lo, hi = todo.pop()
            if lo >= hi:
                continue
            part = slice_spans(spans, lo, hi)
            try:
                parts.append(encode(part))
            except Exception as exc:
                if hi - lo == 1:
                    self.drop(next(iter(part)), exc)
                    dropped += 1
                else:
                    mid = (lo + hi) // 2
                    todo.append((mid, hi))
                    todo.append((lo, mid))
        return (merge(parts) if parts else None), dropped

    def drop(self, span: SpanRecord | None, exc: BaseException, what: str | None = None) -> None:
        """Count one span dropped because it cannot be encoded, and log it (rate-limited)."""
        with self._lock:
            self.unencodable += 1
        if what is None:
            rid = getattr(span, "request_id", "") if span is not None else ""
            what = f"request id {str(rid)[:80]!r}"
        self._log(
            "unencodable",
            logging.ERROR,
            "%s: dropped a span that cannot be encoded (%s): %s: %.200s",
            self.sink_name,
            what,
            type(exc).__name__,
            str(exc),
        )
