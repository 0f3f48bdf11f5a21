"""Honeycomb sink throughput: every span of the shared corpus into a loopback receiver.

The receiver (``tests.receivers.HoneycombReceiver``: gunzips, parses and answers the
per-event status array) runs in its own process, so it does not share the
sender's interpreter lock. A round ends when every event is acknowledged: the
native sink's ``send`` returns after reading the status arrays; the libhoney sink
is flushed until its responses queue has answered every event.

Run: ``PYTHONPATH=src python -m pytest benchmarks/test_sink_honeycomb_bench.py --benchmark-enable``
(the corpus is looked for next to the checkout, or at ``$VAULT_OBSERVE_CORPUS``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from vault_observe._core_py import Core
from vault_observe.model import SpanRecord
from vault_observe.sinks.encoding.honeycomb import EventEncoder, event_fields
from vault_observe.sinks.honeycomb import HoneycombSink

REPO = Path(__file__).resolve().parent.parent
CORPUS_NAME = Path("shared") / "corpus" / "openbao-mixed.jsonl"
KEY = "bench-key"
BATCH = 512  # spans per send(), as a sink worker would hand them over
ROUNDS = 5


def corpus_path() -> Path | None:
    candidates = [os.environ.get("VAULT_OBSERVE_CORPUS", "")]
    candidates += [str(REPO.parent / CORPUS_NAME), str(REPO.parent.parent / CORPUS_NAME)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def spans() -> list[SpanRecord]:
    path = corpus_path()
    if path is None:
        pytest.skip(f"the full corpus is not present (looked next to {REPO}; set VAULT_OBSERVE_CORPUS)")
    core = Core()
    core.feed(path.read_bytes())
    core.flush()
    return core.drain()


def _serve(conn: Connection) -> None:
    """Child process: a HoneycombReceiver that counts events instead of keeping them."""
    from tests.receivers import HoneycombReceiver

    class CountingReceiver(HoneycombReceiver):
        def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
            if handler.headers.get("X-Honeycomb-Team") != self.api_key:
                raise ValueError("wrong or missing X-Honeycomb-Team")
            batch = json.loads(body)
            if not all(isinstance(event.get("data"), dict) for event in batch):
                raise ValueError("event without data")
            with self.lock:
                self.count += len(batch)
            return json.dumps([{"status": 202} for _ in batch]).encode()

    receiver = CountingReceiver(KEY)
    receiver.count = 0  # type: ignore[attr-defined]
    with receiver:
        conn.send(receiver.port)
        while True:
            command = conn.recv()
            if command == "stop":
                break
            with receiver.lock:
                conn.send((receiver.count, list(receiver.errors)))  # type: ignore[attr-defined]
                if command == "reset":
                    receiver.count = 0  # type: ignore[attr-defined]


class RemoteReceiver:
    def __init__(self) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child,), daemon=True
        )
        self._process.start()
        self.url = f"http://127.0.0.1:{self._conn.recv()}"

    def reset(self) -> None:
        """Zero the count (returns None: a pytest-benchmark setup must)."""
        self.count(reset=True)

    def count(self, reset: bool = False) -> int:
        self._conn.send("reset" if reset else "count")
        count, errors = self._conn.recv()
        assert errors == []
        return int(count)

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(10)


@pytest.fixture(scope="module")
def receiver() -> Iterator[RemoteReceiver]:
    remote = RemoteReceiver()
    yield remote
    remote.stop()


def report(benchmark: Any, events: int, cpu: list[float] | None = None) -> None:
    rate = events / benchmark.stats["mean"]
    benchmark.extra_info["events"] = events
    benchmark.extra_info["events_per_s"] = round(rate)
    line = f"\n{benchmark.name}: {events} events, {rate:,.0f} events/s (mean of {ROUNDS} rounds)"
    if cpu:
        # CPU of this process only (every thread, not the receiver's process): what
        # the sink costs, whatever the receiver's speed.
        cpu_rate = events / (sum(cpu) / len(cpu))
        benchmark.extra_info["sender_cpu_s"] = round(sum(cpu) / len(cpu), 4)
        benchmark.extra_info["events_per_sender_cpu_s"] = round(cpu_rate)
        line += f", {cpu_rate:,.0f} events per CPU second of the sender"
    print(line)


def test_native(benchmark: Any, spans: list[SpanRecord], receiver: RemoteReceiver) -> None:
    sink = HoneycombSink(KEY, api_host=receiver.url)
    cpu: list[float] = []

    def run() -> None:
        started = time.process_time()
        deadline = time.monotonic() + 120
        for start in range(0, len(spans), BATCH):
            assert sink.send(spans[start : start + BATCH], deadline) == 0
        cpu.append(time.process_time() - started)

    benchmark.pedantic(run, setup=receiver.reset, rounds=ROUNDS, iterations=1)
    assert receiver.count() == len(spans)
    sink.close()
    assert sink.stats()["sent"] == ROUNDS * len(spans) and sink.stats()["failed"] == 0
    report(benchmark, len(spans), cpu)


def test_libhoney(benchmark: Any, spans: list[SpanRecord], receiver: RemoteReceiver) -> None:
    sink = HoneycombSink(KEY, api_host=receiver.url, encoder="libhoney")  # libhoney's own batching defaults
    acknowledged = 0
    cpu: list[float] = []

    def run() -> None:
        nonlocal acknowledged
        started = time.process_time()
        deadline = time.monotonic() + 120
        for start in range(0, len(spans), BATCH):
            assert sink.send(spans[start : start + BATCH], deadline) == 0
        sink.flush(120)
        stats = sink.stats()
        assert stats["sent"] + stats["failed"] == acknowledged + len(spans)  # every event answered
        acknowledged += len(spans)
        cpu.append(time.process_time() - started)

    benchmark.pedantic(run, setup=receiver.reset, rounds=ROUNDS, iterations=1)
    assert receiver.count() == len(spans)
    sink.close()
    assert sink.stats()["sent"] == ROUNDS * len(spans) and sink.stats()["failed"] == 0
    report(benchmark, len(spans), cpu)


def test_native_encode_only(benchmark: Any, spans: list[SpanRecord]) -> None:
    """The native encoder alone: bytes of every event, no HTTP."""
    encode = EventEncoder("vault").encode
    benchmark.pedantic(lambda: [encode(s) for s in spans], rounds=ROUNDS, iterations=1)
    report(benchmark, len(spans))


def test_libhoney_fields_and_json_only(benchmark: Any, spans: list[SpanRecord]) -> None:
    """What the libhoney path does per event before libhoney's own work: decode the
    attributes, add the trace fields, and libhoney's ``json.dumps`` of the event."""

    def run() -> None:
        for s in spans:
            json.dumps(
                {"time": "2026-01-01T00:00:00.000000Z", "samplerate": 1, "data": event_fields(s, "vault")}
            )

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1)
    report(benchmark, len(spans))
