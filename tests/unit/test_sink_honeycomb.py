"""Honeycomb sink: wire format, native/libhoney equivalence, failure handling.

Every test posts to a real loopback ``HoneycombReceiver`` that decodes the
``/1/batch/<dataset>`` body (gzip) as Honeycomb would.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.receivers import HoneycombReceiver
from vault_observe import _compat
from vault_observe._core_py import Core, parse_rfc3339_ns
from vault_observe.errors import ConfigError
from vault_observe.model import ORPHAN, PAIRED, UNANSWERED, SpanRecord
from vault_observe.sinks.encoding.honeycomb import EventEncoder
from vault_observe.sinks.exporter import RetryPolicy, Verdict
from vault_observe.sinks.honeycomb import HoneycombSink, read_statuses

KEY = "hcaik_01hq-test-Key-that-must-never-be-logged-7f3a"
SERVICE = "vault-test"
FAST = RetryPolicy(initial=0.02, maximum=0.2, jitter=0.0)


def spans_of(path: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(path.read_bytes())
    core.flush()
    return core.drain()


@pytest.fixture(scope="module")
def sample_spans(sample_log: Path) -> list[SpanRecord]:
    return spans_of(sample_log)


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def native(rx: HoneycombReceiver | None = None, **kw: Any) -> HoneycombSink:
    host = rx.base_url if rx is not None else f"http://127.0.0.1:{free_port()}"
    kw.setdefault("retry", FAST)
    return HoneycombSink(KEY, api_host=host, service_name=SERVICE, **kw)


def libhoney(rx: HoneycombReceiver | None = None, **kw: Any) -> HoneycombSink:
    kw.setdefault("libhoney_send_frequency", 0.05)
    sink = native(rx, encoder="libhoney", **kw)
    sink.start()  # as the worker does before the first send
    return sink


def text(value: Any) -> str:
    """JSON text with sorted keys: equal only when values *and JSON types* are equal
    (``True`` vs ``1``, ``1`` vs ``1.0`` differ)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def expected_data(record: SpanRecord) -> dict[str, Any]:
    """What the event's data must be, from the record and the field rules."""
    data = json.loads(record.attrs_json)
    data["trace.trace_id"] = record.request_id or record.trace_id.hex()
    data["trace.span_id"] = f"{record.span_id:016x}"
    if record.parent_span_id:
        data["trace.parent_id"] = f"{record.parent_span_id:016x}"
    data["service_name"] = SERVICE
    data["service.name"] = SERVICE
    data["name"] = record.name
    data["duration_ms"] = round((record.end_ns - record.start_ns) / 1000) / 1000
    if record.error:
        data["error"] = record.error
    return data


def event_key(event: dict[str, Any]) -> str:
    """An event with its time cut to microseconds (what libhoney can carry)."""
    time_ns = parse_rfc3339_ns(event["time"])
    assert time_ns is not None, event["time"]
    return text(
        {
            "dataset": event["dataset"],
            "time_us": time_ns // 1000,
            "samplerate": event["samplerate"],
            "data": event["data"],
        }
    )


