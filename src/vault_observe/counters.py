"""The daemon's counters as plain data.

The daemon publishes a ``Snapshot``; the summary log, ``/metrics`` and ``/healthz``
read it and nothing else of the daemon. This module imports nothing of the package,
so the counters flow one way: from the daemon to their readers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

# Named tuples, not dataclasses: the same immutable records, made at import in a tenth
# of the time (two frozen dataclasses cost ~2 ms of every start).


class SinkState(NamedTuple):
    """One sink of the running set, as an operator sees it (the latency histogram is not one)."""

    name: str
    failing_since: float | None  # time.monotonic() when its sends began to fail; None while they work
    queue_depth: int  # spans waiting in its queue
    queue_capacity: int  # spans its queue holds at most


class Snapshot(NamedTuple):
    """Every counter of the daemon at one moment.

    ``counters``: the flat counters of the core, framing and sources, plus ``sinks``
    (sink name -> its counters, a replaced sink set's included) and, when the latency
    histogram runs, ``latency`` (its worker's counters).
    """

    counters: dict[str, Any]
    sinks: tuple[SinkState, ...]
    max_pending: int  # --max-pending
    queue_bytes: int  # --queue-bytes


# What the daemon hands its readers: called whenever they need fresh counters.
SnapshotSource = Callable[[], Snapshot]
