"""Prometheus self-metrics and a health check, served over HTTP on their own thread.

Nothing here runs on the reader's path. ``DaemonCollector`` reads a snapshot of
the daemon's counters (``counters.Snapshot``) only when Prometheus scrapes. The
Vault latency histogram is fed by ``MetricsSink``, an ordinary sink behind its own
bounded queue and worker thread: when it falls behind, its spans are dropped and
counted like any sink's.

Endpoints: ``/metrics`` (Prometheus text format, or OpenMetrics when asked for)
and ``/healthz`` (200, or 503 once a sink has been failing for longer than
``--health-failure-seconds``).
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from . import __version__
from . import core as core_module
from .address import parse_address
from .counters import Snapshot, SnapshotSource
from .errors import listen_error
from .model import PAIRED, SpanRecord
from .ratelog import RateLimitedLog
from .sinks.base import LocalSink

log = logging.getLogger("vault_observe")

# Vault answers most requests in about a millisecond; password logins and RSA key
# work take 100 ms and more, large PKI keys seconds. Past 10 s, +Inf is enough.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_LABELS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")  # as Prometheus writes them
# Histogram label sets kept apart at most; the rest share operation=mount="(other)".
MAX_SERIES = 2000
OVERFLOW_LABEL = "(other)"

SKIP_REASONS = ("malformed", "invalid", "oversize", "truncated", "unknown_type", "no_id")
# (label value, counter name)
PAIRINGS = (("paired", "paired"), ("orphan", "orphans"), ("unanswered", "unanswered"), ("evicted", "evicted"))
DROP_REASONS = (("queue_full", "dropped_queue_full"), ("shutdown", "dropped_shutdown"))
# (key in the sink's counters, metric name, help); sinks without the key get no sample.
SINK_COUNTERS = (
    ("delivered", "sink_spans_delivered", "Spans the sink delivered"),
    (
        "failed",
        "sink_spans_failed",
        "Spans the sink could not deliver: refused, or still failing at the end of --retry-window",
    ),
    ("failed_sends", "sink_export_failures", "Batches handed to the sink that were not delivered in full"),
    (
        "unencodable",
        "sink_spans_unencodable",
        "Spans the sink dropped because they could not be encoded (part of failed; each logged "
        "with its request id)",
    ),
    (
        "retries",
        "sink_retries",
        "Sends the sink repeated after a transient failure (no answer, timeout, 429 or 5xx)",
    ),
    ("batches", "sink_batches", "Batches the sink posted or wrote"),
    ("bytes", "sink_sent_bytes", "Bytes the sink sent (after compression)"),
)

# ---------------------------------------------------------------- the latency histogram


class _Series:
    """One label set of the histogram: per-bucket (not cumulative) counts and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class MetricsSink(LocalSink, Collector):
    """Feeds ``vault_request_duration_seconds`` from PAIRED spans (the only ones with
    a real duration), labelled by the operation and mount the core read from the
    response (``SpanRecord.operation``, ``.mount``). Never fails.

    The sink keeps its own bucket counts rather than a ``prometheus_client.Histogram``:
    one lock per batch instead of several per observation, and a scrape sees whole
    batches only, so its buckets, count and sum always agree.
    """

    name = "metrics"
    internal = True  # not a sink to an operator: no sink series, no health entry
    summary_key = "latency"  # its counters in the summary

    def __init__(self, registry: CollectorRegistry | None = None, max_series: int = MAX_SERIES) -> None:
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._max_series = max_series
        self._lock = threading.Lock()
        self.observed = 0
        self.overflow = 0
        if registry is not None:
            registry.register(self)

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        series = self._series
        bounds = DURATION_BUCKETS
        observed = 0
        with self._lock:
            for span in spans:
                if span.pairing != PAIRED:
                    continue
                key = (span.operation, span.mount, "true" if span.error else "false")
                entry = series.get(key)
                if entry is None:
                    entry = self._new_series(key)
                seconds = (span.end_ns - span.start_ns) / 1e9
                entry.counts[bisect_left(bounds, seconds)] += 1  # le: the first bound >= seconds
                entry.total += seconds
                observed += 1
            self.observed += observed
        return 0

    def _new_series(self, key: tuple[str, str, str]) -> _Series:
        if len(self._series) >= self._max_series:
            if not self.overflow:
                log.warning(
                    "metrics: over %d operation/mount label sets; the rest are counted as %s",
                    self._max_series,
                    OVERFLOW_LABEL,
                )
            self.overflow += 1
            key = (OVERFLOW_LABEL, OVERFLOW_LABEL, key[2])
            entry = self._series.get(key)
            if entry is not None:
                return entry
        entry = self._series[key] = _Series()
        return entry

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [(key, list(entry.counts), entry.total) for key, entry in self._series.items()]
        family = HistogramMetricFamily(
            "vault_request_duration_seconds",
            "Duration of Vault requests from the audit log: time of the response entry minus "
            "time of its request entry (requests paired with their response only)",
            labels=["operation", "mount", "error"],
        )
        for key, counts, total in snapshot:
            buckets = []
            cumulative = 0
            for le, count in zip(_BUCKET_LABELS, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, total)
        yield family

    def stats(self) -> dict[str, int]:
        return {"observed": self.observed, "overflow": self.overflow}


