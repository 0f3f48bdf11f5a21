"""The compiled Honeycomb and OTLP body encoders (``_batch_json``) against the
Python encoders they replace: the same bytes for every span of the sample, of the
full corpus, and of odd records; a batch the compiled code cannot write exactly
is left to the Python encoder (``encode`` returns None)."""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from vault_observe import _compat
from vault_observe._core_py import Core, dump_attrs
from vault_observe.errors import LeftToPython
from vault_observe.model import ORPHAN, PAIRED, UNANSWERED, SpanRecord
from vault_observe.sinks.encoding import otlp
from vault_observe.sinks.encoding.honeycomb import BatchEncoder, EventEncoder
from vault_observe.sinks.encoding.wire import JoinedBody, pack

try:
    from vault_observe import _batch_json
except ImportError:  # not built: the marker below skips these tests, or fails them in CI
    _batch_json = None  # type: ignore[assignment]

pytestmark = pytest.mark.c_extension("_batch_json")

SERVICE = "vault-test"


@pytest.fixture(autouse=True)
def _compiled_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the compiled encoders: run them even under
    VAULT_OBSERVE_NO_EXTENSIONS=1 (the sinks' tests cover the Python path then)."""
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", True)


def spans_of(path: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(path.read_bytes())
    core.flush()
    return core.drain()


def record(
    attrs: dict[str, Any] | bytes,
    *,
    error: str = "",
    request_id: str = "req-1",
    parent: int = 0,
    pairing: int = PAIRED,
    start: int = 1_700_000_000_123_456_789,
    end: int | None = None,
    name: str = "read secret/",
    sample_rate: int = 1,
    span_id: int = 0x0123456789ABCDEF,
    trace_id: bytes = bytes(range(16)),
) -> SpanRecord:
    end = start + 1_234_567 if end is None else end
    raw = attrs if isinstance(attrs, bytes) else dump_attrs(attrs)
    return SpanRecord(
        trace_id, span_id, parent, name, start, end, error, pairing, request_id, raw, sample_rate
    )


# ---------------------------------------------------------------- reference bodies


def honeycomb_reference(spans: list[SpanRecord]) -> bytes:
    encoder = EventEncoder(SERVICE)
    return b"[" + b",".join(encoder.encode(span) for span in spans) + b"]"


def otlp_reference(spans: list[SpanRecord]) -> bytes:
    return (
        otlp.request_head(SERVICE)
        + b",".join(orjson.dumps(otlp.encode_span(span)) for span in spans)
        + otlp.REQUEST_TAIL
    )


def honeycomb_compiled(spans: list[SpanRecord]) -> tuple[bytes, list[int]] | None:
    """The compiled encoder's body and ends; None when it leaves the batch to Python."""
    try:
        out: tuple[bytes, list[int]] = _batch_json.HoneycombEncoder(SERVICE).encode(spans)
    except LeftToPython:
        return None
    return out


def otlp_compiled(spans: list[SpanRecord]) -> tuple[bytes, list[int]] | None:
    """The compiled encoder's body and ends; None when it leaves the batch to Python."""
    head = otlp.request_head(SERVICE)
    try:
        out: tuple[bytes, list[int]] = _batch_json.OtlpEncoder(head, otlp.REQUEST_TAIL).encode(spans)
    except LeftToPython:
        return None
    return out


def check_ends(body: bytes, ends: list[int], items: list[bytes], head_len: int) -> None:
    joined = JoinedBody(body, ends, head_len, 1)
    assert [joined.item(i) for i in range(len(items))] == items


def assert_same_honeycomb(spans: list[SpanRecord]) -> None:
    out = honeycomb_compiled(spans)
    assert out is not None, "the compiled encoder should write these spans"
    body, ends = out
    reference = honeycomb_reference(spans)
    if body != reference:
        encoder = EventEncoder(SERVICE)
        for i, span in enumerate(spans):
            start = 1 if i == 0 else ends[i - 1] + 1
            assert body[start : ends[i]] == encoder.encode(span), (i, span)
    assert body == reference
    check_ends(body, ends, [EventEncoder(SERVICE).encode(span) for span in spans], 1)


def assert_same_otlp(spans: list[SpanRecord]) -> None:
    out = otlp_compiled(spans)
    assert out is not None, "the compiled encoder should write these spans"
    body, ends = out
    reference = otlp_reference(spans)
    if body != reference:
        for i, span in enumerate(spans):
            single = otlp_compiled([span])
            assert single is not None
            assert single[0] == otlp_reference([span]), (i, span)
    assert body == reference
    head_len = len(otlp.request_head(SERVICE))
    check_ends(body, ends, [orjson.dumps(otlp.encode_span(span)) for span in spans], head_len)


# ---------------------------------------------------------------- real data


def test_sample_honeycomb(sample_log: Path) -> None:
    assert_same_honeycomb(spans_of(sample_log))


def test_sample_otlp(sample_log: Path) -> None:
    assert_same_otlp(spans_of(sample_log))


def test_corpus_honeycomb(shared_corpus: Path) -> None:
    assert_same_honeycomb(spans_of(shared_corpus))


def test_corpus_otlp(shared_corpus: Path) -> None:
    assert_same_otlp(spans_of(shared_corpus))


def test_sample_with_trace_context_and_sampling(sample_log: Path) -> None:
    """Parent ids, empty request ids and sample rates on real attributes."""
    spans = spans_of(sample_log)[:200]
    odd = [
        SpanRecord(
            s.trace_id,
            s.span_id,
            (0xFEDCBA9876543210 + i) if i % 3 == 0 else 0,
            s.name,
            s.start_ns,
            s.end_ns,
            s.error,
            s.pairing,
            "" if i % 5 == 0 else s.request_id,
            s.attrs_json,
            1 + i % 7,
        )
        for i, s in enumerate(spans)
    ]
    assert_same_honeycomb(odd)
    assert_same_otlp(odd)


def test_empty_batch() -> None:
    assert honeycomb_compiled([]) == (b"[]", [])
    assert otlp_compiled([]) == (otlp_reference([]), [])


def test_bodies_bigger_than_their_estimate() -> None:
    """Thousands of one-byte attributes make bodies several times their attributes'
    size: past the room first set aside for them."""
    tiny = record({f"k{i}": i % 10 for i in range(5000)})
    spans = [tiny, record({"a": "b"}), tiny]
    assert_same_honeycomb(spans)
    assert_same_otlp(spans)
    assert len(otlp_reference(spans)) > 3 * sum(len(span.attrs_json) + 256 for span in spans)


# ---------------------------------------------------------------- odd records

ODD_ATTRS: list[dict[str, Any]] = [
    {},
    {"a": 1},
    {"s": "plain", "u": "ünïcödé ☃ 𝄞 日本", "e": 'q"b\\s/l\n\r\t\b\f\x00\x01\x1f\x7f\u2028'},
    {'key "quoted"\n': "v", "ключ": "значение"},
    {"i": 0, "neg": -5, "max": 2**63 - 1, "min": -(2**63), "big": 2**63, "umax": 2**64 - 1},
    {"f": 1.5, "z": 0.0, "nz": -0.0, "tiny": 5e-5, "e5": 1e-05, "e5n": -1.234e-05, "e6": 1.5e-06},
    {"e16": 1e16, "e22": 1.2345e22, "small": 1e-300, "frac": 0.1, "third": 1 / 3, "r": 123456789.125},
    {"b": True, "c": False},
    {"arr": [1, "x", None, True, 2.5, [], {}, [[1, [2]]], {"a": None, "b": [False, {"c": "d"}]}]},
    {"objs": [{"policy": "default", "name": "n\n"}, {"x": {"y": {"z": 1}}}]},
    {"empty_arr": [], "nested": [[[[[[1]]]]]]},
    {"deep": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]},
]


@pytest.mark.parametrize("attrs", ODD_ATTRS, ids=range(len(ODD_ATTRS)))
def test_odd_attributes(attrs: dict[str, Any]) -> None:
    spans = [record(attrs), record(attrs, error="boom", parent=7, request_id="")]
    assert_same_honeycomb(spans)
    assert_same_otlp(spans)


@pytest.mark.parametrize(
    ("attrs", "error", "pairing"),
    [
        ({"type": "response", "error": "denied"}, "denied", PAIRED),
        ({"type": "request", "error": "denied", "vault_observe.pairing": "unanswered"}, "denied", UNANSWERED),
        ({"error": "denied", "type": "response"}, "denied", PAIRED),
        ({"type": "response"}, "denied", PAIRED),
        ({"x": [{"error": "denied"}]}, "denied", ORPHAN),
        ({"x": {"error": "denied"}}, "denied", PAIRED),
        ({"error": 'line\n\t"quoted" ünï\x01'}, 'line\n\t"quoted" ünï\x01', PAIRED),
        ({"msg": '"error":"denied"'}, "denied", PAIRED),  # the needle inside a value
        ({'k"error': 1}, "denied", PAIRED),  # ... and at the end of a key
        ({}, "denied", PAIRED),
        ({}, "", PAIRED),
    ],
)
def test_error_member(attrs: dict[str, Any], error: str, pairing: int) -> None:
    span = record(attrs, error=error, pairing=pairing)
    assert_same_honeycomb([span])
    assert_same_otlp([span])


@pytest.mark.parametrize(
    "attrs",
    [
        {"type": "response", "error": "other text", "z": 1},  # another text: the reference re-encodes
        {"error": 5},
        {"error": ["denied"]},
    ],
)
def test_error_attribute_with_another_value_is_left_to_python(attrs: dict[str, Any]) -> None:
    spans = [record({"a": 1}), record(attrs, error="denied")]
    assert honeycomb_compiled(spans) is None
    encoder = BatchEncoder(SERVICE)
    assert encoder.implementation == "c"
    assert encoder.encode(spans).body == honeycomb_reference(spans)
    assert json.loads(encoder.encode(spans).body)[1]["data"]["error"] == "denied"
    assert_same_otlp(spans)  # OTLP has no such rule


def test_trace_fields() -> None:
    spans = [
        record({"a": 1}, request_id="", parent=0xFEDCBA9876543210),  # traceparent: the hex trace id
        record({"a": 1}, request_id="", parent=0),
        record({"a": 1}, request_id='custom id ☃ "q"', parent=0),
        record({"a": 1}, request_id="req", parent=1),
        record({"a": 1}, span_id=1, trace_id=b"\x00" * 16),
        record({"a": 1}, span_id=2**64 - 1, parent=2**64 - 1),
        record({"a": 1}, trace_id=b"\xab\xcd"),  # not 16 bytes: hex as it is
        record({"a": 1}, name=""),
        record({"a": 1}, name='na"me\n\x00 ☃'),
    ]
    assert_same_honeycomb(spans)
    assert_same_otlp(spans)


@pytest.mark.parametrize("rate", [1, 2, 7, 1000, 2**31, 2**62])
def test_sample_rates(rate: int) -> None:
    assert_same_honeycomb([record({"a": 1}, sample_rate=rate)])


def test_times_and_durations() -> None:
    rng = random.Random(7)
    spans = []
    for start in [0, 1, 999_999_999, 1_000_000_000, 951_782_400_000_000_000, 4_102_444_799_999_999_999]:
        spans.append(record({}, start=start, end=start))
    for _ in range(3000):
        start = rng.randrange(0, 2**62)
        delta = rng.choice(
            [
                rng.randrange(0, 2000),
                rng.randrange(0, 10**6),
                rng.randrange(0, 10**12),
                rng.randrange(0, 10**15),
                rng.randrange(10**15 - 1000, 10**15 + 1000),
                rng.randrange(0, 2**62 - start) if start < 2**62 else 0,
                500 + 1000 * rng.randrange(0, 10**6),  # exact halves: to even
                1500,
                2500,
            ]
        )
        spans.append(record({"a": 1}, start=start, end=start + delta))
    spans.append(record({}, start=10**18, end=10**18 - 1_234_567))  # negative durations
    spans.append(record({}, start=10**18, end=10**18 - 1500))
    spans.append(record({}, start=10**18, end=10**18 - 400))
    spans.append(record({}, start=-1, end=0))  # before 1970
    spans.append(record({}, start=-(10**18), end=0))
    assert_same_honeycomb(spans)
    assert_same_otlp(spans)


def test_floats_in_orjson_form() -> None:
    rng = random.Random(11)
    values: list[float] = []
    for _ in range(20000):
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
        values.append(rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30))
    values += [1e-05, 9.99999e-06, 1e-04, 1e16, 1e15, 9007199254740993.0, 1e-300, 9.9e299]
    # exponents beyond 300 are left to the reference (near the ends of the double range)
    inside = [v for v in values if v == 0 or 1e-300 <= abs(v) < 1e301]
    outside = [v for v in values if v not in inside]
    spans = [
        record({f"f{i}": v for i, v in enumerate(inside[k : k + 200])}) for k in range(0, len(inside), 200)
    ]
    assert_same_otlp(spans)
    assert_same_honeycomb(spans)
    odd = [record({"f": v}) for v in outside[:500]] + [record({"f": 2.2250738585072014e-308})]
    assert all(otlp_compiled([span]) is None for span in odd)
    assert otlp.BodyEncoder(SERVICE).encode(odd).body == otlp_reference(odd)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"big":18446744073709551616}',  # beyond uint64: a float to orjson
        b'{"neg":-9223372036854775809}',
        b'{"huge":1e+308}',
        b'{"tiny":5e-324}',
        b'{"esc":"\\u00e9"}',  # escapes orjson would not write
        b'{"esc":"\\/"}',
        b'{"esc":"\\u0008"}',
        b'{"a": 1}',  # whitespace
        b'{"a":1,}',
        b'{"a":NaN}',
        b'{"bad":"\xff"}',  # not UTF-8
        b'{"bad":"\xed\xa0\x80"}',  # an encoded surrogate
        b"[1]",
    ],
)
def test_odd_json_is_left_to_python(raw: bytes) -> None:
    span = record(raw)
    assert otlp_compiled([span]) is None
    encoder = otlp.BodyEncoder(SERVICE)
    assert encoder.implementation == "c"
    try:
        expected = otlp_reference([span])
    except (orjson.JSONDecodeError, TypeError, AttributeError):  # the reference refuses it too
        with pytest.raises((orjson.JSONDecodeError, TypeError, AttributeError)):
            encoder.encode([span])
    else:
        assert encoder.encode([span]).body == expected


