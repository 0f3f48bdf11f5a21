"""Replay a recorded audit log (the file device's output, or a capture)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import cast

from ..framing import FramingCounters, StreamFramer


def read_file(path: str, *, max_line_bytes: int, counters: FramingCounters) -> Iterator[memoryview]:
    """Yield chunks of whole lines, each valid until the next one is asked for;
    a last line without ``\\n`` is a truncated entry."""
    if path == "-":
        yield from _chunks(StreamFramer(cast(io.BufferedReader, sys.stdin.buffer), max_line_bytes, counters))
        return
    with open(path, "rb", buffering=0) as stream:
        yield from _chunks(StreamFramer(stream, max_line_bytes, counters))


def _chunks(framer: StreamFramer) -> Iterator[memoryview]:
    while True:
        lines = framer.read()
        if lines is None:
            break
        if lines:
            yield lines
    framer.close()
