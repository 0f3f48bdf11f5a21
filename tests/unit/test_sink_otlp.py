"""OTLP/HTTP JSON sink: the ExportTraceServiceRequest, the exporter variables, failures.

Every test posts to a real loopback ``OtlpReceiver`` that decodes the JSON body.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.receivers import OtlpReceiver
from vault_observe import __version__, _compat
from vault_observe._core_py import Core
from vault_observe.errors import ConfigError
from vault_observe.model import PAIRED, SpanRecord
from vault_observe.sinks.encoding.otlp import any_value
from vault_observe.sinks.exporter import RetryPolicy
from vault_observe.sinks.otlp import DEFAULT_ENDPOINT, OtlpSink

FAST = RetryPolicy(initial=0.02, maximum=0.2, jitter=0.0)
NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def sample_spans(sample_log: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(sample_log.read_bytes())
    core.flush()
    return core.drain()


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sink_for(rx: OtlpReceiver | None, **kw: Any) -> OtlpSink:
    url = rx.url if rx is not None else f"http://127.0.0.1:{free_port()}/v1/traces"
    kw.setdefault("retry", FAST)
    kw.setdefault("environ", NO_ENV)
    return OtlpSink(url, **kw)


def from_any(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue (JSON mapping) back to a plain JSON value, checking its shape."""
    if not value:
        return None
    assert len(value) == 1, value
    kind, inner = next(iter(value.items()))
    if kind == "stringValue":
        assert isinstance(inner, str)
        return inner
    if kind == "boolValue":
        assert isinstance(inner, bool)
        return inner
    if kind == "intValue":
        assert isinstance(inner, str)  # int64 travels as a decimal string
        return int(inner)
    if kind == "doubleValue":
        assert isinstance(inner, float | int) and not isinstance(inner, bool)
        return float(inner)
    if kind == "arrayValue":
        return [from_any(v) for v in inner.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: from_any(kv["value"]) for kv in inner.get("values", [])}
    raise AssertionError(f"unknown AnyValue kind {kind}")


def text(value: Any) -> str:
    """JSON text: equal only when values and JSON types are equal."""
    return json.dumps(value, ensure_ascii=False)


def check_span(span: dict[str, Any], record: SpanRecord) -> None:
    assert span["traceId"] == record.trace_id.hex() and len(span["traceId"]) == 32
    assert span["spanId"] == f"{record.span_id:016x}"
    assert ("parentSpanId" in span) == bool(record.parent_span_id)
    if record.parent_span_id:
        assert span["parentSpanId"] == f"{record.parent_span_id:016x}"
    assert span["name"] == record.name
    assert span["kind"] == 2
    assert span["startTimeUnixNano"] == str(record.start_ns)
    assert span["endTimeUnixNano"] == str(record.end_ns)
    decoded = {a["key"]: from_any(a["value"]) for a in span["attributes"]}
    assert [a["key"] for a in span["attributes"]] == list(json.loads(record.attrs_json))  # document order
    assert text(decoded) == text(json.loads(record.attrs_json))
    if record.error:
        assert span["status"] == {"code": 2, "message": record.error}
    else:
        assert "status" not in span


def test_sample_spans(sample_spans: list[SpanRecord]) -> None:
    with OtlpReceiver() as rx:
        sink = sink_for(rx)
        assert sink.send(sample_spans, deadline(30)) == 0
    assert rx.errors == []
    assert len(rx.spans) == len(sample_spans)
    for span, record in zip(rx.spans, sample_spans, strict=True):
        check_span(span, record)
        assert span["_resource"] == {
            "attributes": [{"key": "service.name", "value": {"stringValue": "vault"}}]
        }
        assert span["_scope"] == {"name": "vault-observe", "version": __version__}
    kinds = {next(iter(a["value"])) for s in rx.spans for a in s["attributes"]}
    assert kinds == {"stringValue", "intValue", "doubleValue", "boolValue", "arrayValue"}
    policies = next(
        a["value"] for a in rx.spans[0]["attributes"] if a["key"] == "auth.policy_results.granting_policies"
    )
    assert "kvlistValue" in policies["arrayValue"]["values"][0]
    assert sum(1 for s in rx.spans if "status" in s) == sum(1 for r in sample_spans if r.error) > 0
    assert sink.stats()["sent"] == len(sample_spans)