def test_honeycomb_splices_odd_json_as_it_is() -> None:
    """Without an error, EventEncoder splices the attributes without reading them."""
    for raw in (b'{"a": 1}', b'{"big":18446744073709551616}', b'{"esc":"\\u00e9"}', b"{}", b"{", b""):
        assert_same_honeycomb([record(raw)])


def test_lone_surrogates_are_left_to_python() -> None:
    for span in (record({"a": 1}, name="x\ud800"), record({"a": 1}, error="\udfff")):
        assert honeycomb_compiled([span]) is None
        assert otlp_compiled([span]) is None
        assert BatchEncoder(SERVICE).encode([span]).body == honeycomb_reference([span])


def test_out_of_range_numbers_are_left_to_python() -> None:
    for span in (
        record({"a": 1}, span_id=2**64),
        record({"a": 1}, parent=-1),
        record({"a": 1}, start=2**63, end=2**63 + 5),
        record({"a": 1}, sample_rate=2**64),
    ):
        assert honeycomb_compiled([span]) is None
        assert BatchEncoder(SERVICE).encode([span]).body == honeycomb_reference([span])


# ---------------------------------------------------------------- the split


def test_runs_match_pack(sample_log: Path) -> None:
    spans = spans_of(sample_log)
    batch = BatchEncoder(SERVICE).encode(spans)
    events = [EventEncoder(SERVICE).encode(span) for span in spans]
    for max_bytes, max_items in [(5_000_000, 1000), (20_000, 1000), (5_000_000, 7), (3000, 3)]:
        runs = list(batch.runs(max_bytes, max_items))
        assert runs == list(pack(events, max_bytes, max_items))
        for run in runs:
            assert batch.run_body(run) == b"[" + b",".join(events[i] for i in run) + b"]"
    body = otlp.BodyEncoder(SERVICE).encode(spans)
    encoded = [orjson.dumps(otlp.encode_span(span)) for span in spans]
    overhead = body.head_len + body.tail_len
    for max_bytes, max_items in [(4_000_000, 512), (50_000, 512), (4_000_000, 5)]:
        runs = list(body.runs(max_bytes, max_items))
        assert runs == list(pack(encoded, max_bytes, max_items, overhead))
        for run in runs:
            assert json.loads(body.run_body(run)) == json.loads(otlp_reference([spans[i] for i in run]))


def test_python_encoders_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compat, "USE_EXTENSIONS", False)
    assert BatchEncoder(SERVICE).implementation == "py"
    assert otlp.BodyEncoder(SERVICE).implementation == "py"
    spans = [record({"a": [1, {"b": None}]}, error="x")]
    assert BatchEncoder(SERVICE).encode(spans).body == honeycomb_reference(spans)
    assert otlp.BodyEncoder(SERVICE).encode(spans).body == otlp_reference(spans)
