"""The Zipkin sink against a loopback receiver that decodes the real wire formats.

The protobuf from the native encoder (compiled or pure Python) must be byte for
byte what the stock exporter serializes for the same span built as a ReadableSpan.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.implementations import compiled_module
from tests.receivers import ZipkinReceiver
from vault_observe import __version__, _compat
from vault_observe._core_py import Core, dump_attrs
from vault_observe.errors import LeftToPython
from vault_observe.model import PAIRED, SpanRecord
from vault_observe.sinks import zipkin as zk
from vault_observe.sinks.encoding import zipkin_proto
from vault_observe.sinks.encoding.zipkin import ProtoBodyEncoder
from vault_observe.sinks.zipkin_sdk import EXPORTER_LOGGER

SERVICE = "vault-test"
ENCODERS = ["native", "native-py", "sdk", "json"]
SCOPE_TAGS = {
    "otel.library.name": "vault-observe",
    "otel.library.version": __version__,
    "otel.scope.name": "vault-observe",
    "otel.scope.version": __version__,
}

try:
    from vault_observe._zipkin_proto import ProtoEncoder as CompiledEncoder
except ImportError:  # not built: the tests marked c_extension skip, or fail in CI
    CompiledEncoder = None


def spans_of(path: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(path.read_bytes())
    core.flush()
    return core.drain()


@pytest.fixture(scope="module")
def sample_spans(sample_log: Path) -> list[SpanRecord]:
    return spans_of(sample_log)


@pytest.fixture(scope="module")
def corpus_spans(shared_corpus: Path) -> list[SpanRecord]:
    return spans_of(shared_corpus)


@pytest.fixture
def receiver() -> Iterator[ZipkinReceiver]:
    with ZipkinReceiver() as r:
        yield r
        assert r.errors == []


def make_sink(url: str, encoder: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> zk.ZipkinSink:
    with monkeypatch.context() as patch:
        if encoder == "native-py":
            patch.setattr(_compat, "USE_EXTENSIONS", False)
            encoder = "native"
        return zk.ZipkinSink(url, encoder=encoder, service_name=SERVICE, **kwargs)


def record(
    attrs: dict[str, Any],
    *,
    error: str = "",
    name: str = "read secret/",
    start_ns: int = 1_795_766_685_645_381_584,
    duration_ns: int = 831_480,
    parent: int = 0,
    span_id: int = 0x1234_5678_9ABC_DEF0,
) -> SpanRecord:
    trace_id = bytes.fromhex("0e14848dfee177f6a6bd204c986796d6")
    return SpanRecord(
        trace_id,
        span_id,
        parent,
        name,
        start_ns,
        start_ns + duration_ns,
        error,
        PAIRED,
        "0e14848d-fee1-77f6-a6bd-204c986796d6",
        dump_attrs(attrs),
    )


def expected_tags(span: SpanRecord) -> dict[str, str]:
    """Every attribute as text, then resource, scope and error status."""
    tags: dict[str, str] = {}
    for key, value in span.attributes().items():
        if isinstance(value, bool):
            tags[key] = "true" if value else "false"
        elif isinstance(value, list):
            tags[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(value, (str, int, float)):
            tags[key] = str(value)
    tags["service.name"] = SERVICE
    tags.update(SCOPE_TAGS)
    if span.error:
        tags["otel.status_code"] = "ERROR"
        tags["error"] = span.error
    return tags


def send_all(sink: zk.ZipkinSink, spans: list[SpanRecord], batch: int = 250) -> int:
    failed = 0
    for i in range(0, len(spans), batch):
        failed += sink.send(spans[i : i + batch], time.monotonic() + 30)
    return failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- delivery


@pytest.mark.parametrize("encoder", ENCODERS)
def test_delivers_every_span_with_its_fields_and_tags(
    encoder: str, sample_spans: list[SpanRecord], receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(receiver.url, encoder, monkeypatch)
    assert send_all(sink, sample_spans) == 0
    sink.close()
    assert len(receiver.spans) == len(sample_spans)
    want_type = "application/json" if encoder == "json" else "application/x-protobuf"
    assert set(receiver.content_types) == {want_type}
    assert max(len(s.attributes()) for s in sample_spans) > 128  # past the SDK's attribute limit
    assert any(s.error for s in sample_spans)
    for span, got in zip(sample_spans, receiver.spans, strict=True):
        assert got["traceId"] == span.request_id.replace("-", "")
        assert got["id"] == f"{span.span_id:016x}"
        assert "parentId" not in got
        assert got["name"] == span.name
        assert got["kind"] == "SERVER"
        assert got["timestamp"] == (span.start_ns + 500) // 1000
        assert got.get("duration", 0) == (span.end_ns - span.start_ns + 500) // 1000
        assert got["localEndpoint"] == {"serviceName": SERVICE}
        assert got["debug"] is True
        assert got["tags"] == expected_tags(span)
        if span.error:
            assert got["tags"]["otel.status_code"] == "ERROR"
            assert got["tags"]["error"] == span.error
    stats = sink.stats()
    assert stats["sent"] == len(sample_spans)
    assert stats["failed"] == stats["retries"] == 0
    assert stats["batches"] == len(receiver.requests)
    assert stats["bytes"] == sum(r["size"] for r in receiver.requests)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_parent_id_zero_duration_and_odd_attributes(
    encoder: str, receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    attrs = {
        "request.path": 'kv1/odd/<angle>&amp "q" \\ \u00e9\u56fd\U0001f511',
        "request.data.ctl": "a\nb\tc\u0001\u007f",
        "request.data.empty": "",
        "request.data.keys": ["a", 'b"c', {"name": "root", "n": [1, 2.5, None, True]}],
        "request.data.float": 1e-05,
        "request.data.big": 2**63 + 5,
        "request.data.neg": -0.0,
        "request.data.flag": False,
        'quote"key\\': 1,
        "error": "permission denied",
    }
    spans = [
        record(attrs, error="permission denied", parent=0xFEDC_BA98_7654_3210),
        record({"type": "request"}, duration_ns=0, name=""),
    ]
    sink = make_sink(receiver.url, encoder, monkeypatch)
    assert sink.send(spans, time.monotonic() + 10) == 0
    first, second = receiver.spans
    assert first["parentId"] == "fedcba9876543210"
    assert first["tags"] == expected_tags(spans[0])
    assert first["tags"]["request.data.keys"] == '["a","b\\"c",{"name":"root","n":[1,2.5,null,true]}]'
    assert first["tags"]["request.data.big"] == str(2**63 + 5)
    assert list(first["tags"])[-1] == "otel.status_code"  # "error" kept its attribute's place
    assert second.get("duration", 0) == 0 and second["name"] == ""
    assert second["tags"] == expected_tags(spans[1])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_gzip(
    encoder: str, sample_spans: list[SpanRecord], receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(receiver.url, encoder, monkeypatch, gzip=True)
    assert sink.send(sample_spans[:200], time.monotonic() + 10) == 0
    assert receiver.requests[0]["headers"]["Content-Encoding"] == "gzip"
    assert [s["id"] for s in receiver.spans] == [f"{s.span_id:016x}" for s in sample_spans[:200]]
    plain = zipkin_proto.ProtoEncoder(SERVICE, "vault-observe", __version__).encode(sample_spans[:200])
    assert sink.stats()["bytes"] == receiver.requests[0]["size"] < len(plain) // 3


# ---------------------------------------------------------------- native == SDK


def sdk_readable(span: SpanRecord) -> Any:
    """A ReadableSpan as the stock pipeline would carry this span (built here, not
    by the sink, so that the sink's own SDK path is checked too)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    flags = TraceFlags(TraceFlags.SAMPLED)
    trace_id = int.from_bytes(span.trace_id, "big")
    attrs = {
        k: json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, list) else v
        for k, v in span.attributes().items()
    }
    return ReadableSpan(
        span.name,
        SpanContext(trace_id, span.span_id, is_remote=False, trace_flags=flags),
        SpanContext(trace_id, span.parent_span_id, is_remote=False, trace_flags=flags)
        if span.parent_span_id
        else None,
        sdk_resource(),
        attrs,
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR, span.error) if span.error else Status(StatusCode.UNSET),
        start_time=span.start_ns,
        end_time=span.end_ns,
        instrumentation_scope=InstrumentationScope("vault-observe", __version__),
    )


