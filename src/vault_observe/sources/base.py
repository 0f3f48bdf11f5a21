"""What the daemon's one reader loop reads from: the Source contract.

A source hands out whole lines, a read at a time, each read with its clock: the time
its lines arrived (a live source) or ``None`` when the lines carry their own times
(a file: the core expires by the latest time it has read). After a read, the loop
asks where the source stands (``mark``); once every sink has handled the spans made
from the lines before that mark, the loop gives it back (``ack``): the follow source
writes its checkpoint then.

Lifecycle: ``start`` opens what is read (binds, opens the file), ``stop`` stops taking
new input (what is already on its way in is still read, then ``read`` says the input
has ended), ``close`` lets go of everything. No source starts a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Chunk(NamedTuple):
    """Whole lines, valid until the next read."""

    lines: bytes | memoryview
    # Where the lines begin in the source's stream: the core keeps it with each pending
    # request, and tells the oldest one's (``mark``'s ``pending_from``).
    offset: int = 0


class Read(NamedTuple):
    chunks: Sequence[Chunk]  # maybe none: an idle source still tells the time
    now_ns: int | None  # the clock to expire by; None: the lines' own times
    # Lines read again after a restart to rebuild the requests still pending at the last
    # stop: the spans they make were delivered before it.
    reread: bool = False


class Source(Protocol):
    """A source that keeps no position and has no service status can take the defaults
    of ``ready``, ``mark``, ``ack`` and ``wake`` by naming this class as its base."""

    def start(self) -> None:
        """Open what is read; raises what the operator has to fix (a path, a port)."""

    def read(self, timeout: float) -> Read | None:
        """What came within about ``timeout`` seconds; ``None`` once the input has
        ended (the end of a replayed file, or after ``stop`` once drained)."""

    def ready(self) -> str | None:
        """What to tell the service manager once the source is reading (a status
        line, maybe empty); ``None`` before that, and for a file replay, never a service."""
        return None

    def mark(self, pending_from: int | None, expired_ns: int) -> object | None:
        """Where reading stands after the last read, given the offset of the oldest
        request still pending (``None``: none is) and the latest time pending requests
        were expired by; ``None`` for a source that keeps no position."""
        return None

    def ack(self, mark: object) -> None:
        """Every sink has handled the spans of the lines before ``mark`` (called from
        a sender thread, one call at a time, marks in order; the last one again when
        no new one was confirmed)."""
        return None

    def wake(self) -> None:
        """Cut short a ``read`` waiting for input (from a signal handler or a thread)."""
        return None

    def stop(self, timeout: float) -> None:
        """Take no new input; what is already on its way in is read within ``timeout``."""

    def close(self) -> None:
        """Let go of sockets and files; safe to call more than once."""