def deliver_both(spans: list[SpanRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with HoneycombReceiver(KEY) as native_rx, HoneycombReceiver(KEY) as lh_rx:
        sink = native(native_rx)
        assert sink.send(spans, deadline(60)) == 0
        sink.close()
        lh = libhoney(lh_rx)
        assert lh.send(spans, deadline(60)) == 0
        lh.flush(60)
        lh.close()
        assert lh.stats()["sent"] == len(spans), lh.stats()
        assert native_rx.errors == [] and lh_rx.errors == []
        return native_rx.events, lh_rx.events


def assert_equivalent(spans: list[SpanRecord]) -> None:
    native_events, lh_events = deliver_both(spans)
    assert len(native_events) == len(lh_events) == len(spans)
    # The native sink posts in order: event i is span i, with its nanoseconds intact.
    for record, event in zip(spans, native_events, strict=True):
        assert parse_rfc3339_ns(event["time"]) == record.start_ns
        assert event["time"].endswith("Z") and len(event["time"].split(".")[1]) == 10  # 9 digits + Z
        assert text(event["data"]) == text(expected_data(record))
    # libhoney's concurrent batches may arrive in any order: compare as multisets.
    # Its time is a datetime (microseconds); the native one keeps nanoseconds, so
    # both are compared to the microsecond.
    left = Counter(event_key(e) for e in native_events)
    right = Counter(event_key(e) for e in lh_events)
    assert left == right, (list((left - right).items())[:1], list((right - left).items())[:1])


def test_native_equals_libhoney_on_sample(sample_spans: list[SpanRecord]) -> None:
    assert_equivalent(sample_spans)


def test_native_equals_libhoney_on_corpus(shared_corpus: Path) -> None:
    assert_equivalent(spans_of(shared_corpus))


def test_field_types(sample_spans: list[SpanRecord]) -> None:
    native_events, lh_events = deliver_both(sample_spans)
    seen: Counter[str] = Counter()
    for events in (native_events, lh_events):
        for event in events:
            data = event["data"]
            assert type(data["duration_ms"]) is float
            assert event["samplerate"] == 1
            assert isinstance(data["trace.span_id"], str) and len(data["trace.span_id"]) == 16
            int(data["trace.span_id"], 16)
            assert "trace.parent_id" not in data  # the core's spans are roots
            for key, value in data.items():
                seen[type(value).__name__] += 1
                if key == "request.remote_port":
                    assert type(value) is int
                if key in ("auth.policies", "auth.token_policies"):
                    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
                if key == "auth.policy_results.allowed":
                    assert type(value) is bool
                if key == "auth.policy_results.granting_policies":
                    assert isinstance(value, list) and all(isinstance(v, dict) for v in value)
    # the sample holds every JSON type: numbers stay numbers, arrays arrays
    assert {"str", "int", "float", "bool", "list"} <= set(seen)
    by_id = {e["data"]["trace.trace_id"]: e["data"] for e in native_events}
    for record in sample_spans:
        data = by_id[record.request_id]
        if record.pairing == PAIRED:
            assert data["duration_ms"] == round((record.end_ns - record.start_ns) / 1000) / 1000
        if record.error:
            assert data["error"] == record.error
        else:
            assert "error" not in data


def record(
    attrs: dict[str, Any],
    *,
    error: str = "",
    request_id: str = "req-1",
    parent: int = 0,
    pairing: int = PAIRED,
    start: int = 1_700_000_000_123_456_789,
    end: int | None = None,
) -> SpanRecord:
    end = start + 1_234_567 if end is None else end
    return SpanRecord(
        bytes(range(16)),
        0x0123456789ABCDEF,
        parent,
        "read secret/",
        start,
        end,
        error,
        pairing,
        request_id,
        json.dumps(attrs, ensure_ascii=False, separators=(",", ":")).encode(),
    )


def no_duplicates(body: bytes) -> dict[str, Any]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
        return dict(pairs)

    value: dict[str, Any] = json.loads(body, object_pairs_hook=hook)
    return value


def test_encoded_events_have_no_duplicate_keys(sample_spans: list[SpanRecord]) -> None:
    encoder = EventEncoder(SERVICE)
    for span in sample_spans:
        event = no_duplicates(encoder.encode(span))
        assert text(event["data"]) == text(expected_data(span))


@pytest.mark.parametrize(
    ("attrs", "error", "pairing"),
    [
        ({"type": "response", "error": "denied"}, "denied", PAIRED),  # Vault's layout: error last
        ({"type": "request", "error": "denied", "vault_observe.pairing": "unanswered"}, "denied", UNANSWERED),
        ({"error": "denied", "type": "response"}, "denied", PAIRED),  # not last
        ({"type": "response"}, "denied", PAIRED),  # attributes lack it
        ({"type": "response", "error": "other text", "z": 1}, "denied", PAIRED),  # the span's own text wins
        ({"x": [{"error": "denied"}]}, "denied", ORPHAN),  # only a nested one
        ({"x": [{"error": "denied"}]}, "denied", PAIRED),
        ({"error": 'line\n\t"quoted" ünï'}, 'line\n\t"quoted" ünï', PAIRED),
        ({}, "denied", PAIRED),
        ({}, "", PAIRED),
    ],
)
def test_error_field(attrs: dict[str, Any], error: str, pairing: int) -> None:
    span = record(attrs, error=error, pairing=pairing)
    event = no_duplicates(EventEncoder(SERVICE).encode(span))
    assert text(event["data"]) == text(expected_data(span))
    if error:
        assert event["data"]["error"] == error


def test_trace_fields_of_odd_records() -> None:
    with HoneycombReceiver(KEY) as rx:
        sink = native(rx)
        spans = [
            record({"a": 1}, request_id="", parent=0xFEDCBA9876543210),
            record(
                {"a": 1.5, "b": True, "c": ["x", 2, None, {"d": False}], "ü": "ğ"}, request_id="custom id ☃"
            ),
            record({}, start=1_700_000_000_000_000_000, end=1_700_000_000_000_000_000),  # empty attributes
            record({"name": "attr", "duration_ms": "attr"}),  # clashes: the trace fields win
            record({"a": 1}, start=1_700_000_001_999_999_999, end=1_700_000_002_000_001_499),
        ]
        assert sink.send(spans, deadline(10)) == 0
    events = rx.events
    assert events[0]["data"]["trace.trace_id"] == bytes(range(16)).hex()
    assert events[0]["data"]["trace.parent_id"] == "fedcba9876543210"
    assert events[1]["data"]["trace.trace_id"] == "custom id ☃"
    assert events[2]["time"] == "2023-11-14T22:13:20.000000000Z"
    assert events[2]["data"]["duration_ms"] == 0.0
    assert events[3]["data"]["name"] == "read secret/" and type(events[3]["data"]["duration_ms"]) is float
    assert events[4]["data"]["duration_ms"] == 0.002  # 1.5 µs, rounded half to even
    assert events[4]["time"] == "2023-11-14T22:13:21.999999999Z"
    for span, event in zip(spans, events, strict=True):
        assert text(event["data"]) == text(expected_data(span))
        assert parse_rfc3339_ns(event["time"]) == span.start_ns


def test_duration_rounds_to_microseconds() -> None:
    encoder = EventEncoder(SERVICE)
    for delta, expected in [
        (0, 0.0),
        (499, 0.0),
        (1_000, 0.001),
        (1_234_567, 1.235),
        (10_000_000_000, 10000.0),
    ]:
        span = record({}, start=1_000_000_000, end=1_000_000_000 + delta)
        assert json.loads(encoder.encode(span))["data"]["duration_ms"] == expected


def test_headers_and_compression(sample_spans: list[SpanRecord]) -> None:
    with HoneycombReceiver(KEY) as rx:
        assert native(rx, dataset="audit logs").send(sample_spans[:10], deadline(10)) == 0
        assert native(rx, compression="none").send(sample_spans[:10], deadline(10)) == 0
    gz, plain = rx.requests
    assert gz["path"] == "/1/batch/audit%20logs"
    assert gz["headers"]["Content-Encoding"] == "gzip"
    assert gz["headers"]["Content-Type"] == "application/json"
    assert gz["headers"]["X-Honeycomb-Team"] == KEY
    assert "Content-Encoding" not in plain["headers"]
    assert plain["size"] > 3 * gz["size"]
    assert {e["dataset"] for e in rx.events} == {"audit%20logs", "vault"}


def test_zstd(sample_spans: list[SpanRecord]) -> None:
    pytest.importorskip("zstandard")
    with HoneycombReceiver(KEY) as rx:
        assert native(rx, compression="zstd").send(sample_spans, deadline(10)) == 0
    assert rx.requests[0]["headers"]["Content-Encoding"] == "zstd"
    assert len(rx.events) == len(sample_spans) and rx.errors == []


def test_zstd_without_the_module_falls_back_to_gzip(
    sample_spans: list[SpanRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails
    with HoneycombReceiver(KEY) as rx:
        assert native(rx, compression="zstd").send(sample_spans[:5], deadline(10)) == 0
    assert rx.requests[0]["headers"]["Content-Encoding"] == "gzip"


def test_batches_are_split_under_the_byte_cap(sample_spans: list[SpanRecord]) -> None:
    cap = 100_000
    with HoneycombReceiver(KEY) as rx:
        sink = native(rx, compression="none", max_batch_bytes=cap, max_batch_events=50)
        assert sink.send(sample_spans, deadline(30)) == 0
    assert len(rx.requests) > len(sample_spans) // 50
    assert all(r["size"] <= cap for r in rx.requests)
    assert [e["data"]["trace.trace_id"] for e in rx.events] == [s.request_id for s in sample_spans]
    assert sink.stats()["batches"] == len(rx.requests)


def test_event_larger_than_a_batch_is_counted(sample_spans: list[SpanRecord]) -> None:
    big = record({"blob": "x" * 5000})
    small = record({"a": 1})
    with HoneycombReceiver(KEY) as rx:
        sink = native(rx, max_batch_bytes=2048)
        assert sink.send([small, big, small], deadline(10)) == 1
    assert len(rx.events) == 2
    assert sink.stats()["failed"] == 1 and sink.stats()["sent"] == 2


# ---------------------------------------------------------------- failures


class PerEventReceiver(HoneycombReceiver):
    """Answers 400 for events named in ``refuse`` and 503 the first ``busy`` times
    an event named in ``flaky`` comes; keeps only accepted events."""

    def __init__(self, refuse: set[str], flaky: set[str] | None = None, busy: int = 1) -> None:
        super().__init__(KEY)
        self.refuse = refuse
        self.flaky = Counter({k: busy for k in flaky or ()})
        self.answers: Counter[int] = Counter()

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        assert handler.headers.get("X-Honeycomb-Team") == self.api_key
        statuses = []
        with self.lock:
            for event in json.loads(body):
                span_id = event["data"]["trace.trace_id"]
                if span_id in self.refuse:
                    statuses.append({"status": 400, "error": "event has too many columns"})
                elif self.flaky[span_id] > 0:
                    self.flaky[span_id] -= 1
                    statuses.append({"status": 503, "error": "try again"})
                else:
                    statuses.append({"status": 202})
                    self.events.append({"dataset": "vault", **event})
                self.answers[statuses[-1]["status"]] += 1
        return json.dumps(statuses).encode()


@pytest.fixture(params=["native", "libhoney"])
def make_sink(request: pytest.FixtureRequest) -> Any:
    return native if request.param == "native" else libhoney


def deliver(sink: HoneycombSink, spans: list[SpanRecord], seconds: float) -> int:
    """send + flush + close: the whole outcome, for both encoders."""
    not_sent = sink.send(spans, deadline(seconds))
    sink.flush(seconds + 10)
    sink.close()
    return not_sent


def test_per_event_errors_are_counted(make_sink: Any, sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:60]
    refuse = {s.request_id for s in spans[::7]}
    flaky = {s.request_id for s in spans[1::5]}
    with PerEventReceiver(refuse, flaky, busy=2) as rx:
        sink = make_sink(rx)
        deliver(sink, spans, 20)
    stats = sink.stats()
    assert stats["failed"] == len(refuse)
    assert stats["sent"] == len(spans) - len(refuse)
    assert stats["retries"] >= 2
    assert {e["data"]["trace.trace_id"] for e in rx.events} == {s.request_id for s in spans} - refuse
    assert len(rx.events) == len(spans) - len(refuse)  # nothing sent twice
    assert rx.answers[400] == len(refuse)  # refused events are not retried
    assert rx.errors == []


def test_native_per_event_failures_in_the_return_value(sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:20]
    with PerEventReceiver({spans[3].request_id, spans[9].request_id}) as rx:
        assert native(rx).send(spans, deadline(10)) == 2


def test_server_error_then_recovery_loses_nothing(make_sink: Any, sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:80]
    with HoneycombReceiver(KEY) as rx:
        rx.fail_next = 3
        sink = make_sink(rx)
        assert deliver(sink, spans, 30) == 0
    stats = sink.stats()
    assert stats["sent"] == len(spans) and stats["failed"] == 0
    assert stats["retries"] >= 1
    assert sorted(e["data"]["trace.trace_id"] for e in rx.events) == sorted(s.request_id for s in spans)
    assert rx.errors == []


def test_client_error_is_final(make_sink: Any, sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:30]
    with HoneycombReceiver(KEY) as rx:
        rx.fail_with = 400
        sink = make_sink(rx)
        deliver(sink, spans, 10)
    stats = sink.stats()
    assert stats["failed"] == len(spans) and stats["sent"] == 0
    assert stats["retries"] == 0
    assert len(rx.requests) == stats["batches"]  # each batch posted once


def test_native_client_error_in_the_return_value(sample_spans: list[SpanRecord]) -> None:
    with HoneycombReceiver(KEY) as rx:
        rx.fail_with = 403
        sink = native(rx)
        assert sink.send(sample_spans[:30], deadline(10)) == 30
    assert len(rx.requests) == 1


def test_receiver_down(make_sink: Any, sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:25]
    sink = make_sink(None)
    started = time.monotonic()
    deliver(sink, spans, 1.0)
    elapsed = time.monotonic() - started
    stats = sink.stats()
    assert stats["failed"] == len(spans) and stats["sent"] == 0
    assert stats["retries"] >= 1
    assert elapsed < 5.0  # gave up at the deadline (with room for a slow machine)


def test_slow_receiver_deadline_is_respected(make_sink: Any, sample_spans: list[SpanRecord]) -> None:
    spans = sample_spans[:25]
    with HoneycombReceiver(KEY) as rx:
        rx.delay = 4.0
        sink = make_sink(rx, timeout=30.0)
        started = time.monotonic()
        sink.send(spans, deadline(0.6))
        sink.flush(10)
        elapsed = time.monotonic() - started
        sink.close()
    stats = sink.stats()
    assert stats["failed"] == len(spans) and stats["sent"] == 0
    assert elapsed < 3.5  # not the 4 s answer, not the 30 s timeout


def test_native_deadline_already_passed(sample_spans: list[SpanRecord]) -> None:
    with HoneycombReceiver(KEY) as rx:
        sink = native(rx)
        assert sink.send(sample_spans[:5], time.monotonic() - 1) == 5
    assert rx.requests == []


def test_key_never_logged(caplog: pytest.LogCaptureFixture, sample_spans: list[SpanRecord]) -> None:
    caplog.set_level(logging.DEBUG)
    spans = sample_spans[:12]

    class EchoingReceiver(HoneycombReceiver):
        """A 401 whose body quotes the key back."""

        def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
            raise AssertionError("not reached")

        def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
            key = handler.headers.get("X-Honeycomb-Team", "")
            self.reply(handler, 401, json.dumps({"error": f"unknown API key {key}"}).encode())

    for make in (native, libhoney):
        with EchoingReceiver(KEY) as rx:
            deliver(make(rx), spans, 5)
        with HoneycombReceiver(KEY) as rx:
            rx.fail_with = 500
            deliver(make(rx), spans, 0.5)
        with PerEventReceiver({s.request_id for s in spans[::2]}) as rx:
            deliver(make(rx), spans, 5)
        deliver(make(None), spans, 0.3)
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "unknown API key ***" in logged  # the echo was logged, masked
    assert "event refused" in logged and "not delivered" in logged
    assert KEY not in logged
    assert all(KEY not in repr(r.args) for r in caplog.records)


def test_refusals_are_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture, sample_spans: list[SpanRecord]
) -> None:
    caplog.set_level(logging.WARNING, logger="vault_observe")
    with HoneycombReceiver(KEY) as rx:
        rx.fail_with = 400
        sink = native(rx)
        for _ in range(5):
            assert sink.send(sample_spans[:3], deadline(5)) == 3
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert sink.stats()["failed"] == 15


def test_libhoney_send_after_close_counts(sample_spans: list[SpanRecord]) -> None:
    with HoneycombReceiver(KEY) as rx:
        sink = libhoney(rx)
        sink.close()
        assert sink.send(sample_spans[:4], deadline(1)) == 4
    assert sink.stats()["failed"] == 4


def test_libhoney_waits_for_room_instead_of_dropping(sample_spans: list[SpanRecord]) -> None:
    with HoneycombReceiver(KEY) as rx:
        sink = libhoney(rx, libhoney_max_pending=20, libhoney_batch_size=10)
        assert sink.send(sample_spans[:200], deadline(30)) == 0
        sink.flush(30)
        sink.close()
    assert sink.stats()["sent"] == 200 and len(rx.events) == 200


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="API key"):
        HoneycombSink("")
    with pytest.raises(ConfigError):
        HoneycombSink(KEY, encoder="protobuf")
    with pytest.raises(ConfigError):
        HoneycombSink(KEY, compression="brotli")
    with pytest.raises(ConfigError):
        HoneycombSink(KEY, timeout=0)
    with pytest.raises(ConfigError):
        HoneycombSink(KEY, api_host="api.honeycomb.io")
    sink = HoneycombSink(KEY, api_host="https://api.eu1.honeycomb.io/")
    assert sink.url == "https://api.eu1.honeycomb.io/1/batch/vault"
    assert KEY not in repr(sink)
    sink.close()


def test_native_encoder_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled body encoder when it is built, the Python one when disabled."""
    import importlib.util

    built = importlib.util.find_spec("vault_observe._batch_json") is not None
    sink = native()
    assert sink.implementation == ("c" if built and _compat.USE_EXTENSIONS else "py")
    assert (sink.load_error is None) == (sink.implementation == "c")
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", False)
    sink = native()
    assert sink.implementation == "py" and sink.load_error
    assert libhoney().implementation == "libhoney"


def test_libhoney_threads_start_in_start_and_end_in_close() -> None:
    before = set(threading.enumerate())
    sink = native(None, encoder="libhoney")
    assert set(threading.enumerate()) == before  # the constructor starts nothing
    sink.start()
    started = set(threading.enumerate()) - before
    assert "honeycomb-responses" in {t.name for t in started}
    sink.close()
    assert not [t for t in started if t.is_alive()]


def test_a_native_sink_starts_no_thread() -> None:
    before = set(threading.enumerate())
    sink = native(None)
    sink.start()
    assert set(threading.enumerate()) == before
    sink.close()


@pytest.mark.parametrize("count", [1, 2, 1000])
def test_compact_answers_are_read_event_by_event_unless_all_accepted(count: int) -> None:
    accepted = b"[" + b",".join([b'{"status":202}'] * count) + b"]"
    assert read_statuses(accepted, count) == Verdict(retry=[])
    head = accepted[: -len(b'{"status":202}]')]
    assert read_statuses(head + b'{"status":503}]', count) == Verdict(retry=[count - 1])
    assert read_statuses(head + b'{"status":400,"error":"bad"}]', count) == Verdict(
        1, [], "event refused (400): bad"
    )
    assert read_statuses(head + b'{"status":202}', count).detail.startswith("batch accepted with an unexpected")
