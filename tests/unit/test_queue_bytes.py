"""The sink queue's bound in bytes, on both cores: what queued spans keep alive is
counted, never exceeds --queue-bytes, and what does not fit is dropped and counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.implementations import core_class
from vault_observe.model import SpanRecord
from vault_observe.sink_worker import SinkWorker, records_bytes
from vault_observe.sinks.base import LocalSink


def request_id(i: int) -> str:
    return f"{i:08x}-1d2e-4f40-9a8f-5162d2e3f405"


def drains(impl: str, sample: bytes, reads: int, per_read: int) -> list[Sequence[SpanRecord]]:
    """What a daemon's reader hands the workers: one drain per socket read of a few lines."""
    core = core_class(impl)()
    lines = sample.splitlines(keepends=True)
    out = []
    n = 0
    for r in range(reads):
        for _ in range(per_read):
            core.feed(lines[n % len(lines)].replace(b'"id":"', f'"id":"{r:04x}'.encode(), 1))
            n += 1
        core.flush()
        out.append(core.drain_spans())
    return out


class Gate(LocalSink):
    """A sink whose sends wait until the test opens it; it samples the queue's bytes."""

    name = "gate"

    def __init__(self) -> None:
        self.open = threading.Event()
        self.spans = 0
        self.worker: SinkWorker | None = None
        self.peak_bytes = 0

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        self.open.wait(30)
        assert self.worker is not None
        self.peak_bytes = max(self.peak_bytes, self.worker.queued_bytes)
        self.spans += len(spans)
        return 0

    def stats(self) -> dict[str, int]:
        return {}


def chunk_bytes(chunk: Sequence[SpanRecord]) -> int:
    nbytes = getattr(chunk, "nbytes", None)
    return int(nbytes) if nbytes is not None else records_bytes(chunk)


def test_drained_spans_keep_alive_what_they_take(sample_log: Path, impl: str) -> None:
    """A drain of a few spans keeps about their own bytes alive. Before, each kept a
    34 KB record block and a 16 KB arena: 21 KB a queued span under a sink outage."""
    chunks = drains(impl, sample_log.read_bytes(), reads=50, per_read=4)
    spans = sum(len(chunk) for chunk in chunks)
    held = sum(chunk_bytes(chunk) for chunk in chunks)
    if impl == "c":
        own = sum(chunk.span_bytes for chunk in chunks)  # type: ignore[attr-defined]
        assert own <= held <= own + 64 * len(chunks)
    # the sample's spans average about 1.5 KB of attributes
    assert held / spans < 4000, held / spans


@pytest.mark.c_extension
def test_compact_copies_the_spans_into_a_store_of_their_own(sample_log: Path) -> None:
    core = core_class("c")()
    core.feed(sample_log.read_bytes())
    core.flush()
    packed: Any = core.drain_spans()
    part = packed[10:30]
    assert part.nbytes == packed.nbytes  # a view keeps its whole store alive
    copy = part.compact()
    assert copy.store is not packed.store
    assert list(copy) == list(part)
    assert copy.span_bytes <= copy.nbytes <= copy.span_bytes + 64
    assert copy.nbytes < packed.nbytes / 10
    # bounded: the leading spans that fit, never more
    limit = part[:7].compact().span_bytes
    assert len(part.compact(limit)) == 7
    assert len(part.compact(limit - 1)) == 6
    assert len(part.compact(10)) == 0


@pytest.mark.parametrize("queue_bytes", [200_000, 1_000_000])
def test_queue_bytes_bound_drops_and_counts_what_does_not_fit(
    sample_log: Path, impl: str, queue_bytes: int
) -> None:
    chunks = drains(impl, sample_log.read_bytes(), reads=300, per_read=6)
    offered = sum(len(chunk) for chunk in chunks)
    gate = Gate()
    worker = SinkWorker(
        gate,  # type: ignore[arg-type]
        queue_size=1_000_000,
        queue_bytes=queue_bytes,
        batch_size=50,
        flush_interval=0.01,
        retry_window=5.0,
    )
    gate.worker = worker
    worker.start()
    try:
        peak = 0
        for chunk in chunks:
            worker.offer(chunk)
            peak = max(peak, worker.queued_bytes)
            assert worker.queued_bytes <= queue_bytes
        counts = worker.counts
        assert counts["dropped_queue_full"] > 0  # the offered load is several times the bound
        assert counts["queued"] + counts["dropped_queue_full"] == offered
        assert peak > queue_bytes * 0.8  # filled up to the bound, not far below it
        # what is queued is counted as it is: the sum of what its chunks keep alive
        with worker._cond:
            queued = list(worker._queue)
            queued_bytes = worker.queued_bytes
        stores = {id(getattr(c, "store", c)): chunk_bytes(c) for c in queued}
        assert queued_bytes == sum(stores.values())
        gate.open.set()
    finally:
        gate.open.set()
        worker.stop(time.monotonic() + 30)
        worker.close()
    assert worker.counts["delivered"] == gate.spans == worker.counts["queued"]
    assert worker.counts["delivered"] + worker.counts["dropped_queue_full"] == offered
    assert worker.queued_bytes == 0 and worker.depth == 0
    assert gate.peak_bytes <= queue_bytes


def test_replay_waits_for_room_in_bytes(sample_log: Path, impl: str) -> None:
    """A replay (block_when_full) is never dropped: it waits until the bytes fit."""
    chunks = drains(impl, sample_log.read_bytes(), reads=120, per_read=5)
    offered = sum(len(chunk) for chunk in chunks)
    bound = 4 * max(chunk_bytes(chunk) for chunk in chunks)
    gate = Gate()
    worker = SinkWorker(
        gate,  # type: ignore[arg-type]
        queue_size=1_000_000,
        queue_bytes=bound,
        batch_size=20,
        flush_interval=0.01,
        retry_window=5.0,
        block_when_full=True,
    )
    gate.worker = worker
    worker.start()
    seen: list[int] = []

    def produce() -> None:
        for chunk in chunks:
            worker.offer(chunk)
            seen.append(worker.queued_bytes)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert producer.is_alive()  # waiting for room: the sink takes nothing yet
    assert worker.queued_bytes <= bound
    gate.open.set()
    producer.join(60)
    worker.stop(time.monotonic() + 30)
    worker.close()
    assert max(seen) <= bound
    assert worker.counts["dropped_queue_full"] == 0
    assert gate.spans == worker.counts["delivered"] == offered
