"""Cut one connection's byte stream into whole lines for the core.

Each connection has its own LineFramer, so a fragment is never joined with another
connection's bytes. A tail without ``\\n`` at EOF is a truncated entry (Vault
abandons a connection mid-entry after a write timeout and re-sends the whole entry
on a new one): it is dropped and counted. A line longer than ``max_line_bytes``
is skipped as it streams past, never buffered whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class FramingCounters:
    """What the framers of every source counted."""

    bytes: int = 0
    truncated: int = 0  # unterminated tails at EOF
    oversize: int = 0  # lines skipped here because they outgrew max_line_bytes


class LineFramer:
    """Stateful splitter: ``feed`` returns whole lines (ending in ``\\n``) or b""."""

    __slots__ = ("_counters", "_max", "_parts", "_size", "_skipping")

    def __init__(self, max_line_bytes: int, counters: FramingCounters) -> None:
        self._max = max_line_bytes
        self._counters = counters
        self._parts: list[bytes] = []  # the unterminated tail, in pieces
        self._size = 0
        self._skipping = False  # inside an oversize line: drop until its \n

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, data: bytes) -> bytes:
        self._counters.bytes += len(data)
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return b""
            self._skipping = False
            data = data[nl + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            self._hold(data)
            return b""
        head = data[: last + 1]
        tail = data[last + 1 :]
        if self._parts:
            self._parts.append(head)
            head = b"".join(self._parts)
            self._parts = []
            self._size = 0
        if tail:
            self._hold(tail)
        return head

    def _hold(self, data: bytes) -> None:
        if not data:
            return
        if self._size + len(data) > self._max:
            # Too long to ever be a line we accept: skip it to its end.
            self._counters.oversize += 1
            self._parts = []
            self._size = 0
            self._skipping = True
            return
        self._parts.append(data)
        self._size += len(data)

    def close(self) -> None:
        """EOF: an unterminated tail is a truncated entry."""
        if self._size:
            self._counters.truncated += 1
        self._parts = []
        self._size = 0
        self._skipping = False


class _ReadInto(Protocol):
    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


class StreamFramer:
    """LineFramer's rules for a file, read into one reused buffer.

    ``read`` hands out a view of the whole lines it just read instead of a copy: at
    line rate, copying every chunk (and joining it with the tail held from the last
    one) costs as much as reading it. The view is valid until the next ``read``.
    """

    __slots__ = ("_buf", "_counters", "_hi", "_lo", "_max", "_skipping", "_stream", "_view")

    def __init__(
        self, stream: _ReadInto, max_line_bytes: int, counters: FramingCounters, read_bytes: int = 1 << 20
    ) -> None:
        self._stream = stream
        self._max = max_line_bytes
        self._counters = counters
        self._buf = bytearray(read_bytes)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0  # the unterminated tail: _buf[_lo:_hi]
        self._skipping = False  # inside an oversize line: drop until its \n

    @property
    def buffered(self) -> int:
        return self._hi - self._lo

    def read(self) -> memoryview | None:
        """Whole lines (maybe none) from one read; None when the read got nothing."""
        held = self._hi - self._lo
        if self._lo:
            # Bring the tail to the front only now: the caller is done with the last view.
            self._buf[:held] = bytes(self._view[self._lo : self._hi])
        if held * 2 > len(self._buf):
            # A line longer than half the buffer (and within the limit): make room.
            grown = bytearray(2 * len(self._buf))
            grown[:held] = self._buf
            self._buf, self._view = grown, memoryview(grown)
        self._lo, self._hi = 0, held
        n = self._stream.readinto(self._view[held:])
        if not n:
            return None
        self._counters.bytes += n
        buf = self._buf
        end = held + n
        start = 0
        if self._skipping:
            nl = buf.find(b"\n", 0, end)
            if nl < 0:
                self._hi = 0
                return self._view[:0]
            self._skipping = False
            start = nl + 1
        last = buf.rfind(b"\n", start, end)
        if last < 0:
            self._hold(start, end)
            return self._view[:0]
        self._hold(last + 1, end)
        return self._view[start : last + 1]

    def _hold(self, lo: int, hi: int) -> None:
        if hi - lo > self._max:
            # Too long to ever be a line we accept: skip it to its end.
            self._counters.oversize += 1
            self._lo = self._hi = 0
            self._skipping = True
            return
        self._lo, self._hi = lo, hi

    def close(self) -> None:
        """EOF: an unterminated tail is a truncated entry."""
        if self._hi - self._lo:
            self._counters.truncated += 1
        self._lo = self._hi = 0
        self._skipping = False