@functools.cache
def sdk_resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource({"service.name": SERVICE})


@pytest.fixture(scope="module")
def sdk_serialize() -> Callable[[list[Any]], bytes]:
    from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
    from opentelemetry.exporter.zipkin.proto.http.v2 import ProtobufEncoder

    encoder = ProtobufEncoder(None)  # what the proto exporter uses: no truncation
    node = NodeEndpoint()
    node.service_name = SERVICE  # as export() takes it from the first span's resource

    def serialize(readables: list[Any]) -> bytes:
        return encoder.serialize(readables, node)

    return serialize


@pytest.fixture
def encoder_cls(impl: str) -> Any:
    """The native protobuf encoder of ``impl``: pure Python or compiled."""
    return zipkin_proto.ProtoEncoder if impl == "py" else compiled_module("_zipkin_proto").ProtoEncoder


def decoded(body: bytes) -> Any:
    from opentelemetry.exporter.zipkin.proto.http.v2.gen import zipkin_pb2

    message = zipkin_pb2.ListOfSpans()
    message.ParseFromString(body)
    return message


def assert_same_as_sdk(
    encoder_cls: Any, spans: list[SpanRecord], sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    encoder = encoder_cls(SERVICE, "vault-observe", __version__)
    readables = [sdk_readable(s) for s in spans]
    for span, readable in zip(spans, readables, strict=True):
        want = sdk_serialize([readable])
        got = encoder.encode([span])
        if got != want:
            assert decoded(got) == decoded(want), span  # shows the field that differs
            raise AssertionError(f"same message, different bytes: {span!r}")
    whole = encoder.encode(spans)
    assert whole == sdk_serialize(readables)
    assert decoded(whole) == decoded(sdk_serialize(readables))


def test_native_protobuf_equals_sdk_exporter_on_sample(
    encoder_cls: Any, sample_spans: list[SpanRecord], sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    assert_same_as_sdk(encoder_cls, sample_spans, sdk_serialize)


def test_native_protobuf_equals_sdk_exporter_on_corpus(
    encoder_cls: Any, corpus_spans: list[SpanRecord], sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    assert_same_as_sdk(encoder_cls, corpus_spans, sdk_serialize)


def test_sink_sdk_path_builds_the_same_spans(
    sample_spans: list[SpanRecord], sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    sink = zk.ZipkinSink("http://127.0.0.1:9/api/v2/spans", encoder="sdk", service_name=SERVICE)
    assert sink._sdk is not None
    readables = [sink._sdk.path.readable(s) for s in sample_spans]
    assert len({id(r.resource) for r in readables}) == 1  # one Resource, not one per span
    assert sdk_serialize(readables) == sdk_serialize([sdk_readable(s) for s in sample_spans])
    sink.close()


EDGE_CASES = [
    record({}),
    record({"error": "x"}),  # "error" attribute on a span without error status
    record({"a": 1, "error": "boom"}, error="boom\n\t* permission denied"),
    record({"service.name": "mine", "otel.scope.name": "s", "x": None, "o": {"k": [1]}}),
    record({"otel.status_code": "OK", "otel.library.version": "9"}, error="e"),
    record({"": "empty key", "k": ""}, name=""),
    record({"f": 1.5, "g": 1e16, "h": -2.5e-300, "i": -(2**70), "t": True}),
    record({"u": '\u0000\u001f"\\/\u2028\ud7ff\ue000\U0010ffff'}),
    record({"arr": [[], {}, "x\u00e9", 0.1, [None]]}),
    record({"a": 1}, start_ns=0, duration_ns=0),
    record({"a": 1}, start_ns=-500, duration_ns=499),
    record({"a": 1}, start_ns=1499, duration_ns=500),
    record({"a": 1}, span_id=0xFFFF_FFFF_FFFF_FFFF, parent=1),
    record({f"k{i}": i for i in range(300)}),
    # a Span whose size prefix is longer, and one whose is shorter, than its attributes suggest
    record({f"{i:04d}": 0 for i in range(1700)}),
    record({"ctl": "\u0001" * 3000}),
]


def test_native_protobuf_equals_sdk_exporter_on_edge_cases(
    encoder_cls: Any, sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    assert_same_as_sdk(encoder_cls, EDGE_CASES, sdk_serialize)


json_scalars = (
    st.text(st.characters(exclude_categories=("Cs",)))
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
)
json_values = st.recursive(
    json_scalars | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
flat_attrs = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
    | st.sampled_from(["error", "service.name", "otel.scope.version"]),
    json_scalars | st.lists(json_values, min_size=1, max_size=4),
    max_size=12,
)


@pytest.mark.c_extension("_zipkin_proto")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attrs=flat_attrs, error=st.sampled_from(["", "permission denied", "é\n"]))
def test_compiled_equals_python_and_sdk_on_generated_attributes(
    attrs: dict[str, Any], error: str, sdk_serialize: Callable[[list[Any]], bytes]
) -> None:
    span = record(attrs, error=error)
    want = sdk_serialize([sdk_readable(span)])
    assert zipkin_proto.ProtoEncoder(SERVICE, "vault-observe", __version__).encode([span]) == want
    assert CompiledEncoder(SERVICE, "vault-observe", __version__).encode([span]) == want


@pytest.mark.c_extension("_zipkin_proto")
def test_compiled_body_bigger_than_its_estimate(sdk_serialize: Callable[[list[Any]], bytes]) -> None:
    """Thousands of one-byte attributes give a message bigger than their JSON."""
    spans = [record({f"k{i}": i % 10 for i in range(5000)}), record({"a": "b"})]
    want = sdk_serialize([sdk_readable(span) for span in spans])
    assert len(want) > sum(len(span.attrs_json) for span in spans) + 320 * len(spans)
    assert CompiledEncoder(SERVICE, "vault-observe", __version__).encode(spans) == want


@pytest.mark.parametrize(
    "attrs_json",
    [b"", b"{", b'{"a":', b'{"a":1', b'{"a":1,}', b'{"a":tru}', b'{"a":"\\ud800"}', b'{"a":"x\x01"}', b"[]"],
)
def test_native_encoder_rejects_malformed_attrs(impl: str, encoder_cls: Any, attrs_json: bytes) -> None:
    """The Python encoder refuses them (the sink drops the span); the compiled one
    leaves them to it."""
    span = record({})
    span.attrs_json = attrs_json
    with pytest.raises(LeftToPython if impl == "c" else ValueError):
        encoder_cls(SERVICE, "vault-observe", __version__).encode([span])
    with pytest.raises(ValueError):
        ProtoBodyEncoder(SERVICE, "vault-observe", __version__).encode([span])


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize("encoder", ENCODERS)
def test_unencodable_span_is_counted_and_the_rest_delivered(
    encoder: str, sample_spans: list[SpanRecord], receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = record({"a": 1}, start_ns=-10_000)  # before 1970: no Zipkin timestamp
    batch = [*sample_spans[:5], bad, *sample_spans[5:10]]
    sink = make_sink(receiver.url, encoder, monkeypatch)
    assert sink.send(batch, time.monotonic() + 10) == 1
    assert [s["id"] for s in receiver.spans] == [f"{s.span_id:016x}" for s in batch if s is not bad]
    assert sink.stats()["failed"] == 1 and sink.stats()["sent"] == 10


@pytest.mark.parametrize("encoder", ENCODERS)
def test_receiver_down_gives_up_at_the_deadline(
    encoder: str, sample_spans: list[SpanRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(
        f"http://127.0.0.1:{free_port()}/api/v2/spans", encoder, monkeypatch, backoff_initial=0.05
    )
    start = time.monotonic()
    assert sink.send(sample_spans[:20], start + 0.6) == 20
    elapsed = time.monotonic() - start
    assert elapsed < 0.6 + 0.5
    stats = sink.stats()
    assert stats["failed"] == 20 and stats["sent"] == 0
    assert stats["retries"] >= 2  # 0.05, 0.1, 0.2 fit before the deadline


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("status", [502, 503, 504, 429])
def test_retryable_status_then_recovery_loses_nothing(
    encoder: str,
    status: int,
    sample_spans: list[SpanRecord],
    receiver: ZipkinReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver.fail_next = 2
    receiver.fail_status = status
    sink = make_sink(receiver.url, encoder, monkeypatch, backoff_initial=0.01)
    assert sink.send(sample_spans[:50], time.monotonic() + 10) == 0
    assert [s["id"] for s in receiver.spans] == [f"{s.span_id:016x}" for s in sample_spans[:50]]
    assert len(receiver.requests) == 3
    assert sink.stats() | {"bytes": 0} == {
        "sent": 50,
        "failed": 0,
        "retries": 2,
        "batches": 1,
        "bytes": 0,
        "unencodable": 0,
    }


@pytest.mark.parametrize("encoder", ENCODERS)
def test_client_error_is_permanent_and_logged_once(
    encoder: str,
    sample_spans: list[SpanRecord],
    receiver: ZipkinReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.fail_with = 400
    sink = make_sink(receiver.url, encoder, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="vault_observe.zipkin"):
        for _ in range(3):
            assert sink.send(sample_spans[:10], time.monotonic() + 10) == 10
    assert len(receiver.requests) == 3  # one request per send: no retry
    assert sink.stats() | {"bytes": 0} == {
        "sent": 0,
        "failed": 30,
        "retries": 0,
        "batches": 3,
        "bytes": 0,
        "unencodable": 0,
    }
    ours = [r for r in caplog.records if r.name == "vault_observe.zipkin"]
    assert len(ours) == 1 and "400" in ours[0].getMessage()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_slow_receiver_deadline_is_respected(
    encoder: str, sample_spans: list[SpanRecord], receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.delay = 3.0
    sink = make_sink(receiver.url, encoder, monkeypatch, timeout=10.0)
    start = time.monotonic()
    assert sink.send(sample_spans[:10], start + 0.5) == 10
    assert time.monotonic() - start < 0.5 + 0.5
    assert sink.stats()["failed"] == 10
    sink.close()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_past_deadline_sends_nothing(
    encoder: str, sample_spans: list[SpanRecord], receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(receiver.url, encoder, monkeypatch)
    assert sink.send(sample_spans[:3], time.monotonic() - 1) == 3
    assert receiver.requests == [] and sink.stats()["failed"] == 3
    assert sink.send([], time.monotonic() - 1) == 0


def test_close_ends_a_backoff_wait(sample_spans: list[SpanRecord]) -> None:
    sink = zk.ZipkinSink(f"http://127.0.0.1:{free_port()}/", backoff_initial=30.0, backoff_max=30.0)
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(sink.send(sample_spans[:4], time.monotonic() + 120))
    )
    start = time.monotonic()
    worker.start()
    time.sleep(0.2)
    sink.close()
    worker.join(5)
    assert result == [4] and time.monotonic() - start < 3


def test_keep_alive_connection_is_reused(sample_spans: list[SpanRecord], receiver: ZipkinReceiver) -> None:
    sink = zk.ZipkinSink(receiver.url, service_name=SERVICE)
    for i in range(5):
        assert sink.send(sample_spans[i * 10 : i * 10 + 10], time.monotonic() + 10) == 0
    assert sink.send(sample_spans[50:60], time.monotonic() + 10) == 0
    assert len(receiver.requests) == 6
    assert len({r["client"] for r in receiver.requests}) == 1  # one connection for all
    assert sink.stats()["retries"] == 0


def test_two_senders_post_at_once_on_their_own_connections(
    sample_spans: list[SpanRecord], receiver: ZipkinReceiver
) -> None:
    sink = zk.ZipkinSink(receiver.url, service_name=SERVICE)
    assert sink.concurrency == 2
    failed: list[int] = []
    started = threading.Barrier(2)

    def sender(k: int) -> None:
        started.wait()
        for i in range(k, 60, 2):
            failed.append(sink.send(sample_spans[i : i + 1], time.monotonic() + 10))

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == [0] * 60
    assert len({r["client"] for r in receiver.requests}) == 2  # a connection per sender
    assert sink.stats()["sent"] == 60 and sink.stats()["batches"] == 60
    assert sorted(s["name"] for s in receiver.spans) == sorted(s.name for s in sample_spans[:60])
    sink.close()
    deadline = time.monotonic() + 5
    while receiver.connections and time.monotonic() < deadline:  # the client closed them
        time.sleep(0.02)
    assert not receiver.connections


# ---------------------------------------------------------------- setup


def test_implementation_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", False)
    sink = zk.ZipkinSink("http://127.0.0.1:9/api/v2/spans")
    assert sink.implementation == "py" and "VAULT_OBSERVE_NO_EXTENSIONS" in (sink.load_error or "")
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", True)
    sink = zk.ZipkinSink("http://127.0.0.1:9/api/v2/spans")
    assert sink.implementation == ("py" if CompiledEncoder is None else "c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "thrift"}, "unknown Zipkin encoder"),
        ({"service_name": ""}, "service name"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        zk.ZipkinSink("http://127.0.0.1:9/", **kwargs)
    for encoder in zk.ENCODERS:
        with pytest.raises(ValueError, match="http"):
            zk.ZipkinSink("ftp://example.org/", encoder=encoder)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_make_zipkin_sink_from_config(
    receiver: ZipkinReceiver, sample_spans: list[SpanRecord], compression: str
) -> None:
    config = SimpleNamespace(
        zipkin=receiver.url,
        zipkin_encoder="json",
        zipkin_compression=compression,
        service_name="vault",
        send_timeout=5.0,
    )
    sink = zk.make_zipkin_sink(config)
    assert (sink.name, sink.encoder, sink.service_name, sink.timeout) == ("zipkin", "json", "vault", 5.0)
    assert sink.send(sample_spans[:2], time.monotonic() + 5) == 0
    assert receiver.spans[0]["localEndpoint"] == {"serviceName": "vault"}
    assert receiver.requests[0]["headers"].get("Content-Encoding") == (None if compression == "none" else "gzip")
    sink.flush(1.0)
    sink.close()


def test_zipkin_compression_flag() -> None:
    from vault_observe.config import load_config

    assert load_config(["--zipkin"], env={})[0].zipkin_compression == "none"
    assert load_config(["--zipkin", "--zipkin-compression", "gzip"], env={})[0].zipkin_compression == "gzip"


def test_sdk_exporter_error_log_is_rate_limited(
    sample_spans: list[SpanRecord], receiver: ZipkinReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.fail_with = 503
    sink = zk.ZipkinSink(receiver.url, encoder="sdk", backoff_initial=0.01, backoff_max=0.01)
    with caplog.at_level(logging.ERROR):
        # long enough for several retries on a loaded machine (10 ms apart)
        assert sink.send(sample_spans[:3], time.monotonic() + 2.0) == 3
    assert sink.stats()["retries"] >= 5
    assert len([r for r in caplog.records if r.name == EXPORTER_LOGGER]) <= 1  # one per minute
    sink.close()
    sink.close()


class RetryAfterReceiver(ZipkinReceiver):
    """Failure answers carry ``Retry-After: 1``."""

    @staticmethod
    def reply(handler: Any, status: int, body: bytes) -> None:
        handler.send_response(status)
        if status >= 400:
            handler.send_header("Retry-After", "1")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.mark.parametrize("encoder", ["native", "json"])
def test_retry_after_is_honoured(
    encoder: str, sample_spans: list[SpanRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    with RetryAfterReceiver() as rx:
        rx.fail_next, rx.fail_status = 1, 429
        sink = make_sink(rx.url, encoder, monkeypatch, backoff_initial=0.01)
        started = time.monotonic()
        assert sink.send(sample_spans[:5], time.monotonic() + 10) == 0
        assert time.monotonic() - started >= 0.9  # the server's second, not 10 ms
    assert len(rx.requests) == 2 and sink.stats()["retries"] == 1


@pytest.mark.parametrize("status", [408, 500])
def test_statuses_outside_the_otlp_retryable_set_are_final(
    status: int, sample_spans: list[SpanRecord], receiver: ZipkinReceiver
) -> None:
    receiver.fail_with = status
    sink = zk.ZipkinSink(receiver.url, backoff_initial=0.01)
    assert sink.send(sample_spans[:5], time.monotonic() + 10) == 5
    assert len(receiver.requests) == 1 and sink.stats()["retries"] == 0


def test_sdk_exporter_and_its_session_are_made_in_start(receiver: ZipkinReceiver) -> None:
    sink = zk.ZipkinSink(receiver.url, encoder="sdk")
    assert sink._sdk is not None and sink._sdk.path.exporter is None  # the constructor opens nothing
    sink.start()
    assert sink._sdk.path.exporter is not None
    sink.close()