def test_corpus_spans(shared_corpus: Path) -> None:
    core = Core()
    core.feed(shared_corpus.read_bytes())
    core.flush()
    records = core.drain()
    with OtlpReceiver() as rx:
        assert sink_for(rx, compression="gzip").send(records, deadline(60)) == 0
    assert rx.errors == [] and len(rx.spans) == len(records)
    for span, record in zip(rx.spans, records, strict=True):
        check_span(span, record)


def test_any_value_mapping() -> None:
    assert any_value("x") == {"stringValue": "x"}
    assert any_value(True) == {"boolValue": True}
    assert any_value(0) == {"intValue": "0"}
    assert any_value(-(2**63)) == {"intValue": str(-(2**63))}
    assert any_value(2**64) == {"stringValue": str(2**64)}  # beyond int64
    assert any_value(2.5) == {"doubleValue": 2.5}
    assert any_value(None) == {}
    assert any_value([1, [], {"a": None, "b": [False]}]) == {
        "arrayValue": {
            "values": [
                {"intValue": "1"},
                {"arrayValue": {"values": []}},
                {
                    "kvlistValue": {
                        "values": [
                            {"key": "a", "value": {}},
                            {"key": "b", "value": {"arrayValue": {"values": [{"boolValue": False}]}}},
                        ]
                    }
                },
            ]
        }
    }


def test_parent_and_odd_values() -> None:
    record = SpanRecord(
        b"\xff" * 16,
        1,
        2,
        "n",
        10,
        20,
        "",
        PAIRED,
        "",
        b'{"big":18446744073709551615,"deep":[[[[1]]]],"u":"\xc3\xbc\\n"}',
    )
    with OtlpReceiver() as rx:
        assert sink_for(rx).send([record], deadline(10)) == 0
    span = rx.spans[0]
    assert span["parentSpanId"] == "0000000000000002"
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values["big"] == {"stringValue": "18446744073709551615"}  # beyond int64
    assert from_any(values["deep"]) == [[[[1]]]]
    assert values["u"] == {"stringValue": "ü\n"}


# ---------------------------------------------------------------- settings


