"""The contract between the pipeline's sink workers and a sink."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model import SpanRecord


class Sink(Protocol):
    """A destination for spans.

    ``send`` is called from the sink's own worker thread only (never from the
    reader), with batches of at most the configured batch size. It returns how
    many of the spans it could not deliver; it may retry inside the call (bounded
    by ``deadline``, a ``time.monotonic()`` value after which it must give up) and
    must not raise for delivery failures: it counts them. ``flush`` delivers
    whatever the sink buffers itself; ``close`` releases its resources.

    Lifecycle: a constructor only checks settings and builds objects; ``start``
    starts whatever runs on its own (threads, pools) and is called once, by the
    worker, before the first ``send``; ``close`` ends it. ``concurrency`` is how
    many sender threads the worker may run into ``send`` at once.
    """

    name: str
    concurrency: int

    def start(self) -> None: ...

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int: ...

    def flush(self, timeout: float) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]:
        """Counters of the sink's own (e.g. ``sent``, ``failed``, ``retries``)."""
        ...
