"""One hostile line costs at most itself: the findings of the differential fuzzer
(``tests/fuzz``) as regression cases, run against both cores and every encoder.

Core side: reserved attribute names, the nil UUID, odd ``feed`` arguments, and a
core used from several threads at once (a clear RuntimeError, never corrupted
memory) or fed a buffer that another thread changes meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.implementations import core_class
from vault_observe import _core_py
from vault_observe import core as default_core
from vault_observe.model import EVICTED, ORPHAN, PAIRED, PAIRING_KEY, UNANSWERED

from .test_core import ID1, T0, Make, ev, only, raw, spans_of, t

NIL = "00000000-0000-0000-0000-000000000000"


# ---------------------------------------------------------------- reserved names


def pairing_keys(attrs_json: bytes) -> list[Any]:
    """Every ``vault_observe.*`` key of the attribute bytes, duplicates included."""
    pairs = json.loads(attrs_json, object_pairs_hook=lambda items: items)
    return [(k, v) for k, v in pairs if k.startswith("vault_observe.")]


@pytest.mark.parametrize("flatten_arrays", [False, True])
def test_entry_keys_under_the_reserved_prefix_are_dropped_and_counted(
    make_core: Make, flatten_arrays: bool
) -> None:
    core = make_core(flatten_arrays=flatten_arrays)
    own = {"vault_observe.pairing": "paired", "vault_observe": {"x": [1, 2], "y": None}}
    line = ev("response", **own)  # type: ignore[arg-type]
    span = only(spans_of(core, line))
    # one marker, the daemon's own: the entry's claim to be "paired" is gone
    assert pairing_keys(span.attrs_json) == [(PAIRING_KEY, "orphan")]
    assert span.attributes()["auth.token_type"] == "service"
    # the marker, x (one array, or x.0 and x.1); y is null and gives no name at all
    assert core.counters()["reserved_keys"] == (3 if flatten_arrays else 2)
    reason, head = core.take_bad_samples()["reserved_keys"]
    assert "vault_observe." in reason and head == line[:48]


def test_reserved_keys_on_every_pairing(make_core: Make) -> None:
    core = make_core(max_pending=1)
    marker = {"vault_observe.pairing": "orphan"}
    lines = [
        ev("request", ID1, T0, error="x", **marker),  # evicted
        ev("request", "not-a-uuid", t(1), **marker),  # answered by the next line
        ev("response", "not-a-uuid", t(2), **marker),  # paired
        ev("request", "id-3", t(3), **marker),  # unanswered at the flush
    ]
    spans = spans_of(core, b"".join(lines))
    by_pairing = {s.pairing: s for s in spans}
    assert set(by_pairing) == {EVICTED, PAIRED, UNANSWERED}
    for span in spans:
        expected = [] if span.pairing == PAIRED else [(PAIRING_KEY, span.attributes()[PAIRING_KEY])]
        assert pairing_keys(span.attrs_json) == expected
    assert by_pairing[EVICTED].attributes()[PAIRING_KEY] == "evicted"
    # the lines whose attributes made a span, each flattened once: 3 entry keys dropped
    # (a waiting request keeps its line, flattened only if no response comes)
    assert core.counters()["reserved_keys"] == 3


def test_reserved_prefix_is_a_prefix_of_the_flattened_name(core: Any) -> None:
    line = raw('"vault_observe":"kept","vault_observex":1,"a":{"vault_observe.b":2},"vault_observe.":3')
    span = only(spans_of(core, line))
    attrs = span.attributes()
    assert attrs["vault_observe"] == "kept" and attrs["vault_observex"] == 1
    assert attrs["a.vault_observe.b"] == 2  # not under the prefix once flattened
    assert "vault_observe." not in attrs
    assert core.counters()["reserved_keys"] == 1


def test_reserved_keys_with_a_key_filter_and_repeated_keys(make_core: Make) -> None:
    core = make_core(include=["*"])
    # repeated names make the compiled core take the reference path: same outcome
    line = raw('"vault_observe.pairing":"a","vault_observe":{"pairing":"b"},"z":1')
    span = only(spans_of(core, line))
    assert pairing_keys(span.attrs_json) == [(PAIRING_KEY, "orphan")]
    assert span.attributes()["z"] == 1
    assert core.counters()["reserved_keys"] == 2


def test_flatten_drops_reserved_names() -> None:
    flat, dropped = _core_py.flatten_counted({"a": 1, "vault_observe": {"p": [1], "q": {}}})
    assert flat == {"a": 1} and dropped == 1
    assert _core_py.flatten({"vault_observe.x": 1}) == {}


# ---------------------------------------------------------------- trace ids


def test_nil_uuid_request_id_is_hashed_never_a_zero_trace_id(core: Any) -> None:
    rid = NIL
    spans = spans_of(core, ev("request", rid, T0) + ev("response", rid, t(1)))
    span = only(spans)
    assert span.pairing == PAIRED
    assert span.trace_id != bytes(16)
    assert span.trace_id == _core_py.trace_id_for(rid.encode())
    assert span.request_id == rid
    # unanswered and orphan spans too
    for line in (ev("request", rid, t(2)), ev("response", rid, t(3))):
        for s in spans_of(core, line):
            assert s.trace_id != bytes(16) and s.request_id == rid
            assert s.pairing in (ORPHAN, UNANSWERED)


def test_nil_uuid_is_not_a_uuid() -> None:
    assert _core_py.uuid_bytes(NIL.encode()) is None
    assert any(_core_py.trace_id_for(NIL.encode()))


# ---------------------------------------------------------------- odd arguments


@pytest.mark.parametrize("bad", [5, 1.5, "text", None, [104, 105]])
def test_feed_refuses_what_is_not_bytes_alike_in_both_cores(core: Any, bad: Any) -> None:
    with pytest.raises(TypeError):
        core.feed(bad)
    assert core.counters()["lines"] == 0
    # and the core works on
    assert only(spans_of(core, ev("response"))).pairing == ORPHAN


def test_feed_takes_a_non_contiguous_memoryview(core: Any) -> None:
    line = ev("response")
    doubled = bytes(b for c in line for b in (c, 0x20))
    view = memoryview(doubled)[::2]
    assert not view.contiguous and view.tobytes() == line
    span = only(spans_of(core, view))
    assert span.pairing == ORPHAN and span.request_id == ID1


# ---------------------------------------------------------------- threads


@pytest.fixture
def switch_often() -> Any:
    """Threads take turns far more often than every 5 ms: more overlapping calls."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def compiled_core(**options: Any) -> Any:
    return core_class("c")(**options)


