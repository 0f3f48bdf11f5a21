"""Stdout sink: one JSON object per span per line (JSON Lines) on a binary stream.

Each line is ``{"trace_id", "span_id", "parent_span_id" (non-root only), "name",
"start" and "end" (RFC 3339, nanoseconds), "duration_ms", "error" (when set), "pairing",
"request_id", "attributes"}`` with the record's canonical attribute bytes spliced in
as they are. The stream is flushed once per batch.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import BinaryIO

from ..model import PAIRING_NAMES, SpanRecord
from ..ratelog import RateLimitedLog
from .base import Counters, LocalSink
from .encoding.wire import duration_ms, json_str, rfc3339_ns

log = logging.getLogger(__name__)


def encode_line(record: SpanRecord) -> bytes:
    """One span as a JSON line (ending in ``\\n``)."""
    pairing = (
        PAIRING_NAMES[record.pairing] if 0 <= record.pairing < len(PAIRING_NAMES) else str(record.pairing)
    )
    return b"".join(
        (
            b'{"trace_id":"',
            record.trace_id.hex().encode("ascii"),
            b'","span_id":"%016x"' % record.span_id,
            b',"parent_span_id":"%016x"' % record.parent_span_id if record.parent_span_id else b"",
            b',"name":',
            json_str(record.name),
            b',"start":"',
            rfc3339_ns(record.start_ns).encode("ascii"),
            b'","end":"',
            rfc3339_ns(record.end_ns).encode("ascii"),
            b'","duration_ms":',
            repr(duration_ms(record.start_ns, record.end_ns)).encode("ascii"),
            b',"error":' + json_str(record.error) if record.error else b"",
            b',"pairing":"',
            pairing.encode("ascii"),
            b'","request_id":',
            json_str(record.request_id),
            b',"attributes":',
            record.attrs_json,
            b"}\n",
        )
    )


class StdoutSink(LocalSink):
    """Writes JSON lines; a failing stream (closed pipe, full disk) is counted, not raised."""

    name = "stdout"

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._log = RateLimitedLog(log)
        self.counts = Counters("sent", "failed", "batches", "bytes")

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if not spans:
            return 0
        data = b"".join([encode_line(record) for record in spans])
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            # Part of the batch may have been written; none of it is known to be.
            self.counts.add(failed=len(spans), batches=1)
            self._log("write", logging.ERROR, "stdout: cannot write %d spans: %s", len(spans), exc)
            return len(spans)
        self.counts.add(sent=len(spans), batches=1, bytes=len(data))
        return 0

    def flush(self, timeout: float) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._log("flush", logging.ERROR, "stdout: cannot flush: %s", exc)

    def close(self) -> None:
        # The stream belongs to the caller (stdout by default): flush, never close.
        self.flush(1.0)

    def stats(self) -> dict[str, int]:
        return self.counts.snapshot()
