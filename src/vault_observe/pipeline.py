"""The daemon: a source -> core -> per-sink queues and sender threads -> sinks.

One reader loop, the same for the three sources (sockets, a file replay, a followed
file): it feeds the core what the source read, expires pending requests by the
source's clock, and hands the spans to the sink workers. The reader never waits on a
sink. Each sink has its own bounded queue and sender threads; when a queue is full,
new spans for that sink are dropped and counted, so a slow or dead sink never slows
the reader or the other sinks. Only a file replay, which has no Vault to hold up,
waits for room instead; and in follow mode, where the file is the buffer, a failing
sink is retried until it takes the batch, and the follow source writes its
checkpoint as the sinks confirm batches (the loop acknowledges its marks).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from . import core as core_module
from . import sd_notify
from .config import Config
from .counters import SinkState, Snapshot
from .errors import file_error
from .framing import FramingCounters
from .metrics import Summary, is_internal, undelivered
from .ratelog import RateLimitedLog
from .sink_worker import Acknowledgements, SinkWorker
from .sinks.base import Sink

if TYPE_CHECKING:
    from .metrics_http import MetricsServer
    from .sources.base import Read, Source
    from .sources.follow import FileFollower
    from .sources.sockets import SocketSource

log = logging.getLogger("vault_observe")

POLL_SECONDS = 0.2
SWITCH_INTERVAL = 0.0005
EXPIRE_EVERY_NS = 200_000_000
# Expiry and the final flush hand the sinks at most this many spans at a time, so a
# mass expiry never holds all its spans at once.
EMIT_CHUNK = 8192
BAD_LINE_COUNTERS = ("malformed", "invalid", "oversize", "unknown_type", "no_id")
FOLLOW_QUEUE_BATCHES = 4  # follow mode: a sink's queue holds at most this many batches


def _share(offset: int, path: str) -> float:
    """How much of the file at ``path`` lies before ``offset`` (1.0 when it is gone)."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return 1.0
    return offset / size if size else 1.0


@contextlib.contextmanager
def _redirect_logging(bar: Any) -> Iterator[None]:
    """While a progress bar shows, log lines are written above it instead of through it."""
    if bar is None:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield


def _worker_counters(worker: SinkWorker) -> dict[str, int]:
    """A sink's counters: its worker's, then the sink's own."""
    stats = dict(worker.counts)
    stats["queue_depth"] = worker.depth
    stats["queue_bytes"] = worker.queued_bytes
    try:
        for key, value in worker.sink.stats().items():
            stats.setdefault(key, value)
    except Exception:
        log.debug("stats of %s failed", worker.name, exc_info=True)
    return stats


