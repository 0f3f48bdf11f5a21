"""The daemon: sources -> core -> per-sink queues and worker threads -> sinks.

The reader (one thread) never waits on a sink. Each sink has its own bounded queue
and worker thread; when a queue is full, new spans for that sink are dropped and
counted, so a slow or dead sink never slows the reader or the other sinks. Only a
file replay, which has no Vault to hold up, waits for room instead; and in follow
mode, where the file is the buffer, a failing sink is retried until it takes the
batch, and the checkpoint is written as the sinks confirm batches.
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
from collections import deque
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
from .sink_worker import SinkWorker
from .sinks.base import Sink

if TYPE_CHECKING:
    from .metrics_http import MetricsServer
    from .sources.follow import Checkpoint, FileFollower, Saved
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


class FollowProgress:
    """Follow mode's checkpoint: the positions the reader has passed, each with how many
    spans every sink had been given by then, saved as soon as every sink has confirmed
    those spans (see ``SinkWorker.confirmed``): when a batch is confirmed, not on a timer.
    """

    def __init__(
        self, checkpoint: Checkpoint | None, workers: Sequence[SinkWorker], saved: Saved | None
    ) -> None:
        self._checkpoint = checkpoint
        self._workers = list(workers)
        self._lock = threading.Lock()
        self._marks: deque[tuple[Saved, tuple[int, ...]]] = deque()
        self.saved = saved
        self._unsaved: Saved | None = None  # confirmed, but writing it failed
        self.saves = 0
        self.save_errors = 0
        self._errlog = RateLimitedLog(log, 60.0)

    def mark(self, state: Saved) -> None:
        """The reader has given the sinks every span of the lines before ``state.position``."""
        counts = tuple(w.counts["queued"] for w in self._workers)
        with self._lock:
            marks = self._marks
            if marks and marks[-1][1] == counts:
                marks[-1] = (state, counts)  # no span since the last mark: this one supersedes it
                return
            marks.append((state, counts))
        if all(w.confirmed >= n for w, n in zip(self._workers, counts, strict=True)):
            self.advance()  # the senders confirmed these spans before the mark was made

    @property
    def waiting(self) -> int:
        """Positions not yet confirmed by every sink."""
        return len(self._marks)

    def advance(self) -> None:
        """Save the furthest position whose spans every sink has confirmed."""
        with self._lock:
            done: Saved | None = None
            marks = self._marks
            workers = self._workers
            while marks and all(w.confirmed >= n for w, n in zip(workers, marks[0][1], strict=True)):
                done = marks.popleft()[0]
            if done is None:
                done = self._unsaved
            if done is None or done == self.saved:
                return
            if self._checkpoint is not None:
                try:
                    self._checkpoint.save(done)
                except OSError as exc:
                    # Reading and sending go on; a restart would resume at the last
                    # checkpoint written, re-sending what was delivered since.
                    self._unsaved = done
                    self.save_errors += 1
                    self._errlog(
                        "checkpoint",
                        logging.ERROR,
                        "cannot write the checkpoint %s: %s (%d failed writes)",
                        self._checkpoint.path,
                        exc,
                        self.save_errors,
                    )
                    return
                self.saves += 1
            self._unsaved = None
            self.saved = done


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

            # binds in serve/replay
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
        self.source: SocketSource | None = None
        self.follower: FileFollower | None = None
        self.progress: FollowProgress | None = None
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
        source = self.source
        follower = self.follower
        if follower is not None:
            follow_stats = follower.stats
            out["rotations"] = follow_stats.rotations
            out["truncations"] = follow_stats.truncations
            out["lost_files"] = follow_stats.lost_files
            out["reread_lines"] = self.reread_lines
            out["reread_spans"] = self.reread_spans
            progress = self.progress
            out["checkpoint_errors"] = progress.save_errors if progress is not None else 0
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
            if self.config.follow:
                self.follow()
            elif self.config.input is not None:
                self.replay()
                return self._replay_status()
            else:
                self.serve()
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
        target = (
            self.follow
            if self.config.follow
            else self.replay
            if self.config.input is not None
            else self.serve
        )
        self._thread = threading.Thread(target=target, name="reader", daemon=True)
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

    def serve(self) -> None:
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
        source.open()
        self.source = source
        if not any(not is_internal(worker.sink) for worker in self.workers):
            log.warning(
                "no sink is configured (--stdout, --zipkin, --honeycomb, --otlp): spans are "
                "counted and discarded"
            )
        last_expire = time.monotonic_ns()
        try:
            self._begin()
            sd_notify.notify("READY=1\nSTATUS=listening on " + ", ".join(source.bound_addresses()))
            while not self._stop.is_set():
                chunks = source.poll(POLL_SECONDS)
                now = time.monotonic_ns()
                for chunk in chunks:
                    self._feed(chunk, now)
                if now - last_expire >= EXPIRE_EVERY_NS:
                    self._expire(now)
                    last_expire = now
                self._dispatch()
                self._tick()
            # Stop accepting, then read each connection until Vault has nothing more in it.
            sd_notify.notify("STOPPING=1")
            source.stop_accepting()
            now = time.monotonic_ns()
            for chunk in source.drain(config.shutdown_timeout):
                self._feed(chunk, now)
        finally:
            source.close()
            self._finish()

    def replay(self) -> None:
        """Read the whole input file, then flush everything."""
        from .sources.file import read_file

        config = self.config
        assert config.input is not None
        core = self.core
        size = None
        if config.input != "-":
            try:
                size = os.stat(config.input).st_size  # a missing file is named before anything starts
                open(config.input, "rb").close()
            except OSError as exc:
                raise file_error("--input", config.input, exc) from None
            self.summary.share_read = lambda: self.framing.bytes / size if size else 1.0
        bar = self._progress_bar(size)
        try:
            self._begin()
            with _redirect_logging(bar):
                for chunk in read_file(
                    config.input, max_line_bytes=config.max_line_bytes, counters=self.framing
                ):
                    self._feed(chunk, None)
                    self._expire(core.watermark_ns)
                    self._dispatch()
                    if bar is not None:
                        bar.update(self.framing.bytes - bar.n)
                    self._tick()
                    if self._stop.is_set():
                        break
        finally:
            if bar is not None:
                bar.close()
            self._finish()

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

    def follow(self) -> None:
        """Tail the input file across rotation; checkpoint what every sink has confirmed.

        After a restart, the lines from where the oldest then-pending request was read up
        to the checkpoint are read again first: that rebuilds the pending requests, and
        the spans they make (delivered before the restart) are discarded and counted
        (``reread_spans``). A stop therefore keeps pending requests pending instead of
        sending them as unanswered spans.
        """
        from .sources.follow import PIECE_LINES, Checkpoint, FileFollower, Saved

        config = self.config
        assert config.input is not None
        checkpoint = Checkpoint(config.checkpoint) if config.checkpoint else None
        saved = checkpoint.load() if checkpoint else None
        follower = FileFollower(
            config.input,
            max_line_bytes=config.max_line_bytes,
            counters=self.framing,
            start=saved,
            ignore=(config.checkpoint,) if config.checkpoint else (),
        )
        self.follower = follower
        self.summary.share_read = lambda: _share(follower.position.offset, config.input or "")
        progress = FollowProgress(checkpoint, self.workers, saved)
        self.progress = progress
        for worker in self.workers:
            worker.on_confirm = progress.advance
        core = self.core
        expired_ns = saved.expired_ns if saved is not None else 0
        replaying = saved is not None and bool(saved.replay)
        if checkpoint is not None:
            log.info(
                "following %s: after a kill -9 the restart may re-send up to %d spans to each sink",
                config.input,
                self.resend_bound(PIECE_LINES),
            )
        try:
            self._begin()
            ready = False
            for chunk in follower.follow(self._stop.is_set):
                if not ready and follower.position.inode:  # the file is open
                    sd_notify.notify("READY=1")
                    ready = True
                if replaying and (chunk is None or not chunk.replay):
                    # At the checkpoint: expire what the last run had expired by then.
                    replaying = False
                    assert saved is not None
                    core.expire(saved.expired_ns)
                    self._discard()
                    self.reread_lines = int(core.counters()["lines"])
                if chunk is not None:
                    if chunk.replay:
                        core.feed(chunk.lines, None, chunk.mark)
                    else:
                        self._feed(chunk.lines, None, chunk.mark)
                    now = core.watermark_ns
                else:
                    now = time.time_ns()  # idle: the file's times are Vault's wall clock
                pending = core.pending
                if chunk is not None and chunk.replay:
                    core.expire(now)
                else:
                    self._expire(now)
                if core.pending < pending:
                    # Only an expiry that took requests out matters to a replay.
                    expired_ns = max(expired_ns, now)
                if chunk is not None and chunk.replay:
                    self._discard()
                    continue
                self._dispatch()
                self._tick()
                if any(w.counts["dropped_shutdown"] for w in self.workers):
                    break  # stopping while waiting for room: the rest is read again after a restart
                oldest = core.oldest_pending_mark()
                replay = () if oldest is None else follower.replay_files(oldest)
                progress.mark(Saved(follower.position, replay, expired_ns))
                if chunk is None:
                    progress.advance()  # a tail of lines that made no span
                if self._stop.is_set():
                    break
        finally:
            sd_notify.notify("STOPPING=1")
            self._finish()
            progress.advance()

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

    def _discard(self) -> None:
        """Spans of lines read again after a restart: delivered before it."""
        self.reread_spans += len(self.core.drain_spans())

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
        while True:
            before = core.pending
            core.expire(now_ns, EMIT_CHUNK)
            if before - core.pending < EMIT_CHUNK:
                return
            self._dispatch()

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
            worker.begin_stop(deadline)
        for worker in self.workers:
            worker.join()
        for worker in self.retired_workers:  # sink sets a reload replaced, maybe still draining
            worker.join()
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self.result = self.summary.counters()
        self.summary.log("final summary", progress=True, since_start=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