# ---------------------------------------------------------------- the daemon's counters


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class DaemonCollector(Collector):
    """Every counter of the daemon, from the snapshot taken at scrape time."""

    def __init__(self, snapshot: SnapshotSource, clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot()
        c = snapshot.counters
        get = c.get

        info = GaugeMetricFamily(
            "vault_observe_build_info",
            "Version of vault-observe and its core (c or py); always 1",
            labels=["version", "core"],
        )
        info.add_metric([__version__, core_module.IMPLEMENTATION], 1)
        yield info

        # -- input
        yield _counter("vault_observe_lines", "Audit log lines parsed, bad ones included", get("lines", 0))
        yield _counter("vault_observe_bytes", "Bytes of audit log received", get("bytes", 0))
        entries = CounterMetricFamily(
            "vault_observe_audit_entries", "Audit entries read, by entry type", labels=["type"]
        )
        entries.add_metric(["request"], get("requests", 0))
        entries.add_metric(["response"], get("responses", 0))
        yield entries
        skipped = CounterMetricFamily(
            "vault_observe_skipped_lines",
            "Lines skipped as unusable: malformed (not JSON), invalid (wrong envelope), oversize "
            "(over --max-line-bytes), truncated (connection closed mid-line), unknown_type, "
            "no_id (request without request.id)",
            labels=["reason"],
        )
        for reason in SKIP_REASONS:
            skipped.add_metric([reason], get(reason, 0))
        yield skipped
        yield _counter(
            "vault_observe_probes",
            "Test entries of the audit device (sys/audit/test) ignored",
            get("probes", 0),
        )
        yield _counter(
            "vault_observe_reserved_keys",
            "Entry keys under vault_observe. dropped: that prefix is kept for the daemon's own attributes",
            get("reserved_keys", 0),
        )
        yield _counter(
            "vault_observe_duplicate_requests",
            "Requests whose id was already waiting for a response (the newer one replaces it)",
            get("duplicates", 0),
        )
        yield _counter(
            "vault_observe_pending_attrs_trimmed",
            "Unanswered or evicted spans that carry only part of their request's attributes "
            "(over --pending-attrs-bytes)",
            get("attrs_trimmed", 0),
        )

        # -- correlation
        spans = CounterMetricFamily(
            "vault_observe_spans",
            "Spans made, by pairing: paired (request and response: real duration), orphan "
            "(a response without its request), unanswered (no response within --ttl or before "
            "shutdown), evicted (pushed out of the full pending cache)",
            labels=["pairing"],
        )
        for label, name in PAIRINGS:
            spans.add_metric([label], get(name, 0))
        yield spans
        yield _gauge(
            "vault_observe_pending_requests", "Requests waiting for their response", get("pending", 0)
        )
        yield _gauge(
            "vault_observe_pending_requests_limit",
            "Requests that may wait for their response at most (--max-pending); past it the oldest is evicted",
            snapshot.max_pending,
        )
        yield _gauge(
            "vault_observe_open_connections", "Audit device connections open now", get("open_connections", 0)
        )
        yield _counter(
            "vault_observe_connections_accepted",
            "Audit device connections accepted since start",
            get("connections", 0),
        )

        # -- delivery, per sink
        sinks: dict[str, dict[str, int]] = c.get("sinks", {})
        for key, name, documentation in SINK_COUNTERS:
            family = CounterMetricFamily(f"vault_observe_{name}", documentation, labels=["sink"])
            for sink, stats in sinks.items():
                if key in stats:
                    family.add_metric([sink], stats[key])
            if family.samples:  # only sinks that keep this counter
                yield family
        depth = GaugeMetricFamily(
            "vault_observe_sink_queue_depth", "Spans waiting in the sink's queue", labels=["sink"]
        )
        for sink, stats in sinks.items():
            depth.add_metric([sink], stats.get("queue_depth", 0))
        yield depth
        queue_bytes = GaugeMetricFamily(
            "vault_observe_sink_queue_bytes",
            "Bytes the spans waiting in the sink's queue keep alive (bounded by --queue-bytes)",
            labels=["sink"],
        )
        for sink, stats in sinks.items():
            queue_bytes.add_metric([sink], stats.get("queue_bytes", 0))
        yield queue_bytes
        dropped = CounterMetricFamily(
            "vault_observe_sink_spans_dropped",
            "Spans dropped before the sink saw them: queue_full (the sink fell behind by "
            "--queue-size spans or --queue-bytes), shutdown (still queued at the end of the "
            "shutdown timeout)",
            labels=["sink", "reason"],
        )
        capacity = GaugeMetricFamily(
            "vault_observe_sink_queue_capacity", "Spans the sink's queue holds at most", labels=["sink"]
        )
        capacity_bytes = GaugeMetricFamily(
            "vault_observe_sink_queue_capacity_bytes",
            "Bytes the spans in the sink's queue may keep alive at most (--queue-bytes)",
            labels=["sink"],
        )
        up = GaugeMetricFamily(
            "vault_observe_sink_up",
            "1 when the sink's last send succeeded, 0 while it fails",
            labels=["sink"],
        )
        failing = GaugeMetricFamily(
            "vault_observe_sink_failing_seconds",
            "Seconds since the sink's sends began to fail (0 while it works)",
            labels=["sink"],
        )
        for sink, stats in sinks.items():
            for reason, name in DROP_REASONS:
                dropped.add_metric([sink, reason], stats.get(name, 0))
        now = self._clock()
        for state in snapshot.sinks:
            capacity.add_metric([state.name], state.queue_capacity)  # follow mode: a few batches
            capacity_bytes.add_metric([state.name], snapshot.queue_bytes)
            since = state.failing_since
            up.add_metric([state.name], 1 if since is None else 0)
            failing.add_metric([state.name], 0.0 if since is None else max(0.0, now - since))
        yield dropped
        yield capacity
        yield capacity_bytes
        yield up
        yield failing
        latency = c.get("latency")
        if latency is not None:
            lost = CounterMetricFamily(
                "vault_observe_latency_spans_dropped",
                "Spans left out of vault_request_duration_seconds: queue_full (its queue fell "
                "behind by --queue-size spans), shutdown (still queued at exit)",
                labels=["reason"],
            )
            for reason, name in DROP_REASONS:
                lost.add_metric([reason], latency.get(name, 0))
            yield lost


# ---------------------------------------------------------------- health


def health(snapshot: Snapshot, threshold: float, now: float | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON document): 503 when a sink has failed for over ``threshold`` seconds."""
    now = time.monotonic() if now is None else now
    sinks: dict[str, dict[str, Any]] = {}
    failing: list[str] = []
    for state in snapshot.sinks:
        since = state.failing_since
        seconds = 0.0 if since is None else max(0.0, now - since)
        sinks[state.name] = {
            "up": since is None,
            "failing_seconds": round(seconds, 3),
            "queue_depth": state.queue_depth,
        }
        if since is not None and seconds > threshold:
            failing.append(state.name)
    if not failing:
        return 200, {"status": "ok", "sinks": sinks}
    message = "; ".join(
        f"sink {name} has been failing for {sinks[name]['failing_seconds']:.0f} s" for name in failing
    )
    return 503, {
        "status": "failing",
        "failing": failing,
        "message": f"{message} (threshold {threshold:g} s)",
        "sinks": sinks,
    }


# ---------------------------------------------------------------- the HTTP server


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[Any, ...], family: int, app: MetricsServer) -> None:
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections end

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape would drown the daemon's own log

    def do_GET(self) -> None:
        app = self.server.app
        path = urlsplit(self.path).path
        if path == "/metrics":
            try:
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(app.registry)
            except Exception as exc:
                app.errors("scrape", logging.ERROR, "metrics: scrape failed: %s", exc)
                self._reply(500, b"scrape failed; see the daemon's log\n", "text/plain; charset=utf-8")
                return
            self._reply(200, body, content_type)
        elif path == "/healthz":
            status, document = app.health()
            self._reply(status, json.dumps(document).encode() + b"\n", "application/json")
        elif path == "/":
            self._reply(200, b"vault-observe: /metrics /healthz\n", "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found; try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetricsServer:
    """``/metrics`` and ``/healthz`` of the counters ``snapshot`` gives, on a daemon
    thread of its own.

    Built with the Daemon (which adds ``sink`` to its sinks); binds in ``start``.
    """

    def __init__(self, address: str, failure_seconds: float, snapshot: SnapshotSource) -> None:
        self.host, self.port = parse_address(address)
        self.failure_seconds = failure_seconds
        self._snapshot = snapshot
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(snapshot))
        # process_*: resident and virtual memory, CPU seconds, open and maximum file
        # descriptors, start time (from /proc; absent where there is none); python_info.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.sink = MetricsSink(self.registry)
        self.errors = RateLimitedLog(log, 60.0)
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            infos = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, _, _, _, sockaddr = infos[0]
            server = _HttpServer(sockaddr, family, self)
        except OSError as exc:
            raise listen_error(
                f"--metrics-address {self.host}:{self.port}", "tcp", self.port, "", exc
            ) from None
        self._server = server
        # The poll interval bounds how long stop() waits for the accept loop.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("serving /metrics and /healthz on %s", self.url)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when 0 was asked for."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def health(self) -> tuple[int, dict[str, Any]]:
        return health(self._snapshot(), self.failure_seconds)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
