"""A bounded span queue in front of one sink, drained by the sink's own sender threads.

The reader hands each worker the core's chunks of spans and never waits on a sink:
when a queue is full, new spans for that sink are dropped and counted (a file replay,
which has no Vault to hold up, waits for room instead). The worker counts, in queue
order, the spans its sink is done with, so that a source's position can be confirmed
once every sink has handled what came before it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from .model import SpanBatch, SpanRecord
from .sinks.base import Sink

try:
    from ._spans import PackedSpans, trim_allocator
except ImportError:  # the pure-Python install: every chunk is a sequence of SpanRecord
    PackedSpans = None  # type: ignore[assignment,misc]
    trim_allocator = None  # type: ignore[assignment]

log = logging.getLogger("vault_observe")

# After a queue that held this many bytes drains, give the freed heap back to the system.
TRIM_AFTER_BYTES = 4 << 20
# "Retry until accepted" is a deadline this far away: finite, because lock and
# condition waits refuse an infinite timeout.
NO_DEADLINE_SECONDS = 10 * 365 * 86400.0

_getsizeof = sys.getsizeof


def records_bytes(spans: Sequence[SpanRecord]) -> int:
    """What a sequence of SpanRecord keeps alive: each record and the values it holds."""
    return sum(
        _getsizeof(span)
        + _getsizeof(span.attrs_json)
        + _getsizeof(span.name)
        + _getsizeof(span.request_id)
        + _getsizeof(span.error)
        + _getsizeof(span.trace_id)
        + _getsizeof(span.operation)
        + _getsizeof(span.mount)
        for span in spans
    )


class SinkWorker:
    """A bounded span queue in front of one sink, drained by its own thread.

    The queue holds the core's chunks of spans as they were drained (a list, or the
    compiled core's packed spans) and counts their spans; a batch is a run of them,
    split where it must be, so no span is copied on the reader's side.

    It is bounded twice: in spans (``queue_size``) and in the bytes its chunks keep
    alive (``queue_bytes``): a packed chunk's whole store, counted once however many
    chunks of the queue share it, or each SpanRecord with its values.

    ``confirmed`` counts the spans, in queue order, that the sink is done with in an
    unbroken run from the first: a batch finished by one sender while an earlier one is
    still in flight on another counts only once that one is done too. With
    ``retry_forever`` (follow mode) a batch is retried until the sink takes it (it gives
    up only on a final refusal, counted as failed), and a batch that fails once the
    worker is stopping is never confirmed: it will be read again after a restart.
    ``on_confirm`` is called (from a sender thread) each time ``confirmed`` grows.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        queue_size: int,
        queue_bytes: int = 1 << 62,
        batch_size: int,
        flush_interval: float,
        retry_window: float,
        block_when_full: bool = False,
        retry_forever: bool = False,
        on_confirm: Callable[[], None] | None = None,
    ) -> None:
        self.sink = sink
        self.name = sink.name
        self._queue: deque[Sequence[SpanRecord]] = deque()
        self._depth = 0  # spans in the queue
        self._cond = threading.Condition()
        self._blocked = False  # a replay waits in offer for room
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._bytes = 0  # what the queued chunks keep alive
        self._stores: dict[object, int] = {}  # packed store -> queued chunks of it
        self._trim_due = False  # the queue held TRIM_AFTER_BYTES since it was last empty
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._retry_window = retry_window
        self._block_when_full = block_when_full
        self._retry_forever = retry_forever
        self.on_confirm = on_confirm
        self._taken = 0  # spans handed to senders so far, in queue order
        self._confirmed = 0
        self._done: dict[int, int] = {}  # batches done out of order: first span -> end
        self._abandon = False  # a stop while a replay or follower waits in offer for room
        self._closing = False
        self._final_deadline = 0.0
        # A sink that is safe to call from several threads (``concurrency`` > 1) gets that
        # many senders, so one batch is encoded and compressed while another is in flight.
        self._threads = [
            threading.Thread(target=self._run, name=f"sink-{sink.name}-{i}", daemon=True)
            for i in range(max(1, sink.concurrency))
        ]
        self._running = len(self._threads)
        self.counts = {
            "queued": 0,
            "delivered": 0,
            "failed": 0,
            "dropped_queue_full": 0,
            "dropped_shutdown": 0,
            "failed_sends": 0,
        }
        # monotonic time of the first failed batch since the last fully delivered one (health)
        self._failed_since: float | None = None
        # retry_forever: (start, the sink's retries then) of each send in progress, by thread
        self._sends: dict[int, tuple[float, int]] = {}

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def failing_since(self) -> float | None:
        """Since when the sink's sends fail (monotonic), or None while it works. A send
        retried until accepted (follow mode) is failing once the sink has retried in it."""
        if self._failed_since is not None or not self._sends:
            return self._failed_since
        retries = self._sink_retries()
        started = [start for start, before in list(self._sends.values()) if retries > before]
        return min(started) if started else None

    def _sink_retries(self) -> int:
        try:
            return int(self.sink.stats().get("retries", 0))
        except Exception:
            return 0

    @property
    def queue_size(self) -> int:
        return self._queue_size

    @property
    def senders(self) -> int:
        return len(self._threads)

    @property
    def confirmed(self) -> int:
        """Spans (in queue order, from the first) the sink is done with, with no gap."""
        return self._confirmed

    @property
    def queued_bytes(self) -> int:
        """The bytes the queued spans keep alive."""
        return self._bytes

    def _cost(self, chunk: Sequence[SpanRecord]) -> int:
        """Bytes that queueing ``chunk`` adds (nothing for a store already queued)."""
        if type(chunk) is PackedSpans:
            return 0 if chunk.store in self._stores else chunk.nbytes
        return records_bytes(chunk)

    def _push(self, chunk: Sequence[SpanRecord], cost: int) -> None:
        self._queue.append(chunk)
        if type(chunk) is PackedSpans:
            store = chunk.store
            self._stores[store] = self._stores.get(store, 0) + 1
        self._depth += len(chunk)
        self._bytes += cost
        if self._bytes >= TRIM_AFTER_BYTES:
            self._trim_due = True

    def _pop(self, chunk: Sequence[SpanRecord]) -> None:
        """``chunk``, taken whole from the queue, no longer counts."""
        if type(chunk) is PackedSpans:
            store = chunk.store
            left = self._stores[store] - 1
            if left:
                self._stores[store] = left
            else:
                del self._stores[store]
                self._bytes -= chunk.nbytes
        else:
            self._bytes -= records_bytes(chunk)

    def _fitting(self, spans: Sequence[SpanRecord], count: int, room: int) -> Sequence[SpanRecord]:
        """The leading spans (at most ``count``) that fit ``room`` bytes, copied out so that
        they keep nothing else alive."""
        if count <= 0 or room <= 0:
            return []
        if type(spans) is PackedSpans:
            return cast("PackedSpans", spans[:count]).compact(room)
        taken = 0
        for span in spans[:count]:
            room -= records_bytes((span,))
            if room < 0:
                break
            taken += 1
        return list(spans[:taken])

    @property
    def handled(self) -> int:
        """Spans this sink is done with: delivered, failed or dropped."""
        counts = self.counts
        return counts["delivered"] + counts["failed"] + counts["dropped_queue_full"]

    def start(self) -> None:
        self.sink.start()
        for thread in self._threads:
            thread.start()

    def offer(self, spans: Sequence[SpanRecord]) -> None:
        """Queue spans; never blocks unless ``block_when_full`` (file replay)."""
        total = len(spans)
        if not total:
            return
        with self._cond:
            before = self._depth
            if self._block_when_full:
                done = 0
                while done < total:
                    if self._abandon:
                        # Stopping: the rest is not queued (follow mode reads it again
                        # after the restart: the checkpoint never passes it).
                        self.counts["dropped_shutdown"] += total - done
                        total = done
                        break
                    room = self._queue_size - self._depth
                    part = spans if done == 0 and total <= room else spans[done : done + max(room, 0)]
                    cost = self._cost(part) if room > 0 else 0
                    full = room <= 0 or (self._depth and self._bytes + cost > self._queue_bytes)
                    if full and not self._closing:
                        self._cond.notify_all()  # wake the worker before waiting for room
                        self._blocked = True
                        self._cond.wait()
                        self._blocked = False
                        before = 0  # the workers may all be waiting again
                        continue
                    if self._closing and len(part) < total - done:
                        part = spans[done:]
                        cost = self._cost(part)
                    self._push(part, cost)
                    done += len(part)
                self.counts["queued"] += total
            else:
                room = self._queue_size - self._depth
                cost = self._cost(spans) if total <= room else 0
                if total <= room and self._bytes + cost <= self._queue_bytes:
                    self._push(spans, cost)
                    taken = total
                else:
                    # Past a bound: take what fits, copied out, so that the part does not
                    # keep the rest of its chunk alive while it waits.
                    part = self._fitting(spans, room, self._queue_bytes - self._bytes)
                    taken = len(part)
                    if taken:
                        self._push(part, self._cost(part))
                    self.counts["dropped_queue_full"] += total - taken
                self.counts["queued"] += taken
            # Wake the senders only when there is news for them, and only as many as
            # can act on it: one per new full batch, or one for the first spans (a
            # partial batch starts its flush_interval). Only senders wait here while
            # the reader offers; a second one woken for the same batch would find
            # nothing and wait again, and each wake-up takes the GIL from the reader.
            size = self._batch_size
            batches = self._depth // size - before // size
            if batches > 0:
                self._cond.notify(batches)
            elif before == 0 and self._depth:
                self._cond.notify()

    def abandon_waiting(self) -> None:
        """Make an ``offer`` waiting for room return (the daemon is stopping)."""
        with self._cond:
            self._abandon = True
            self._cond.notify_all()

    def stop(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (monotonic), then flush the sink."""
        with self._cond:
            self._closing = True
            self._final_deadline = deadline
            self._cond.notify_all()

    def close(self) -> None:
        """Wait for ``stop`` to finish; count what was left and close the sink."""
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, self._final_deadline - time.monotonic()) + 1.0)
        with self._cond:
            left = self._depth
            self._queue.clear()
            self._stores.clear()
            self._depth = 0
            self._bytes = 0
            self.counts["dropped_shutdown"] += left
        if left:
            log.warning("%s: %d spans not delivered before the shutdown timeout", self.name, left)
        with contextlib.suppress(Exception):
            self.sink.close()

    def _next_batch(self) -> tuple[SpanBatch, int] | None:
        with self._cond:
            while not self._depth and not self._closing:
                self._cond.wait()
            if not self._depth:
                return None
            if self._depth < self._batch_size and not self._closing:
                # Let a partial batch fill for at most flush_interval.
                self._cond.wait_for(
                    lambda: self._depth >= self._batch_size or self._closing, self._flush_interval
                )
            queue = self._queue
            want = min(self._batch_size, self._depth)
            chunks: list[Sequence[SpanRecord]] = []
            taken = 0
            while taken < want:
                chunk = queue.popleft()
                if len(chunk) > want - taken:
                    # the rest stays queued and keeps a packed chunk's store alive
                    queue.appendleft(chunk[want - taken :])
                    chunk = chunk[: want - taken]
                    if type(chunk) is not PackedSpans:
                        self._bytes -= records_bytes(chunk)
                else:
                    self._pop(chunk)
                chunks.append(chunk)
                taken += len(chunk)
            self._depth -= taken
            first = self._taken
            self._taken += taken
            if self._blocked:
                self._cond.notify_all()  # room for the replay waiting in offer
            return SpanBatch(chunks), first

    def _run(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                break
            batch, first = taken
            if self._closing:
                deadline = self._final_deadline
            elif self._retry_forever:
                deadline = time.monotonic() + NO_DEADLINE_SECONDS
            else:
                deadline = time.monotonic() + self._retry_window
            if self._retry_forever:
                self._sends[threading.get_ident()] = (time.monotonic(), self._sink_retries())
            try:
                failed = self.sink.send(batch, deadline)
            except Exception:
                log.exception("%s: send failed unexpectedly; %d spans dropped", self.name, len(batch))
                failed = len(batch)
            self._sends.pop(threading.get_ident(), None)
            with self._cond:
                self.counts["delivered"] += len(batch) - failed
                self.counts["failed"] += failed
                if failed:
                    self.counts["failed_sends"] += 1
                if failed == 0:
                    self._failed_since = None
                elif self._failed_since is None:
                    self._failed_since = time.monotonic()
                trim = self._trim_due and not self._depth
                if trim:
                    self._trim_due = False
                advanced = False
                if not (failed and self._retry_forever and self._closing):
                    self._done[first] = first + len(batch)
                    while self._confirmed in self._done:
                        self._confirmed = self._done.pop(self._confirmed)
                        advanced = True
            if advanced and self.on_confirm is not None:
                try:
                    self.on_confirm()
                except Exception:
                    log.exception("%s: recording a confirmed batch failed", self.name)
            if trim and trim_allocator is not None:
                # A backlog drained: its chunks were freed into the heap, where glibc
                # would keep them (the holes between live blocks for good).
                del batch
                trim_allocator()
        with self._cond:
            self._running -= 1
            last = self._running == 0
        if not last:
            return  # the last sender to finish flushes the sink
        try:
            self.sink.flush(max(0.0, self._final_deadline - time.monotonic()))
        except Exception:
            log.exception("%s: flush failed", self.name)


@dataclass
class _Mark:
    mark: object
    queued: tuple[int, ...]  # spans each worker had been given by then


class Acknowledgements:
    """The marks a source gave after its reads, each with how many spans every worker had
    been given by then; a mark is acknowledged (``ack``) as soon as every worker has
    confirmed those spans (see ``SinkWorker.confirmed``): when a batch is confirmed, not
    on a timer. ``advance`` is each worker's ``on_confirm``."""

    def __init__(self, workers: Sequence[SinkWorker], ack: Callable[[object], None]) -> None:
        self._workers = list(workers)
        self._ack = ack
        self._lock = threading.Lock()
        self._marks: deque[_Mark] = deque()
        self._confirmed: object | None = None  # the furthest mark acknowledged

    def add(self, mark: object) -> None:
        """The reader has given the workers every span made before ``mark``."""
        queued = tuple(w.counts["queued"] for w in self._workers)
        with self._lock:
            marks = self._marks
            if marks and marks[-1].queued == queued:
                marks[-1] = _Mark(mark, queued)  # no span since the last mark: this one supersedes it
                return
            marks.append(_Mark(mark, queued))
        if all(w.confirmed >= n for w, n in zip(self._workers, queued, strict=True)):
            self.advance()  # the senders confirmed these spans before the mark was made

    def advance(self) -> None:
        """Acknowledge the furthest mark whose spans every worker has confirmed (the last
        one again when none is new: the source may not have managed to keep it)."""
        with self._lock:
            marks = self._marks
            workers = self._workers
            while marks and all(w.confirmed >= n for w, n in zip(workers, marks[0].queued, strict=True)):
                self._confirmed = marks.popleft().mark
            if self._confirmed is not None:
                self._ack(self._confirmed)
