"""The daemon's counters logged as a summary, and what the replay's exit status reads of them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .counters import SnapshotSource
from .logs import SUMMARY_FIELDS, SUMMARY_TITLE

log = logging.getLogger("vault_observe")


class Summary:
    """Logs the counters of the snapshots the daemon publishes."""

    def __init__(self, snapshot: SnapshotSource) -> None:
        self._snapshot = snapshot
        self._started = self._last = (time.monotonic(), 0, 0)  # (when, lines, bytes)
        # the share of the input file read (0..1), for --input
        self.share_read: Callable[[], float] | None = None

    def counters(self) -> dict[str, Any]:
        return self._snapshot().counters

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
