"""The contract between the pipeline's sink workers and a sink."""

from __future__ import annotations

import threading
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


class LocalSink:
    """What a sink that delivers within ``send`` in this process (a stream, a table,
    a histogram) has nothing to do for: no thread or pool to start, no buffer to
    flush, nothing to release. One sender thread."""

    concurrency = 1

    def start(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


# What every sink counts (``stats()``; the metrics read these names).
SINK_COUNTERS = ("sent", "failed", "retries", "batches", "bytes")


class Counters:
    """A sink's counters (``SINK_COUNTERS`` unless named), safe to add to from
    several sender threads at once."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names or SINK_COUNTERS, 0)

    def add(self, **amounts: int) -> None:
        with self._lock:
            values = self._values
            for name, amount in amounts.items():
                values[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
