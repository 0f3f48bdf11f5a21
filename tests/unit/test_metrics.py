"""Self-metrics: /metrics and /healthz of a running daemon, scraped over real HTTP.

The daemon reads real OpenBao lines from a unix socket; the scrape is parsed with
prometheus_client's own text parser and compared with the daemon's counters and
with what the log itself says (pairs counted straight from the JSON lines).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.receivers import HoneycombReceiver
from tests.sinks import CollectingSink
from vault_observe._core_py import Core
from vault_observe.address import parse_address
from vault_observe.config import Config, Listener, load_config
from vault_observe.counters import SinkState, Snapshot
from vault_observe.errors import ConfigError
from vault_observe.metrics_http import (
    DURATION_BUCKETS,
    OVERFLOW_LABEL,
    DaemonCollector,
    MetricsSink,
    health,
)
from vault_observe.model import PAIRED
from vault_observe.pipeline import Daemon
from vault_observe.sinks.exporter import RetryPolicy
from vault_observe.sinks.honeycomb import HoneycombSink

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
FAST = RetryPolicy(initial=0.02, maximum=0.1, jitter=0.0)


# ---------------------------------------------------------------- helpers


def metrics_config(tmp_path: Path, **kw: Any) -> Config:
    kw.setdefault("flush_interval", 0.05)
    kw.setdefault("ttl", 600.0)  # nothing expires while a test compares counters
    kw.setdefault("metrics_address", "127.0.0.1:0")
    return Config(listeners=[Listener("unix", str(tmp_path / "audit.sock"))], **kw)


def send(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        client.sendall(data)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def get(url: str, accept: str = "") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def scrape(daemon: Daemon) -> Samples:
    assert daemon.metrics_server is not None
    status, content_type, body = get(daemon.metrics_server.url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def healthz(daemon: Daemon) -> tuple[int, dict[str, Any]]:
    assert daemon.metrics_server is not None
    status, content_type, body = get(daemon.metrics_server.url + "/healthz")
    assert content_type == "application/json"
    document: dict[str, Any] = json.loads(body)
    return status, document


def settled(daemon: Daemon, lines: int) -> bool:
    """Every line read, every span through every sink and through the latency
    histogram (its own worker, kept out of the sinks' counters), the client gone."""
    counters = daemon.summary.counters()
    workers = [*counters["sinks"].values()]
    if "latency" in counters:
        workers.append(counters["latency"])
    return (
        counters["lines"] == lines
        and counters["open_connections"] == 0
        and all(stats["delivered"] + stats["failed"] == counters["spans"] for stats in workers)
    )


def pairs_in_log(data: bytes) -> Counter[tuple[str, str, str]]:
    """(operation, mount, error) of every response whose request came before it."""
    pending: set[str] = set()
    pairs: Counter[tuple[str, str, str]] = Counter()
    for line in data.splitlines():
        entry = json.loads(line)
        request = entry.get("request") or {}
        request_id = request.get("id")
        if entry["type"] == "request":
            if request.get("path") != "sys/audit/test" and request_id:
                pending.add(request_id)
        elif request_id in pending:
            pending.discard(request_id)
            key = (
                request.get("operation") or "",
                request.get("mount_point") or "",
                "true" if entry.get("error") else "false",
            )
            pairs[key] += 1
    return pairs


# ---------------------------------------------------------------- /metrics


def test_scrape_equals_the_daemon_counters(tmp_path: Path, sample_log: Path) -> None:
    data = sample_log.read_bytes()
    lines = data.count(b"\n")
    sink = CollectingSink()
    daemon = Daemon(metrics_config(tmp_path), [sink])
    daemon.start()
    try:
        assert daemon.metrics_server is not None
        assert daemon.metrics_server.address[1] != 0  # port 0: the bound port is known
        send(daemon.config.listeners[0].address, data)
        wait_for(lambda: settled(daemon, lines))
        samples = scrape(daemon)
        counters = daemon.summary.counters()
        made = len(sink.spans)
    finally:
        daemon.stop()

    assert counters["lines"] == lines and counters["bytes"] == len(data)
    assert value(samples, "vault_observe_lines_total") == lines
    assert value(samples, "vault_observe_bytes_total") == len(data)
    assert value(samples, "vault_observe_audit_entries_total", type="request") == counters["requests"]
    assert value(samples, "vault_observe_audit_entries_total", type="response") == counters["responses"]
    for label, name in (("paired", "paired"), ("orphan", "orphans"), ("unanswered", "unanswered")):
        assert value(samples, "vault_observe_spans_total", pairing=label) == counters[name]
    assert value(samples, "vault_observe_spans_total", pairing="evicted") == counters["evicted"]
    by_pairing = sum(v for (name, _), v in samples.items() if name == "vault_observe_spans_total")
    assert by_pairing == counters["spans"] == made
    for reason in ("malformed", "invalid", "oversize", "truncated", "unknown_type", "no_id"):
        assert value(samples, "vault_observe_skipped_lines_total", reason=reason) == counters[reason]
    assert value(samples, "vault_observe_probes_total") == counters["probes"] == 1
    assert value(samples, "vault_observe_duplicate_requests_total") == counters["duplicates"]
    assert value(samples, "vault_observe_pending_requests") == counters["pending"] > 0
    assert value(samples, "vault_observe_pending_requests_limit") == daemon.config.max_pending
    assert value(samples, "vault_observe_open_connections") == 0
    assert value(samples, "vault_observe_connections_accepted_total") == counters["connections"] == 1
    assert set(counters["sinks"]) == {"collect"}  # the latency histogram is not a sink
    assert not [key for key in samples if key[1] and dict(key[1]).get("sink") == "metrics"]
    assert counters["latency"]["observed"] == counters["paired"]
    for reason in ("queue_full", "shutdown"):
        assert value(samples, "vault_observe_latency_spans_dropped_total", reason=reason) == 0
    for sink_name, stats in counters["sinks"].items():
        labels = {"sink": sink_name}
        assert value(samples, "vault_observe_sink_spans_delivered_total", **labels) == stats["delivered"]
        assert value(samples, "vault_observe_sink_spans_failed_total", **labels) == stats["failed"] == 0
        assert value(samples, "vault_observe_sink_export_failures_total", **labels) == 0
        for reason in ("queue_full", "shutdown"):
            assert value(samples, "vault_observe_sink_spans_dropped_total", reason=reason, **labels) == 0
        assert value(samples, "vault_observe_sink_queue_depth", **labels) == stats["queue_depth"] == 0
        assert value(samples, "vault_observe_sink_queue_bytes", **labels) == stats["queue_bytes"] == 0
        assert value(samples, "vault_observe_sink_queue_capacity", **labels) == daemon.config.queue_size
        assert value(samples, "vault_observe_sink_queue_capacity_bytes", **labels) == daemon.config.queue_bytes
        assert value(samples, "vault_observe_sink_up", **labels) == 1
        assert value(samples, "vault_observe_sink_failing_seconds", **labels) == 0
    assert value(samples, "vault_observe_sink_spans_delivered_total", sink="collect") == made
    # The standard process metrics, read from /proc at scrape time.
    import resource

    rss = value(samples, "process_resident_memory_bytes")
    assert 10 * 2**20 < rss < 4 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_open_fds") > 0 and value(samples, "process_max_fds") > 0
    assert abs(value(samples, "process_start_time_seconds") - time.time()) < 24 * 3600


def test_queue_bytes_gauge_shows_what_a_stalled_sink_keeps_waiting(tmp_path: Path, sample_log: Path) -> None:
    data = sample_log.read_bytes()
    sink = CollectingSink(name="stalled", delay=30.0)  # holds its first batch
    daemon = Daemon(metrics_config(tmp_path, batch_size=10, shutdown_timeout=0.5), [sink])
    daemon.start()
    try:
        send(daemon.config.listeners[0].address, data)
        worker = daemon.workers[0]
        wait_for(lambda: daemon.summary.counters()["lines"] == data.count(b"\n") and worker.depth > 0)
        samples = scrape(daemon)
        stats = daemon.summary.counters()["sinks"]["stalled"]
    finally:
        daemon.stop()
    queued = value(samples, "vault_observe_sink_queue_bytes", sink="stalled")
    assert queued == stats["queue_bytes"] > 0
    # a few hundred spans of about 1.5 KB of attributes each, and what holds them
    assert 500 * stats["queue_depth"] < queued < 8000 * stats["queue_depth"]


def test_histogram_counts_paired_spans_by_operation_and_mount(tmp_path: Path, sample_log: Path) -> None:
    data = sample_log.read_bytes()
    sink = CollectingSink()
    daemon = Daemon(metrics_config(tmp_path), [sink])
    daemon.start()
    try:
        send(daemon.config.listeners[0].address, data)
        wait_for(lambda: settled(daemon, data.count(b"\n")))
        samples = scrape(daemon)
    finally:
        daemon.stop()

    expected = pairs_in_log(data)
    assert len(expected) > 20 and sum(expected.values()) > 600
    assert any(error == "true" for _, _, error in expected)
    # Reads of unknown paths have no mount: one series, not one per path.
    assert expected[("read", "", "true")] == 8
    counts = {
        (labels["operation"], labels["mount"], labels["error"]): v
        for (name, label_set), v in samples.items()
        if name == "vault_request_duration_seconds_count"
        for labels in [dict(label_set)]
    }
    assert counts == expected
    # The buckets and sums agree with the durations of the paired spans themselves.
    durations: dict[tuple[str, str, str], list[float]] = {}
    for span in sink.spans:
        if span.pairing == PAIRED:
            attrs = span.attributes()
            key = (
                attrs.get("request.operation", ""),
                attrs.get("request.mount_point", ""),
                "true" if span.error else "false",
            )
            durations.setdefault(key, []).append(span.duration_ns / 1e9)
    assert {k: len(v) for k, v in durations.items()} == expected
    for (operation, mount, error), seconds in durations.items():
        labels = {"operation": operation, "mount": mount, "error": error}
        assert value(samples, "vault_request_duration_seconds_sum", **labels) == pytest.approx(sum(seconds))
        for bound in DURATION_BUCKETS:
            in_bucket = value(samples, "vault_request_duration_seconds_bucket", le=repr(bound), **labels)
            assert in_bucket == sum(1 for s in seconds if s <= bound)
        assert value(samples, "vault_request_duration_seconds_bucket", le="+Inf", **labels) == len(seconds)


def test_openmetrics_on_request_and_unknown_paths(tmp_path: Path) -> None:
    daemon = Daemon(metrics_config(tmp_path), [CollectingSink()])
    daemon.start()
    try:
        assert daemon.metrics_server is not None
        url = daemon.metrics_server.url
        status, content_type, body = get(url + "/metrics", accept="application/openmetrics-text")
        assert status == 200 and content_type.startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        assert get(url + "/nothing-here")[0] == 404
    finally:
        daemon.stop()
    with pytest.raises(OSError):  # stopped with the daemon
        get(url + "/metrics")


def test_replay_serves_metrics_and_stops_at_the_end(sample_log: Path) -> None:
    daemon = Daemon(Config(input=str(sample_log), metrics_address="127.0.0.1:0"), [])
    assert daemon.run() == 0
    assert daemon.result is not None
    assert daemon.result["latency"]["observed"] == daemon.result["paired"] > 0
    assert daemon.metrics_server is not None
    with pytest.raises(OSError):
        get(daemon.metrics_server.url + "/metrics")


def test_busy_address_is_reported_with_the_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(metrics_config(tmp_path, metrics_address=f"127.0.0.1:{port}"), [])
        assert daemon.metrics_server is not None
        with pytest.raises(OSError, match="--metrics-address"):
            daemon.metrics_server.start()


# ---------------------------------------------------------------- /healthz


def test_healthz_turns_503_while_a_sink_fails_and_200_after_it_recovers(
    tmp_path: Path, sample_log: Path
) -> None:
    lines = sample_log.read_bytes().splitlines(keepends=True)
    with HoneycombReceiver() as receiver:
        receiver.fail_with = 503
        sink = HoneycombSink("test-key", api_host=receiver.base_url, timeout=2.0, retry=FAST)
        config = metrics_config(tmp_path, retry_window=0.3, health_failure_seconds=0.5)
        daemon = Daemon(config, [sink])
        daemon.start()
        try:
            worker = next(w for w in daemon.workers if w.name == "honeycomb")
            assert healthz(daemon) == (
                200,
                {
                    "status": "ok",
                    "sinks": {
                        "honeycomb": {"up": True, "failing_seconds": 0.0, "queue_depth": 0},
                    },
                },
            )
            send(config.listeners[0].address, b"".join(lines[:60]))
            wait_for(lambda: worker.failing_since is not None)
            since = worker.failing_since
            assert since is not None
            # Below the threshold the sink shows as down, but the daemon is still healthy.
            status, document = health(daemon.snapshot(), 0.5, now=since + 0.4)
            assert status == 200 and document["sinks"]["honeycomb"]["up"] is False

            wait_for(lambda: healthz(daemon)[0] == 503)
            status, document = healthz(daemon)
            assert status == 503 and document["failing"] == ["honeycomb"]
            assert "honeycomb" in document["message"]
            assert document["sinks"]["honeycomb"]["failing_seconds"] > 0.5
            assert "metrics" not in document["sinks"]
            samples = scrape(daemon)
            assert value(samples, "vault_observe_sink_up", sink="honeycomb") == 0
            assert ("vault_observe_sink_up", frozenset({("sink", "metrics")})) not in samples
            assert value(samples, "vault_observe_sink_failing_seconds", sink="honeycomb") > 0.5
            assert value(samples, "vault_observe_sink_export_failures_total", sink="honeycomb") >= 1
            assert value(samples, "vault_observe_sink_spans_failed_total", sink="honeycomb") > 0
            assert value(samples, "vault_observe_sink_retries_total", sink="honeycomb") > 0

            # The receiver recovers; the next successful send clears the failure.
            receiver.fail_with = None
            send(config.listeners[0].address, b"".join(lines[60:120]))
            wait_for(lambda: healthz(daemon)[0] == 200)
            samples = scrape(daemon)
            assert value(samples, "vault_observe_sink_up", sink="honeycomb") == 1
            assert value(samples, "vault_observe_sink_failing_seconds", sink="honeycomb") == 0
            assert receiver.wait_for(lambda: len(receiver.events) > 0)
            assert receiver.errors == []
        finally:
            daemon.stop()


# ---------------------------------------------------------------- pieces


def test_metrics_and_health_read_a_snapshot_alone() -> None:
    """/metrics and /healthz need no daemon: the counters it publishes are enough."""
    snapshot = Snapshot(
        counters={"lines": 7, "paired": 3, "sinks": {"zipkin": {"delivered": 5, "dropped_queue_full": 2}}},
        sinks=(SinkState("zipkin", failing_since=100.0, queue_depth=4, queue_capacity=50),),
        max_pending=9,
        queue_bytes=1024,
    )
    registry = CollectorRegistry()
    registry.register(DaemonCollector(lambda: snapshot, clock=lambda: 112.5))
    sample = registry.get_sample_value
    assert sample("vault_observe_lines_total") == 7
    assert sample("vault_observe_spans_total", {"pairing": "paired"}) == 3
    assert sample("vault_observe_pending_requests_limit") == 9
    assert sample("vault_observe_sink_spans_delivered_total", {"sink": "zipkin"}) == 5
    assert sample("vault_observe_sink_spans_dropped_total", {"sink": "zipkin", "reason": "queue_full"}) == 2
    assert sample("vault_observe_sink_queue_capacity", {"sink": "zipkin"}) == 50
    assert sample("vault_observe_sink_queue_capacity_bytes", {"sink": "zipkin"}) == 1024
    assert sample("vault_observe_sink_up", {"sink": "zipkin"}) == 0
    assert sample("vault_observe_sink_failing_seconds", {"sink": "zipkin"}) == 12.5
    assert health(snapshot, 20.0, now=112.5) == (
        200,
        {"status": "ok", "sinks": {"zipkin": {"up": False, "failing_seconds": 12.5, "queue_depth": 4}}},
    )
    status, document = health(snapshot, 10.0, now=112.5)
    assert status == 503 and document["failing"] == ["zipkin"]


@pytest.mark.parametrize("exclude", [[], ["request.*", "note"]])
def test_labels_are_the_spans_operation_and_mount(exclude: list[str]) -> None:
    """The labels are what the core read from the response, not a search of the
    attribute bytes: a value that looks like a key does not fool them, and attribute
    filters that drop the request's keys do not empty them."""
    line = (
        '{"time":"2026-01-01T00:00:00.002Z","type":"response","note":%s,'
        '"request":{"id":"%s","operation":"read","mount_point":%s,"path":"x"}}\n'
    )
    fake = json.dumps('"request.operation":"fake","request.mount_point":"fake/" \\')
    core = Core(exclude=exclude)
    core.feed(
        b'{"time":"2026-01-01T00:00:00Z","type":"request","request":{"id":"r1"}}\n'
        + (line % (fake, "r1", json.dumps('we"ird\\/'))).encode()
    )
    registry = CollectorRegistry()
    MetricsSink(registry).send(core.drain(), time.monotonic() + 1)
    labels = {"operation": "read", "mount": 'we"ird\\/', "error": "false"}
    assert registry.get_sample_value("vault_request_duration_seconds_count", labels) == 1


def test_metrics_sink_counts_only_paired_spans_and_caps_label_sets() -> None:
    req = '{"time":"2026-01-01T00:00:00Z","type":"request","request":{"id":"%s","operation":"read","mount_point":"%s"}}\n'
    resp = '{"time":"2026-01-01T00:00:00.002Z","type":"response","request":{"id":"%s","operation":"read","mount_point":"%s"}}\n'
    core = Core()
    text = ""
    for i, mount in enumerate(("a/", "b/", "c/", "d/")):
        rid = f"{i:08x}-0000-0000-0000-000000000000"
        text += req % (rid, mount) + resp % (rid, mount)
    text += resp % ("ffffffff-0000-0000-0000-000000000000", "a/")  # an orphan: no duration
    text += req % ("eeeeeeee-0000-0000-0000-000000000000", "a/")  # unanswered at flush
    core.feed(text.encode())
    core.flush()
    spans = core.drain()
    registry = CollectorRegistry()
    sink = MetricsSink(registry, max_series=2)
    assert sink.send(spans, time.monotonic() + 1) == 0

    def count(operation: str, mount: str) -> float | None:
        return registry.get_sample_value(
            "vault_request_duration_seconds_count",
            {"operation": operation, "mount": mount, "error": "false"},
        )

    assert count("read", "a/") == 1 and count("read", "b/") == 1
    assert count("read", "c/") is None and count(OVERFLOW_LABEL, OVERFLOW_LABEL) == 2
    assert sink.stats() == {"observed": 4, "overflow": 2}
    assert (
        registry.get_sample_value(
            "vault_request_duration_seconds_bucket",
            {"operation": "read", "mount": "a/", "error": "false", "le": "0.0025"},
        )
        == 1
    )


def test_metrics_flags() -> None:
    config, _ = load_config(["--metrics-address", "127.0.0.1:9464", "--health-failure-seconds", "5"], {})
    assert config.metrics_address == "127.0.0.1:9464" and config.health_failure_seconds == 5
    config, _ = load_config([], {})
    assert config.metrics_address is None and config.health_failure_seconds == 60
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address(":9464") == ("", 9464)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("9464", "127.0.0.1:", "127.0.0.1:99999", "::1:9464", "host:port"):
        with pytest.raises(ConfigError):
            load_config(["--metrics-address", bad], {})
