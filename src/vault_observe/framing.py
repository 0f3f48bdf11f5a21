"""Cut one connection's byte stream into whole lines for the core.

Each connection has its own LineFramer, so a fragment is never joined with another
connection's bytes. A tail without ``\\n`` at EOF is a truncated entry (Vault
abandons a connection mid-entry after a write timeout and re-sends the whole entry
on a new one): it is dropped and counted. A line longer than ``max_line_bytes``
is skipped as it streams past, never buffered whole.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FramingCounters:
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
