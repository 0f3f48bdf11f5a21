"""Replay a recorded audit log (the file device's output, or a capture)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import BinaryIO

from ..framing import FramingCounters, LineFramer

READ_BYTES = 1 << 20


def read_file(path: str, *, max_line_bytes: int, counters: FramingCounters) -> Iterator[bytes]:
    """Yield chunks of whole lines; a last line without ``\\n`` is a truncated entry."""
    framer = LineFramer(max_line_bytes, counters)
    stream: BinaryIO
    if path == "-":
        stream = sys.stdin.buffer
        yield from _chunks(stream, framer)
        return
    with open(path, "rb") as stream:
        yield from _chunks(stream, framer)


def _chunks(stream: BinaryIO, framer: LineFramer) -> Iterator[bytes]:
    while True:
        data = stream.read(READ_BYTES)
        if not data:
            break
        lines = framer.feed(data)
        if lines:
            yield lines
    framer.close()