def big_chunk(n: int = 600, *, start: int = 0) -> bytes:
    """Requests and responses enough for the two-pass path (64 KiB and more)."""
    lines = []
    for i in range(start, start + n):
        rid = f"req-{i}"
        lines.append(ev("request", rid, t(i % 50), error="e" if i % 7 == 0 else None))
        lines.append(ev("response", rid, t(i % 50 + 1), data={f"k{i}": i, "f": 1.5}))
    return b"".join(lines)


@pytest.mark.c_extension
@pytest.mark.parametrize("release_gil", [False, True])
def test_a_second_call_while_one_runs_is_refused(release_gil: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key filter calls Python in the middle of a feed, which lets other threads run:
    a call on the same core from there gets a clear RuntimeError."""
    calls: list[str] = []
    box: list[Any] = []

    class Reentrant(_core_py.KeyFilter):
        def keep(self, key: str) -> bool:
            if box and not calls:
                core = box[0]
                for name, call in (
                    ("feed", lambda: core.feed(ev("response"))),
                    ("flush", core.flush),
                    ("expire", lambda: core.expire(0)),
                    ("drain", core.drain),
                    ("drain_spans", core.drain_spans),
                    ("init", lambda: core.__init__()),
                ):
                    with pytest.raises(RuntimeError, match="one call at a time"):
                        call()
                    calls.append(name)
            return True

    monkeypatch.setattr(_core_py, "KeyFilter", Reentrant)
    core = compiled_core(include=["*"], release_gil=release_gil)
    box.append(core)
    span = only(spans_of(core, ev("response")))
    assert calls == ["feed", "flush", "expire", "drain", "drain_spans", "init"]
    assert span.request_id == ID1 and core.counters()["responses"] == 1


@pytest.mark.c_extension
@pytest.mark.parametrize("options", [{"release_gil": True}, {"include": ["*"]}], ids=["gil-free", "filter"])
def test_threads_hammering_one_compiled_core_get_runtime_errors_not_corruption(
    options: dict[str, Any], switch_often: None
) -> None:
    """Both ways a feed lets other threads in: the GIL-free first pass, and the key
    filter (Python) asked about names it has not seen (each line has its own)."""
    core = compiled_core(max_pending=50, **options)
    chunk = big_chunk(300)
    # At least 2 s, and on until the calls have overlapped (a loaded machine may need
    # longer for that), at most 30 s.
    start = time.monotonic()
    refused = [0]
    errors: list[BaseException] = []

    def running() -> bool:
        elapsed = time.monotonic() - start
        return elapsed < 2.0 or (refused[0] == 0 and elapsed < 30.0)

    def work(op: str) -> None:
        try:
            while running():
                try:
                    if op == "feed":
                        core.feed(chunk, 0)
                    elif op == "expire":
                        core.expire(10**18)
                    elif op == "flush":
                        core.flush()
                    else:
                        for span in core.drain():
                            assert len(span.trace_id) == 16
                except RuntimeError as exc:
                    assert "one call at a time" in str(exc)
                    refused[0] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(op,)) for op in ("feed", "feed", "expire", "flush", "drain")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert refused[0] > 0  # the calls did overlap
    # the core still works and still agrees with itself
    core.flush()
    core.drain()
    before = core.counters()
    core.feed(ev("response", "after", T0))
    assert core.counters()["responses"] == before["responses"] + 1


@pytest.mark.c_extension
def test_buffer_changed_by_another_thread_during_a_gil_free_feed(switch_often: None) -> None:
    """The first pass runs without the GIL; another thread adds and removes newlines
    meanwhile. Spans may be garbage, but nothing is read out of bounds (the sanitized
    fuzz run checks that part) and the core goes on."""
    core = compiled_core(release_gil=True)
    base = big_chunk(400)
    buf = bytearray(base)
    positions = [i for i in range(0, len(buf), 97)]
    done = threading.Event()

    def scribble() -> None:
        k = 0
        while not done.is_set():
            for i in positions:
                buf[i] = 10 if (k + i) % 2 else base[i]
            k += 1

    thread = threading.Thread(target=scribble)
    thread.start()
    try:
        for _ in range(30):
            core.feed(buf, 0)
            core.drain()
    finally:
        done.set()
        thread.join(30)
    core.flush()
    core.drain()
    assert core.counters()["lines"] > 0
    core.feed(ev("response", "x", T0))
    assert only(core.drain()).request_id == "x"


# ---------------------------------------------------------------- encoders


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """json and == deep enough for what the cores accept (about 1,023 levels), for the
    test's own checks only: the encoders run at the default recursion limit."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def loads(data: Any, **kw: Any) -> Any:
    with deep_recursion():
        return json.loads(data, **kw)


def nested(depth: int, leaf: Any = "x\"\\é\n") -> Any:
    """An array ``depth`` deep holding an object, a string with escapes, a float."""
    value: Any = [leaf, {"k": [1.5, None, True]}]
    for _ in range(depth - 1):
        value = [value, -3]
    return value


def hostile_lines(depth: int) -> bytes:
    """A paired request/response, an orphan and an unanswered request, each with an
    array ``depth`` deep and an ``error`` that is not the last top-level key."""
    with deep_recursion():
        value = json.dumps(nested(depth), ensure_ascii=False, separators=(",", ":"))

    def line(kind: str, rid: str, at: str) -> bytes:
        return (
            f'{{"time":"{at}","type":"{kind}","error":"boom","request":{{"id":"{rid}","operation":"update",'
            f'"mount_point":"secret/","data":{{"deep":{value},"n":1}}}},"auth":{{"policies":["a"]}}}}\n'
        ).encode()

    return (
        line("request", ID1, T0)
        + line("response", ID1, t(1))
        + line("response", "orphan-id", t(2))
        + line("request", "waits-forever", t(3))
    )


def encoders() -> list[tuple[str, Any, Any]]:
    """(name, compiled, Python) encoder pairs of every sink, as callables batch -> bytes."""
    from vault_observe import __version__
    from vault_observe.sinks import zipkin as zipkin_sink
    from vault_observe.sinks.encoding import honeycomb, otlp, zipkin

    pairs: list[tuple[str, Any, Any]] = []
    scope = (zipkin_sink.SCOPE_NAME, __version__)
    zk_fast = zipkin.ProtoBodyEncoder("vault", *scope).compiled_encode  # None when not built
    if zk_fast is not None:
        pairs.append(("zipkin-proto", zk_fast, zipkin.ProtoBodyEncoder("vault", *scope, compiled=False).encode))
    json_encoder = zipkin.JsonEncoder("vault", zipkin_sink.SCOPE_NAME, __version__)
    pairs.append(("zipkin-json", json_encoder.encode, json_encoder.encode))
    hc_fast, hc_py = honeycomb.BatchEncoder("vault"), honeycomb.BatchEncoder("vault", compiled=False)
    ot_fast, ot_py = otlp.BodyEncoder("vault"), otlp.BodyEncoder("vault", compiled=False)
    pairs.append(("honeycomb", lambda s: hc_fast.encode(s).body, lambda s: hc_py.encode(s).body))
    pairs.append(("otlp", lambda s: ot_fast.encode(s).body, lambda s: ot_py.encode(s).body))
    return pairs


def decode(name: str, body: bytes) -> list[Any]:
    from tests.receivers import decode_zipkin_proto

    if name == "zipkin-proto":
        return decode_zipkin_proto(body)
    document = loads(body)
    if name == "otlp":
        return list(document["resourceSpans"][0]["scopeSpans"][0]["spans"])
    assert isinstance(document, list)
    return document


@pytest.mark.parametrize("depth", [20, 33, 84, 300, 990, 1015])
def test_deep_values_are_encoded_alike_by_every_encoder(impl: str, depth: int) -> None:
    """Findings 1-3: OTLP failed from 84 levels, the native Honeycomb sink (an error not
    last) and the Python Zipkin encoder from about 990; a whole batch went with them."""
    from vault_observe.sinks.stdout import encode_line

    core = core_class(impl)()
    core.feed(hostile_lines(depth) + ev("response", "plain-id", t(4)))
    core.flush()
    spans = core.drain_spans()
    assert len(spans) == 4 and core.counters()["malformed"] == 0
    records = list(spans)
    for name, fast, ref in encoders():
        body = fast(spans)
        assert body == ref(records), name  # packed or records, compiled or Python: same bytes
        decoded = decode(name, body)
        assert len(decoded) == 4, name
    lines = b"".join(encode_line(record) for record in records)
    assert [loads(x)["request_id"] for x in lines.splitlines()] == [s.request_id for s in records]


def otlp_attr(span: dict[str, Any], key: str) -> Any:
    return next(a["value"] for a in span["attributes"] if a["key"] == key)


@pytest.mark.parametrize("depth", [32, 33, 500])
def test_otlp_writes_values_beyond_the_depth_limit_as_their_json_text(depth: int) -> None:
    from vault_observe.sinks.encoding import otlp

    core = default_core.Core()
    value = nested(depth)
    with deep_recursion():
        core.feed(raw('"v":' + json.dumps(value, ensure_ascii=False, separators=(",", ":"))))
    spans = core.drain_spans()
    body = otlp.BodyEncoder("vault").encode(spans).body
    assert body == otlp.BodyEncoder("vault", compiled=False).encode(list(spans)).body
    any_value = otlp_attr(decode("otlp", body)[0], "v")
    level = 1
    while "arrayValue" in any_value:
        any_value = any_value["arrayValue"]["values"][0]
        level += 1
    assert level == min(depth, otlp.MAX_VALUE_DEPTH) + 1
    if depth > otlp.MAX_VALUE_DEPTH:
        inner = value
        for _ in range(otlp.MAX_VALUE_DEPTH):
            inner = inner[0]
        with deep_recursion():
            assert json.loads(any_value["stringValue"]) == inner
    else:
        assert any_value == {"stringValue": value_leaf(value)}


def value_leaf(value: Any) -> Any:
    while isinstance(value, list):
        value = value[0]
    return value


def test_honeycomb_error_not_last_with_a_deep_value(impl: str) -> None:
    """The error member is found without decoding the attributes: one ``error``."""
    from vault_observe.sinks.encoding import honeycomb

    core = core_class(impl)()
    core.feed(hostile_lines(1000))
    core.flush()
    spans = core.drain_spans()
    for compiled in (True, False):
        body = honeycomb.BatchEncoder("vault", compiled=compiled).encode(spans).body
        events = loads(body, object_pairs_hook=lambda items: items)
        for event in events:
            data = dict(event)["data"]
            assert [v for k, v in data if k == "error"] == ["boom"]
    # another text under "error" than the span's: the span's wins, once
    record = next(iter(spans))
    other = type(record)(
        record.trace_id,
        record.span_id,
        0,
        record.name,
        record.start_ns,
        record.end_ns,
        "mine",
        record.pairing,
        record.request_id,
        record.attrs_json,
    )
    event = honeycomb.EventEncoder("vault").encode(other)
    data = dict(loads(event, object_pairs_hook=lambda items: items))["data"]
    assert [v for k, v in data if k == "error"] == ["mine"]


def test_one_pairing_key_in_every_encoder(impl: str) -> None:
    """Finding 4: an entry's own vault_observe.pairing gave two, in some encoders."""
    core = core_class(impl)(max_pending=1)
    mark = {"vault_observe.pairing": "orphan", "vault_observe": {"pairing": "paired"}}
    core.feed(
        ev("request", "a-1", T0, **mark)  # evicted by the next
        + ev("request", "a-2", t(1), **mark)
        + ev("response", "a-2", t(2), **mark)  # paired
        + ev("response", "a-3", t(3), **mark)  # orphan
        + ev("request", "a-4", t(4), **mark)  # unanswered
    )
    core.flush()
    spans = core.drain_spans()
    expected = {"a-1": "evicted", "a-2": None, "a-3": "orphan", "a-4": "unanswered"}
    assert {s.request_id: s.attributes().get(PAIRING_KEY) for s in spans} == expected
    for name, fast, ref in encoders():
        body = fast(spans)
        assert body == ref(list(spans)), name
        for span in decode(name, body):
            if name.startswith("zipkin"):
                keys = [k for k in span["tags"] if k == PAIRING_KEY]  # a map: see the bytes below
                assert body.count(PAIRING_KEY.encode()) == 3
            elif name == "otlp":
                keys = [a["key"] for a in span["attributes"] if a["key"] == PAIRING_KEY]
            else:
                keys = [k for k in span["data"] if k == PAIRING_KEY]
            assert len(keys) <= 1, (name, span)
        if name in ("honeycomb", "otlp"):
            assert body.count(PAIRING_KEY.encode()) == 3, name  # evicted, orphan, unanswered


# ---------------------------------------------------------------- a span that cannot be encoded


class FailsOn:
    """An encoder that raises for any batch holding the span of request id ``bad``
    (standing in for a bug, or for a record no core would make)."""

    def __init__(self, inner: Any, bad: str = "bad") -> None:
        self.inner = inner
        self.bad = bad
        self.calls = 0
        self.content_type = getattr(inner, "content_type", "")

    def encode(self, spans: Any) -> Any:
        self.calls += 1
        if any(span.request_id == self.bad for span in spans):
            raise RecursionError("maximum recursion depth exceeded (injected)")
        return self.inner.encode(spans)


def packed_batch(impl: str, ids: list[str]) -> Any:
    """The spans of ``ids`` as the daemon hands them to a sink: a SpanBatch of chunks."""
    from vault_observe.model import SpanBatch

    chunks = []
    core = core_class(impl)()
    for k in range(0, len(ids), 7):
        core.feed(b"".join(ev("response", rid, t(i + k)) for i, rid in enumerate(ids[k : k + 7])))
        chunks.append(core.drain_spans())
    return SpanBatch(chunks)


def fast_retry() -> Any:
    from vault_observe.sinks.exporter import RetryPolicy

    return RetryPolicy(initial=0.02, maximum=0.1, jitter=0.0)


@pytest.mark.parametrize("sink_name", ["otlp", "honeycomb", "zipkin-native", "zipkin-json"])
def test_a_span_that_cannot_be_encoded_costs_only_itself(
    impl: str, sink_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.receivers import HoneycombReceiver, OtlpReceiver, ZipkinReceiver
    from vault_observe.sinks.honeycomb import HoneycombSink
    from vault_observe.sinks.otlp import OtlpSink
    from vault_observe.sinks.zipkin import ZipkinSink

    ids = [f"id-{i}" for i in range(40)]
    ids[5] = ids[23] = "bad"
    batch = packed_batch(impl, ids)
    receiver: Any
    if sink_name == "otlp":
        receiver = OtlpReceiver()
    elif sink_name == "honeycomb":
        receiver = HoneycombReceiver()
    else:
        receiver = ZipkinReceiver()
    with receiver:
        sink: Any
        if sink_name == "otlp":
            sink = OtlpSink(receiver.url, retry=fast_retry())
            sink.encoder = wrapped = FailsOn(sink.encoder)
        elif sink_name == "honeycomb":
            sink = HoneycombSink("test-key", api_host=receiver.base_url, retry=fast_retry())
            sink.body_encoder = wrapped = FailsOn(sink.body_encoder)
        else:
            sink = ZipkinSink(receiver.url, encoder=sink_name.split("-")[1])
            sink._body = wrapped = FailsOn(sink._body)
        try:
            failed = sink.send(batch, time.monotonic() + 30)
        finally:
            sink.close()
        received = receiver.events if sink_name == "honeycomb" else receiver.spans
        assert not receiver.errors
    assert failed == 2
    assert len(received) == 38  # in one request: the good runs' bodies merged
    assert len(receiver.requests) == 1
    stats = sink.stats()
    assert stats["unencodable"] == 2 and stats["failed"] == 2 and stats["sent"] == 38
    assert wrapped.calls <= 2 * 2 * 6 + 1  # halves: about 2 log2(n) encodes per bad span
    logged = [r.getMessage() for r in caplog.records if "cannot be encoded" in r.getMessage()]
    assert logged and "request id 'bad'" in logged[0] and "RecursionError" in logged[0]


def test_every_span_unencodable_sends_nothing() -> None:
    from tests.receivers import OtlpReceiver
    from vault_observe.sinks.otlp import OtlpSink

    with OtlpReceiver() as receiver:
        sink = OtlpSink(receiver.url, retry=fast_retry())
        sink.encoder = FailsOn(sink.encoder, bad="id-1")
        spans = spans_of(core_class("py")(), ev("response", "id-1", T0) * 3)
        assert sink.send(spans, time.monotonic() + 10) == 3
        sink.close()
        assert receiver.requests == []
    assert sink.stats()["unencodable"] == 3


def test_split_keeps_packed_chunks_and_joins_bodies_in_order(impl: str) -> None:
    from vault_observe.sinks.encoding.otlp import BodyEncoder
    from vault_observe.sinks.encoding.wire import JoinedBody
    from vault_observe.sinks.isolate import slice_spans

    ids = [f"id-{i}" for i in range(30)]
    batch = packed_batch(impl, ids)
    encoder = BodyEncoder("vault")
    whole = encoder.encode(batch)
    cuts = [0, 3, 7, 8, 20, 30]
    parts = [slice_spans(batch, a, b) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert [s.request_id for p in parts for s in p] == ids
    if impl == "c":
        assert all(type(c).__name__ == "PackedSpans" for p in parts for c in p.chunks)
    joined = JoinedBody.concat([encoder.encode(p) for p in parts])
    assert joined.body == whole.body and joined.ends == whole.ends
    assert [joined.item(i) for i in range(len(joined))] == [whole.item(i) for i in range(len(whole))]


def test_unencodable_is_a_metric_per_sink(tmp_path: Any) -> None:
    from tests.sinks import CollectingSink

    from .test_metrics import metrics_config, scrape, value

    class Counting(CollectingSink):
        def stats(self) -> dict[str, int]:
            return {"sent": len(self.spans), "unencodable": 3}

    from vault_observe.pipeline import Daemon

    daemon = Daemon(metrics_config(tmp_path), [Counting("otlp")])
    daemon.start()
    try:
        samples = scrape(daemon)
    finally:
        daemon.stop()
    assert value(samples, "vault_observe_sink_spans_unencodable_total", sink="otlp") == 3
    assert value(samples, "vault_observe_reserved_keys_total") == 0


def test_replay_with_a_deeply_nested_line_delivers_every_span(tmp_path: Any, sample_log: Any) -> None:
    """Finding 1 end to end: one line with an array 300 deep in a replay to OTLP."""
    import os
    import subprocess

    from tests.receivers import OtlpReceiver

    log = tmp_path / "audit.jsonl"
    sample = sample_log.read_bytes()
    log.write_bytes(sample + hostile_lines(300))
    expected = len(spans_of(core_class("py")(ttl_s=1e9), log.read_bytes()))
    with OtlpReceiver() as receiver:
        result = subprocess.run(
            [sys.executable, "-m", "vault_observe", "--input", str(log), "--otlp", receiver.url],
            capture_output=True,
            timeout=300,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert receiver.wait_for(lambda: len(receiver.spans) >= expected, 30)
        assert not receiver.errors
    assert len(receiver.spans) == expected
    assert b"failed=0" in result.stderr and b"unencodable=0" in result.stderr


@pytest.mark.parametrize("encoder", ["native", "json", "sdk"])
def test_zipkin_sinks_deliver_a_span_nested_1000_deep(impl: str, encoder: str) -> None:
    from tests.receivers import ZipkinReceiver
    from vault_observe.sinks.zipkin import ZipkinSink

    core = core_class(impl)()
    core.feed(hostile_lines(1000))
    core.flush()
    spans = core.drain_spans()
    with ZipkinReceiver() as receiver:
        sink = ZipkinSink(receiver.url, encoder=encoder)
        try:
            assert sink.send(spans, time.monotonic() + 30) == 0
        finally:
            sink.close()
        assert not receiver.errors
        tags = [span["tags"] for span in receiver.spans]
    assert len(tags) == 3 and sink.stats()["unencodable"] == 0
    with deep_recursion():
        assert json.loads(tags[0]["request.data.deep"]) == nested(1000)
