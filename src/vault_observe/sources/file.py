"""Replay a recorded audit log (the file device's output, or a capture) once, start to end."""

from __future__ import annotations

import io
import os
import sys
from typing import cast

from ..errors import file_error
from ..framing import FramingCounters, StreamFramer
from .base import Chunk, Read, Source


class FileSource(Source):
    """The replay source: chunks of whole lines from a file (or stdin, ``-``), each
    valid until the next read, with no clock of their own: the lines carry their times.
    A last line without ``\\n`` is a truncated entry."""

    def __init__(self, path: str, *, max_line_bytes: int, counters: FramingCounters) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.counters = counters
        self.size: int | None = None  # of a regular file, for the share read
        self._file: io.FileIO | None = None
        self._framer: StreamFramer | None = None

    def start(self) -> None:
        """Open the file: a missing one is named before anything else starts."""
        if self.path == "-":
            self._framer = StreamFramer(
                cast(io.BufferedReader, sys.stdin.buffer), self.max_line_bytes, self.counters
            )
            return
        try:
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close
            self.size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            self.close()
            raise file_error("--input", self.path, exc) from None
        self._framer = StreamFramer(self._file, self.max_line_bytes, self.counters)

    def read(self, timeout: float) -> Read | None:
        framer = self._framer
        while framer is not None:
            lines = framer.read()
            if lines is None:
                framer.close()
                break
            if lines:
                return Read((Chunk(lines),), None)
        self._framer = None
        return None

    def stop(self, timeout: float) -> None:
        self._framer = None  # the rest is not read

    def close(self) -> None:
        self._framer = None
        if self._file is not None:
            self._file.close()
            self._file = None