class Daemon:
    """Reads from sockets (or a file), correlates, and feeds the sink workers."""

    def __init__(self, config: Config, sinks: Sequence[Sink] | None = None) -> None:
        self.config = config
        if sinks is None:
            from .sinks.factory import build_sinks

            sinks = build_sinks(config)
        self.core = core_module.Core(
            ttl_s=config.ttl,
            max_pending=config.max_pending,
            max_line_bytes=config.max_line_bytes,
            prefix=config.prefix.encode("utf-8"),
            flatten_arrays=config.flatten_arrays,
            include=config.include,
            exclude=config.exclude,
            sample_rate=config.sample_rate,
            trace_context=config.trace_context,
            pending_attrs_bytes=config.pending_attrs_bytes,
            # sender threads then run while the reader parses
            release_gil=bool(sinks),
        )
        self.metrics_server: MetricsServer | None = None
        if config.metrics_address is not None:
            from .metrics_http import MetricsServer

            # binds in start
            self.metrics_server = MetricsServer(
                config.metrics_address, config.health_failure_seconds, self.snapshot
            )
            sinks = [*sinks, self.metrics_server.sink]
        self.framing = FramingCounters()
        self.workers = self.make_workers(sinks, config)
        # workers of sink sets a reload replaced: draining, then kept for their counts
        self.retired_workers: list[SinkWorker] = []
        # SIGHUP: a new Config from the same flags, variables and (re-read) config file
        self.reload_config: Callable[[], Config] | None = None
        self._reload_requested = False
        self.source: Source | None = None  # the one being read, of any kind
        self.sockets: SocketSource | None = None  # the source, when it is the sockets
        self.follower: FileFollower | None = None  # the source, when following a file
        self._expired_ns = 0  # the latest time pending requests were expired by
        self.reread_lines = 0  # follow mode: lines read again to rebuild pending requests
        self.reread_spans = 0  # ... and the spans they made, delivered before the restart
        self.summary = Summary(self.snapshot)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._capture: IO[bytes] | None = None
        self._bad_log = RateLimitedLog(log, 10.0)
        self._bad_seen = dict.fromkeys((*BAD_LINE_COUNTERS, "truncated", "reserved_keys"), 0)
        self._trimmed_seen = 0
        self.started = threading.Event()  # set once every listener is bound
        self.result: dict[str, Any] | None = None
        self._next_summary = time.monotonic() + config.summary_interval

    def snapshot(self) -> Snapshot:
        """Every counter now, as plain data: what the summary, /metrics and /healthz read."""
        workers = self.workers
        return Snapshot(
            counters=self._counters(workers),
            sinks=tuple(
                SinkState(worker.name, worker.failing_since, worker.depth, worker.queue_size)
                for worker in workers
                if not is_internal(worker.sink)
            ),
            max_pending=self.config.max_pending,
            queue_bytes=self.config.queue_bytes,
        )

    def _counters(self, workers: Sequence[SinkWorker]) -> dict[str, Any]:
        """The core's, framing's, sources' and each sink's counters."""
        out: dict[str, Any] = dict(self.core.counters())
        out["oversize"] += self.framing.oversize
        out["bytes"] = self.framing.bytes
        out["truncated"] = self.framing.truncated
        out["pending"] = self.core.pending
        source = self.sockets
        follower = self.follower
        if follower is not None:
            follow_stats = follower.stats
            out["rotations"] = follow_stats.rotations
            out["truncations"] = follow_stats.truncations
            out["lost_files"] = follow_stats.lost_files
            out["reread_lines"] = self.reread_lines
            out["reread_spans"] = self.reread_spans
            out["checkpoint_errors"] = follow_stats.checkpoint_errors
        out["connections"] = source.connections_accepted if source is not None else 0
        out["open_connections"] = source.open_connections if source is not None else 0
        sinks: dict[str, dict[str, int]] = {}
        for worker in workers:
            if is_internal(worker.sink):
                # The latency histogram is fed like a sink, but it is not one to an operator.
                key = getattr(worker.sink, "summary_key", None)
                if key:
                    out[key] = {**worker.counts, "queue_depth": worker.depth, **worker.sink.stats()}
                continue
            sinks[worker.name] = _worker_counters(worker)
        # A sink set that a reload replaced still counts (the counters only grow).
        for worker in self.retired_workers:
            stats = _worker_counters(worker)
            current = sinks.setdefault(worker.name, dict.fromkeys(stats, 0))
            for key, value in stats.items():
                if isinstance(value, int | float):
                    current[key] = current.get(key, 0) + value
        out["sinks"] = sinks
        return out

    @staticmethod
    def make_workers(sinks: Sequence[Sink], config: Config) -> list[SinkWorker]:
        queue_size = config.queue_size
        if config.follow:
            # The file is the buffer: the queue only has to keep the senders busy, and
            # its memory stays that small however long a sink is down.
            queue_size = min(queue_size, FOLLOW_QUEUE_BATCHES * config.batch_size)
        return [
            SinkWorker(
                sink,
                queue_size=queue_size,
                queue_bytes=config.queue_bytes,
                batch_size=config.batch_size,
                flush_interval=config.flush_interval,
                retry_window=config.retry_window,
                block_when_full=config.input is not None,
                # follow mode: the file is the buffer, so a batch waits for its sink
                retry_forever=config.follow,
            )
            for sink in sinks
        ]

    # -- running

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (sockets) or the end of the input; return the exit code.
        SIGHUP reloads the settings (see ``reload``) and never ends the daemon."""
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        # Hand the GIL over sooner: the sink threads wake right after compressing or
        # sending (C code that released it) instead of waiting out the default 5 ms.
        switch_interval = sys.getswitchinterval()
        # What start-up made (modules, config, sinks) lives as long as the process:
        # leave it out of every later full collection.
        gc.freeze()
        if core_module.IMPLEMENTATION == "c":
            # This process is the daemon's own (not an embedding application's):
            # keep its multi-MiB buffers on the heap, reused instead of mapped anew.
            from ._spans import tune_allocator

            tune_allocator()
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            self._read_input()
            if self.config.input is not None and not self.config.follow:
                return self._replay_status()
        finally:
            sys.setswitchinterval(switch_interval)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 0

    def _replay_status(self) -> int:
        """1 when a replay could not deliver every span (scripts and CI rely on it), else 0;
        the last log line says how many, for which sink."""
        lost = undelivered(self.result or self.summary.counters())
        if not lost:
            return 0
        log.error(
            "replay incomplete: %d spans not delivered (%s)",
            sum(failed + dropped for failed, dropped in lost.values()),
            "; ".join(
                f"{name}: {failed} failed, {dropped} dropped" for name, (failed, dropped) in lost.items()
            ),
        )
        return 1

    def start(self) -> None:
        """Run in a background thread (for embedding and tests); returns once reading."""
        self._thread = threading.Thread(target=self._read_input, name="reader", daemon=True)
        self._thread.start()
        while not self.started.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError("the daemon failed to start; see the log")

    def stop(self) -> dict[str, Any]:
        """Stop a daemon started with ``start`` and return the final counters."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join()
        return self.result or self.summary.counters()

    def request_stop(self) -> None:
        self._stop.set()
        if self.source is not None:
            self.source.wake()
        for worker in self.workers:
            worker.abandon_waiting()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.request_reload()
            return
        log.info("received %s: finishing", signal.Signals(signum).name)
        self.request_stop()

    def request_reload(self) -> None:
        """Reload the settings on the reader's thread, between two reads (SIGHUP)."""
        self._reload_requested = True
        if self.source is not None:
            self.source.wake()

    def _read_input(self) -> None:
        if self.config.follow:
            self.follow()
        elif self.config.input is not None:
            self.replay()
        else:
            self.serve()

    def serve(self) -> None:
        """Read the sockets until a stop, then what Vault had already written to them."""
        from .config import DEFAULT_LISTENER
        from .sources.sockets import SocketSource

        config = self.config
        passed = sd_notify.listen_fds()  # systemd socket activation
        listeners = config.listeners
        if passed and listeners == [DEFAULT_LISTENER]:
            listeners = []  # told nothing: the passed sockets are the ones
        source = SocketSource(
            listeners,
            socket_mode=config.socket_mode,
            max_line_bytes=config.max_line_bytes,
            counters=self.framing,
            passed=passed,
        )
        source.start()
        self.sockets = source
        if not any(not is_internal(worker.sink) for worker in self.workers):
            log.warning(
                "no sink is configured (--stdout, --zipkin, --honeycomb, --otlp): spans are "
                "counted and discarded"
            )
        self._read(source)

    def replay(self) -> None:
        """Read the whole input file, then flush everything."""
        from .sources.file import FileSource

        assert self.config.input is not None
        source = FileSource(
            self.config.input, max_line_bytes=self.config.max_line_bytes, counters=self.framing
        )
        source.start()
        size = source.size
        if size is not None:
            self.summary.share_read = lambda: self.framing.bytes / size if size else 1.0
        self._read(source, self._progress_bar(size))

    def follow(self) -> None:
        """Tail the input file across rotation; the follow source checkpoints what every
        sink has confirmed.

        After a restart, the lines from where the oldest then-pending request was read up
        to the checkpoint are read again first: that rebuilds the pending requests, and
        the spans they make (delivered before the restart) are discarded and counted
        (``reread_spans``). A stop therefore keeps pending requests pending instead of
        sending them as unanswered spans.
        """
        from .sources.follow import PIECE_LINES, FileFollower

        config = self.config
        assert config.input is not None
        follower = FileFollower(
            config.input,
            max_line_bytes=config.max_line_bytes,
            counters=self.framing,
            checkpoint=config.checkpoint,
        )
        follower.start()
        self.follower = follower
        self.summary.share_read = lambda: _share(follower.position.offset, config.input or "")
        if config.checkpoint:
            log.info(
                "following %s: after a kill -9 the restart may re-send up to %d spans to each sink",
                config.input,
                self.resend_bound(PIECE_LINES),
            )
        self._read(follower)

    def _read(self, source: Source, bar: Any = None) -> None:
        """The reader loop, the same for every source: feed the core each read, expire by
        the source's clock (its lines' own times after each read, a live clock every
        EXPIRE_EVERY_NS), hand the spans to the sink workers, and give the source back
        each mark once every sink has handled the spans made before it. On a stop, the
        source takes no new input and what is already on its way in is read."""
        core = self.core
        self.source = source
        acks = Acknowledgements(self.workers, source.ack)
        for worker in self.workers:
            worker.on_confirm = acks.advance
        last_expire = time.monotonic_ns()
        try:
            self._begin()
            ready = self._notify_ready(source)
            with _redirect_logging(bar):
                while not self._stop.is_set():
                    read = source.read(POLL_SECONDS)
                    if read is None:
                        break  # the end of the input
                    if not ready:
                        ready = self._notify_ready(source)
                    if read.reread:
                        self._reread(read)
                        continue
                    now = read.now_ns
                    for chunk in read.chunks:
                        self._feed(chunk.lines, now, chunk.offset)
                    if now is None:
                        self._expire(core.watermark_ns)
                    elif now - last_expire >= EXPIRE_EVERY_NS:
                        self._expire(now)
                        last_expire = now
                    self._dispatch()
                    if bar is not None:
                        bar.update(self.framing.bytes - bar.n)
                    self._tick()
                    if any(w.counts["dropped_shutdown"] for w in self.workers):
                        break  # stopping while waiting for room: the rest is read again after a restart
                    mark = source.mark(core.oldest_pending_mark(), self._expired_ns)
                    if mark is not None:
                        acks.add(mark)
                        if not read.chunks:
                            acks.advance()  # a tail of lines that made no span
            if ready:
                sd_notify.notify("STOPPING=1")
            # Take no new input, and read what is on its way in (Vault's connections).
            source.stop(self.config.shutdown_timeout)
            while (read := source.read(0.0)) is not None:
                for chunk in read.chunks:
                    self._feed(chunk.lines, read.now_ns, chunk.offset)
        finally:
            source.close()
            if bar is not None:
                bar.close()
            self._finish()
            acks.advance()  # what the sinks confirmed while stopping

    @staticmethod
    def _notify_ready(source: Source) -> bool:
        """Tell the service manager once the source is reading; True once told."""
        status = source.ready()
        if status is None:
            return False
        sd_notify.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        return True

    def _reread(self, read: Read) -> None:
        """Lines read again after a restart to rebuild the requests pending at the last
        stop: their spans were delivered before it, and are discarded and counted."""
        core = self.core
        for chunk in read.chunks:
            core.feed(chunk.lines, None, chunk.offset)
        now = read.now_ns if read.now_ns is not None else core.watermark_ns
        before = core.pending
        core.expire(now)
        if core.pending < before:
            self._expired_ns = max(self._expired_ns, now)
        self.reread_spans += len(core.drain_spans())
        self.reread_lines = int(core.counters()["lines"])

    def _progress_bar(self, size: int | None) -> Any:
        """A progress bar of the replay on stderr, only for a person watching a terminal
        (never in a pipe, a journal, or with --log-format json)."""
        if self.config.log_format != "text" or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=os.path.basename(self.config.input or "") or "stdin",
            file=sys.stderr,
            mininterval=0.5,
            leave=False,
        )

    def _tick(self) -> None:
        """Between reads, in every mode: a requested reload; the periodic summary with
        progress figures."""
        if self._reload_requested:
            self._reload_requested = False
            from .reload import reload

            reload(self)
        now = time.monotonic()
        if now >= self._next_summary:
            self._next_summary = now + self.config.summary_interval
            self.summary.log("summary", progress=True)

    def resend_bound(self, piece_lines: int) -> int:
        """Spans a kill -9 may send again to one sink: the batches in flight on every
        sender, one piece of lines whose spans were confirmed only in part, and with
        several sinks what one may have delivered ahead of the slowest (its queue)."""
        real = [
            w for w in self.workers if self.metrics_server is None or w.sink is not self.metrics_server.sink
        ]
        bound = sum(w.senders for w in real) * self.config.batch_size + piece_lines
        if len(real) > 1:
            bound += max(w.queue_size for w in real)
        return bound

    # -- internals

    def _begin(self) -> None:
        """Start what every mode shares: self-metrics, capture file, sink workers."""
        if self.metrics_server is not None:
            self.metrics_server.start()
        self._open_capture()
        for worker in self.workers:
            worker.start()
        self.started.set()

    def reopen_capture(self) -> None:
        """Close the --capture file and open it again (after logrotate moved it)."""
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self._open_capture()

    def _open_capture(self) -> None:
        if self.config.capture:
            try:
                self._capture = open(self.config.capture, "ab")  # noqa: SIM115 - closed in _finish
            except OSError as exc:
                raise file_error("--capture", self.config.capture, exc) from None

    def _feed(self, chunk: bytes | memoryview, now_ns: int | None, mark: int = 0) -> None:
        if self._capture is not None:
            self._capture.write(chunk)
        self.core.feed(chunk, now_ns, mark)

    def _expire(self, now_ns: int) -> None:
        """Requests due by ``now_ns`` become spans, handed on a chunk at a time."""
        core = self.core
        pending = core.pending
        while True:
            before = core.pending
            core.expire(now_ns, EMIT_CHUNK)
            if before - core.pending < EMIT_CHUNK:
                break
            self._dispatch()
        if core.pending < pending:
            self._expired_ns = max(self._expired_ns, now_ns)

    def _dispatch(self) -> None:
        spans = self.core.drain_spans()
        if spans:
            for worker in self.workers:
                worker.offer(spans)
        self._report_bad_lines()

    def _report_bad_lines(self) -> None:
        counts = self.core.counters()
        counts["truncated"] = self.framing.truncated
        counts["oversize"] += self.framing.oversize
        samples: dict[str, tuple[str, bytes]] | None = None
        for name, seen in self._bad_seen.items():
            now = counts[name]
            if now == seen:
                continue
            self._bad_seen[name] = now
            if samples is None:
                samples = self.core.take_bad_samples()
            sample = samples.get(name)
            if name == "reserved_keys":  # the line was used; only those keys were dropped
                self._bad_log(
                    name,
                    logging.WARNING,
                    "dropped %d entry key(s) under 'vault_observe.' (%d in all): the daemon's own "
                    "attributes use that prefix; latest line's first bytes %r",
                    now - seen,
                    now,
                    sample[1] if sample is not None else b"",
                )
            elif sample is not None:
                self._bad_log(
                    name,
                    logging.WARNING,
                    "skipped %d %s line(s) (%d in all); latest: %s, first bytes %r",
                    now - seen,
                    name,
                    now,
                    sample[0],
                    sample[1],
                )
            else:
                self._bad_log(
                    name, logging.WARNING, "skipped %d %s line(s) (%d in all)", now - seen, name, now
                )
        trimmed = counts["attrs_trimmed"]
        if trimmed != self._trimmed_seen:
            self._bad_log(
                "attrs_trimmed",
                logging.WARNING,
                "%d unanswered or evicted span(s) carry only part of their request's attributes "
                "(over --pending-attrs-bytes %d; %d in all)",
                trimmed - self._trimmed_seen,
                self.config.pending_attrs_bytes,
                trimmed,
            )
            self._trimmed_seen = trimmed

    def _finish(self) -> None:
        """End of input or stop: every pending request becomes a span; flush every sink.

        Following with a checkpoint, pending requests stay pending: the checkpoint says
        where they were read, and the next run reads them again.
        """
        if not (self.config.follow and self.config.checkpoint):
            while True:
                self.core.flush(EMIT_CHUNK)
                self._dispatch()
                if not self.core.pending:
                    break
        self._dispatch()
        deadline = time.monotonic() + self.config.shutdown_timeout
        for worker in self.workers:
            worker.stop(deadline)
        for worker in self.workers:
            worker.close()
        for worker in self.retired_workers:  # sink sets a reload replaced, maybe still draining
            worker.close()
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self.result = self.summary.counters()
        self.summary.log("final summary", progress=True, since_start=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
