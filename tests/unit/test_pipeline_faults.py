"""Sinks that are down, failing or slow, in the running daemon with real receivers:
the reader keeps reading, the healthy sinks get everything, and every loss is counted."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.receivers import HoneycombReceiver, OtlpReceiver
from vault_observe.config import Config, Listener
from vault_observe.pipeline import Daemon
from vault_observe.sinks.honeycomb import HoneycombSink
from vault_observe.sinks.otlp import OtlpSink
from vault_observe.sinks.zipkin import ZipkinSink


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_down_failing_and_slow_sinks_do_not_hold_the_reader(short_socket: Path, sample_log: Path) -> None:
    data = sample_log.read_bytes()
    with HoneycombReceiver("key") as honeycomb, OtlpReceiver() as otlp:
        honeycomb.fail_next = 3  # answers 503 three times, then recovers: nothing may be lost
        otlp.delay = 1.0  # slow: what it has not taken by the shutdown deadline is counted
        sinks = [
            ZipkinSink(f"http://127.0.0.1:{closed_port()}/api/v2/spans", timeout=1.0, backoff_max=0.2),
            HoneycombSink("key", api_host=honeycomb.base_url, timeout=5.0),
            OtlpSink(otlp.url, timeout=5.0),
        ]
        config = Config(
            listeners=[Listener("unix", str(short_socket))],
            queue_size=1000,
            batch_size=100,
            flush_interval=0.05,
            retry_window=2.0,
            shutdown_timeout=3.0,
        )
        daemon = Daemon(config, sinks)
        daemon.start()
        started = time.monotonic()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(short_socket))
            client.sendall(data)
        wait_for(lambda: daemon.core.counters()["lines"] == data.count(b"\n"))
        read_time = time.monotonic() - started
        wait_for(lambda: len(honeycomb.events) == 718)
        counters = daemon.stop()
    assert read_time < 10, "the reader was held up by the sinks"
    spans = counters["spans"]
    assert spans == 718
    hc = counters["sinks"]["honeycomb"]
    assert hc["delivered"] == spans and hc["failed"] == 0 and hc["retries"] >= 3
    assert len({e["data"]["trace.span_id"] for e in honeycomb.events}) == spans  # nothing twice
    zipkin = counters["sinks"]["zipkin"]
    assert zipkin["delivered"] == 0
    assert zipkin["failed"] + zipkin["dropped_queue_full"] + zipkin["dropped_shutdown"] == spans
    otlp_counts = counters["sinks"]["otlp"]
    assert otlp_counts["delivered"] == len(otlp.spans)
    assert (
        otlp_counts["delivered"]
        + otlp_counts["dropped_queue_full"]
        + otlp_counts["dropped_shutdown"]
        + otlp_counts["failed"]
        == spans
    )
    assert honeycomb.errors == [] and otlp.errors == []