def test_endpoint_from_the_environment() -> None:
    assert OtlpSink(environ={}).endpoint == DEFAULT_ENDPOINT
    assert (
        OtlpSink(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).endpoint
        == "http://c:4318/v1/traces"
    )
    assert (
        OtlpSink(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).endpoint
        == "http://c:4318/v1/traces"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/custom",
    }
    assert OtlpSink(environ=both).endpoint == "http://t:1/custom"  # as is
    assert OtlpSink("http://arg/v1/traces", environ=both).endpoint == "http://arg/v1/traces"
    with pytest.raises(ConfigError):
        OtlpSink(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"})


def test_environment_settings_reach_the_wire(sample_spans: list[SpanRecord]) -> None:
    with OtlpReceiver() as rx:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.base_url,
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic,x-only-generic=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Api-Key=s%20ecret%3D%2C ,x-tenant = team%2Fa",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        }
        sink = OtlpSink(environ=env, retry=FAST)
        assert sink.send(sample_spans[:20], deadline(10)) == 0
    assert rx.errors == [] and len(rx.spans) == 20
    headers = {k.lower(): v for k, v in rx.requests[0]["headers"].items()}
    assert headers["api-key"] == "s ecret=,"  # URL-decoded, trace variable first
    assert headers["x-tenant"] == "team/a"
    assert "x-only-generic" not in headers  # the trace variable replaces the generic one
    assert headers["content-encoding"] == "gzip"
    assert headers["content-type"] == "application/json"
    assert rx.requests[0]["path"] == "/v1/traces"
    assert sink._exporter.timeout == 2.5


def test_arguments_override_the_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_TIMEOUT": "100",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
    }
    sink = OtlpSink(timeout=3.0, compression="none", headers={"A": "2"}, environ=env)
    assert sink._exporter.timeout == 3.0
    headers = sink._exporter.client.headers
    assert headers["a"] == "2" and "Content-Encoding" not in headers


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
        {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "0"},
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"},
        {"OTEL_EXPORTER_OTLP_HEADERS": "just-a-token-value"},
    ],
)
def test_bad_settings(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        OtlpSink(environ=env)
    assert "just-a-token-value" not in str(info.value)  # a malformed header may be a credential


# ---------------------------------------------------------------- failures


class RetryAfterReceiver(OtlpReceiver):
    """Failure answers carry ``Retry-After``."""

    retry_after = "1"

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:  # type: ignore[override]
        handler.send_response(status)
        if status in (429, 503):
            handler.send_header("Retry-After", self.retry_after)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def test_retry_after_is_honoured(sample_spans: list[SpanRecord]) -> None:
    with RetryAfterReceiver() as rx:
        rx.fail_next, rx.fail_status = 1, 429
        sink = sink_for(rx)
        started = time.monotonic()
        assert sink.send(sample_spans[:10], deadline(10)) == 0
        elapsed = time.monotonic() - started
    assert elapsed >= 0.9  # the server's 1 s, not the policy's 20 ms
    assert len(rx.spans) == 10 and sink.stats()["retries"] == 1


def test_retry_after_beyond_the_deadline_gives_up_now(sample_spans: list[SpanRecord]) -> None:
    with RetryAfterReceiver() as rx:
        rx.retry_after = "120"
        rx.fail_with, rx.fail_status = 503, 503
        sink = sink_for(rx)
        started = time.monotonic()
        assert sink.send(sample_spans[:10], deadline(5)) == 10
        assert time.monotonic() - started < 2.0
    assert len(rx.requests) == 1 and sink.stats()["retries"] == 0


def test_server_error_then_recovery_loses_nothing(sample_spans: list[SpanRecord]) -> None:
    with OtlpReceiver() as rx:
        rx.fail_next = 3
        sink = sink_for(rx, max_batch_spans=100)
        assert sink.send(sample_spans[:250], deadline(30)) == 0
    assert [s["traceId"] for s in rx.spans] == [r.trace_id.hex() for r in sample_spans[:250]]
    assert sink.stats() | {"bytes": 0} == {
        "sent": 250,
        "failed": 0,
        "unencodable": 0,
        "retries": 3,
        "batches": 3,
        "bytes": 0,
    }


def test_client_error_is_final(sample_spans: list[SpanRecord]) -> None:
    with OtlpReceiver() as rx:
        rx.fail_with = 400
        sink = sink_for(rx)
        assert sink.send(sample_spans[:10], deadline(10)) == 10
    assert len(rx.requests) == 1
    assert sink.stats()["failed"] == 10 and sink.stats()["retries"] == 0


def test_receiver_down(sample_spans: list[SpanRecord]) -> None:
    sink = sink_for(None)
    started = time.monotonic()
    assert sink.send(sample_spans[:10], deadline(1.0)) == 10
    assert time.monotonic() - started < 3.0
    assert sink.stats()["retries"] >= 1


def test_slow_receiver_deadline_is_respected(sample_spans: list[SpanRecord]) -> None:
    with OtlpReceiver() as rx:
        rx.delay = 4.0
        sink = sink_for(rx, timeout=30.0)
        started = time.monotonic()
        assert sink.send(sample_spans[:10], deadline(0.6)) == 10
        assert time.monotonic() - started < 2.5


def test_partial_success_is_counted(sample_spans: list[SpanRecord]) -> None:
    class Partial(OtlpReceiver):
        def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
            super().decode(handler, body)
            return b'{"partialSuccess":{"rejectedSpans":"3","errorMessage":"too many attributes"}}'

    with Partial() as rx:
        sink = sink_for(rx)
        assert sink.send(sample_spans[:10], deadline(10)) == 3
    assert sink.stats()["failed"] == 3 and sink.stats()["sent"] == 7


def test_header_values_never_logged(caplog: pytest.LogCaptureFixture, sample_spans: list[SpanRecord]) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "otlp-secret-token-4f1d"

    class Echo(OtlpReceiver):
        def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
            self.reply(handler, 401, f"bad token {handler.headers.get('authorization')}".encode())

    with Echo() as rx:
        sink_for(rx, headers={"authorization": f"Bearer {secret}"}).send(sample_spans[:3], deadline(5))
    env = {"OTEL_EXPORTER_OTLP_HEADERS": f"x-api-key={secret}"}
    sink_for(None, environ=env).send(sample_spans[:3], deadline(0.3))
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    assert "bad token ***" in logged
    assert secret not in logged


def test_encoder_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled body encoder when it is built, the Python one when disabled."""
    import importlib.util

    built = importlib.util.find_spec("vault_observe._batch_json") is not None
    disabled = not _compat.USE_EXTENSIONS
    sink = sink_for(None)
    assert sink.implementation == ("c" if built and not disabled else "py")
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", False)
    assert sink_for(None).implementation == "py"
