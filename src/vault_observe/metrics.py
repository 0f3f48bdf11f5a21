"""The daemon's own counters, gathered in one place and logged as a summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .logs import SUMMARY_FIELDS, SUMMARY_TITLE

if TYPE_CHECKING:
    from .pipeline import Daemon
    from .sink_worker import SinkWorker

log = logging.getLogger("vault_observe")


class Summary:
    """Reads every counter of a Daemon: core, framing, sources and each sink."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._started = self._last = (time.monotonic(), 0, 0)  # (when, lines, bytes)
        # the share of the input file read (0..1), for --input
        self.share_read: Callable[[], float] | None = None

    def counters(self) -> dict[str, Any]:
        daemon = self._daemon
        out: dict[str, Any] = dict(daemon.core.counters())
        out["oversize"] += daemon.framing.oversize
        out["bytes"] = daemon.framing.bytes
        out["truncated"] = daemon.framing.truncated
        out["pending"] = daemon.core.pending
        source = daemon.source
        follower = daemon.follower
        if follower is not None:
            follow_stats = follower.stats
            out["rotations"] = follow_stats.rotations
            out["truncations"] = follow_stats.truncations
            out["lost_files"] = follow_stats.lost_files
            out["reread_lines"] = daemon.reread_lines
            out["reread_spans"] = daemon.reread_spans
            progress = daemon.progress
            out["checkpoint_errors"] = progress.save_errors if progress is not None else 0
        out["connections"] = source.connections_accepted if source is not None else 0
        out["open_connections"] = source.open_connections if source is not None else 0
        sinks: dict[str, dict[str, int]] = {}
        for worker in daemon.workers:
            if is_internal(worker.sink):
                # The latency histogram is fed like a sink, but it is not one to an operator.
                key = getattr(worker.sink, "summary_key", None)
                if key:
                    out[key] = {**worker.counts, "queue_depth": worker.depth, **worker.sink.stats()}
                continue
            sinks[worker.name] = _worker_stats(worker)
        # A sink set that a reload replaced still counts (the counters only grow).
        for worker in getattr(daemon, "retired_workers", ()):
            stats = _worker_stats(worker)
            current = sinks.setdefault(worker.name, dict.fromkeys(stats, 0))
            for key, value in stats.items():
                if isinstance(value, int | float):
                    current[key] = current.get(key, 0) + value
        out["sinks"] = sinks
        return out

    def log(self, title: str, *, progress: bool = False, since_start: bool = False) -> None:
        """One log line of every counter; with ``progress``, the rates since the last
        such line (or ``since_start``) and the share of the input file read first.
        A JSON log gets them as fields of their own."""
        counters = self.counters()
        fields = dict(counters)
        text = ""
        if progress:
            now = time.monotonic()
            when, lines, size = self._started if since_start else self._last
            self._last = (now, counters["lines"], counters["bytes"])
            seconds = max(now - when, 1e-9)
            rate = (counters["lines"] - lines) / seconds
            megabytes = (counters["bytes"] - size) / seconds / 1e6
            fields["lines_per_second"] = round(rate, 1)
            fields["mb_per_second"] = round(megabytes, 3)
            text = f"{rate:.0f} lines/s, {megabytes:.2f} MB/s"
            if self.share_read is not None:
                share = min(1.0, self.share_read())
                fields["read_fraction"] = round(share, 4)
                text += f", {share:.1%} of the input read"
            text += "; "
        log.info(
            "%s: %s%s",
            title,
            text,
            format_counters(counters),
            extra={SUMMARY_TITLE: title, SUMMARY_FIELDS: fields},
        )


def _worker_stats(worker: SinkWorker) -> dict[str, int]:
    stats = dict(worker.counts)
    stats["queue_depth"] = worker.depth
    stats["queue_bytes"] = worker.queued_bytes
    try:
        for key, value in worker.sink.stats().items():
            stats.setdefault(key, value)
    except Exception:
        log.debug("stats of %s failed", worker.name, exc_info=True)
    return stats


def is_internal(sink: object) -> bool:
    """A sink of the daemon's own (the latency histogram): kept out of the sinks'
    metrics, health and the replay's exit status."""
    return bool(getattr(sink, "internal", False))


def undelivered(counters: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Sink name -> (spans failed, spans dropped), for the sinks that lost any."""
    out = {}
    for name, stats in counters.get("sinks", {}).items():
        failed = int(stats.get("failed", 0)) + int(stats.get("unencodable", 0))
        dropped = sum(int(value) for key, value in stats.items() if key.startswith("dropped_"))
        if failed or dropped:
            out[name] = (failed, dropped)
    return out


def format_counters(counters: dict[str, Any]) -> str:
    parts = [f"{key}={value}" for key, value in counters.items() if not isinstance(value, dict)]
    groups = dict(counters.get("sinks", {}))
    if "latency" in counters:
        groups["latency"] = counters["latency"]
    for name, stats in groups.items():
        parts.append(f"{name}[" + " ".join(f"{k}={v}" for k, v in stats.items()) + "]")
    return " ".join(parts)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host means every interface) -> (host, port).

    Port 0 asks the system for a free port.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("expected HOST:PORT, such as 127.0.0.1:9464", setting="metrics_address", value=text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(
            "write an IPv6 address in brackets, [::1]:9464", setting="metrics_address", value=text
        )
    return host, int(port_text)
