"""Every rule of the core, run against both cores: "py" (reference) and "c" (compiled).

The fixtures ``impl``, ``make_core`` and ``core`` are tests/conftest.py's: the "c"
cores skip when the extension is not built, and fail instead when
VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 (CI builds it). Trace context, key filters and
sampling are covered in test_core_features.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.implementations import compiled_module
from vault_observe import _core_py
from vault_observe.model import EVICTED, ORPHAN, PAIRED, UNANSWERED, SpanRecord

SEC = 1_000_000_000

ID1 = "2f0c5a4e-7b1d-4c3e-9a8f-1d2e3f405162"
ID2 = "6b1e0f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
ID3 = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
T0 = "2026-11-27T08:00:00Z"
T0_NS = calendar.timegm((2026, 11, 27, 8, 0, 0)) * SEC
COUNTERS = _core_py.COUNTER_NAMES

Make = Callable[..., Any]


def t(seconds: float) -> str:
    """T0 plus some seconds, as Vault writes it (UTC, nanoseconds)."""
    whole = int(seconds)
    nanos = round((seconds - whole) * SEC)
    base = calendar.timegm((2026, 11, 27, 8, 0, 0)) + whole
    y, mo, d, h, mi, s = __import__("time").gmtime(base)[:6]
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{nanos:09d}Z"


def ev(
    kind: str = "request",
    rid: Any = ID1,
    time: Any = T0,
    *,
    path: Any = "secret/data/app",
    operation: Any = "read",
    mount_point: Any = "secret/",
    error: Any = None,
    **extra: Any,
) -> bytes:
    """One audit line; pass ``...`` to leave a request field out."""
    request: dict[str, Any] = {}
    for key, value in (("id", rid), ("operation", operation), ("mount_point", mount_point), ("path", path)):
        if value is not ...:
            request[key] = value
    entry: dict[str, Any] = {
        "time": time,
        "type": kind,
        "auth": {"token_type": "service"},
        "request": request,
    }
    entry.update(extra)
    if error is not None:
        entry["error"] = error
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def spans_of(core: Any, data: bytes, now_ns: int | None = None, *, flush: bool = True) -> list[SpanRecord]:
    core.feed(data, now_ns)
    if flush:
        core.flush()
    spans: list[SpanRecord] = core.drain()
    return spans


def only(spans: list[SpanRecord]) -> SpanRecord:
    assert len(spans) == 1, spans
    return spans[0]


def attrs_of(core: Any, line: bytes) -> bytes:
    """The attribute bytes of a response line that pairs with nothing (marker removed)."""
    span = only(spans_of(core, line))
    assert span.pairing == ORPHAN
    marker = b',"vault_observe.pairing":"orphan"}'
    if span.attrs_json == b'{"vault_observe.pairing":"orphan"}':
        return b"{}"
    assert span.attrs_json.endswith(marker), span.attrs_json
    return span.attrs_json[: -len(marker)] + b"}"


def raw(body: str, kind: str = "response") -> bytes:
    """A response line with extra raw JSON members after the envelope."""
    head = f'{{"time":"{T0}","type":"{kind}","request":{{"id":"{ID1}"}}'
    return (head + ("," + body if body else "") + "}\n").encode()


HEAD = f'"time":"{T0}","type":"response","request.id":"{ID1}"'.encode()


def flat(core: Any, body: str) -> bytes:
    """attrs_json of raw(body), without the envelope's own three keys."""
    out = attrs_of(core, raw(body))
    prefix = b'{"time":"' + T0.encode() + b'","type":"response","request.id":"' + ID1.encode() + b'"'
    assert out.startswith(prefix), out
    rest = out[len(prefix) :]
    return b"{" + rest[1:] if rest.startswith(b",") else b"{" + rest


# ---------------------------------------------------------------- basics


def test_implementation_name(impl: str, core: Any) -> None:
    assert core.implementation == impl


def test_counters_start_at_zero_in_order(core: Any) -> None:
    assert list(core.counters()) == list(COUNTERS)
    assert set(core.counters().values()) == {0}
    assert core.pending == 0
    assert core.watermark_ns == 0


def test_constructor_is_keyword_only_and_checks_max_pending(make_core: Make) -> None:
    with pytest.raises(TypeError):
        make_core(10.0)
    with pytest.raises(ValueError):
        make_core(max_pending=0)
    core = make_core(ttl_s=2.5, max_pending=7, max_line_bytes=99, prefix=b"x", flatten_arrays=True)
    assert core.ttl_ns == 2_500_000_000
    assert core.max_pending == 7
    assert core.max_line_bytes == 99
    assert core.prefix == b"x"
    assert core.flatten_arrays is True
    with pytest.raises(ValueError):
        make_core(sample_rate=0)
    with pytest.raises(TypeError):
        make_core(includes=["x"])
    core = make_core(sample_rate=3, include=["a*"], exclude=("b",), trace_context=False)
    assert core.sample_rate == 3
    assert not core.trace_context
    assert (core.key_filter.include, core.key_filter.exclude) == (("a*",), ("b",))
    assert make_core().key_filter is None


def test_bad_samples_name_the_counter_and_keep_the_head(make_core: Make) -> None:
    core = make_core(max_line_bytes=400, prefix=b"@cee: ")
    long = b"@cee: " + ev("response", pad="x" * 400)
    lines = [
        long,
        b"@cee: {not json",
        b'["an array"]',
        b'{"time":"yesterday","type":"request"}',
        b"@cee: " + ev("kmip-request"),
        ev("request", ...),
        b'{"time":"' + T0.encode() + b'","type":"request","request":{"id":7}}',
    ]
    core.feed(b"\n".join(line.rstrip(b"\n") for line in lines) + b"\n")
    samples = core.take_bad_samples()
    assert (
        {name: head for name, (_reason, head) in samples.items()}
        == {
            "oversize": long[:48],
            "malformed": b"{not json",
            "invalid": lines[6][:48],  # the latest one
            "unknown_type": ev("kmip-request")[:48],
            "no_id": ev("request", ...)[:48],
        }
    )
    assert all(isinstance(reason, str) and reason for reason, _head in samples.values())
    assert core.take_bad_samples() == {}
    counters = core.counters()
    assert (counters["oversize"], counters["malformed"], counters["invalid"]) == (1, 1, 3)


def test_feed_returns_ready_count_and_drain_empties(core: Any) -> None:
    assert core.feed(ev("request") + ev("response", time=t(1))) == 1
    assert core.feed(ev("response", ID2)) == 2
    assert len(core.drain()) == 2
    assert core.drain() == []
    assert core.feed(b"") == 0


def test_lines_split_on_newline_blank_lines_skipped(core: Any) -> None:
    data = b"\n\n" + ev("response").rstrip(b"\n") + b"\r\n\n" + ev("response", ID2).rstrip(b"\n")
    spans = spans_of(core, data)
    assert [s.request_id for s in spans] == [ID1, ID2]
    assert core.counters()["lines"] == 2


def test_feed_accepts_bytearray_and_memoryview(core: Any, impl: str) -> None:
    core.feed(bytearray(ev("response")))
    assert core.counters()["responses"] == 1
    if impl == "c":  # the reference splits with bytes.split, which memoryview lacks
        core.feed(memoryview(ev("response")))
        assert core.counters()["responses"] == 2


def test_watermark_is_latest_entry_time(core: Any) -> None:
    core.feed(ev("request", time=t(5)) + ev("response", ID2, time=t(3)) + ev("kmip-request", ID3, time=t(9)))
    assert core.watermark_ns == T0_NS + 5 * SEC


# ---------------------------------------------------------------- flattening


def test_flatten_nested_objects_in_document_order(core: Any) -> None:
    body = '"b":{"y":1,"x":{"deep":"v"},"w":true},"a":2'
    assert flat(core, body) == b'{"b.y":1,"b.x.deep":"v","b.w":true,"a":2}'


def test_flatten_envelope_keys_come_first_and_are_kept(core: Any) -> None:
    out = attrs_of(core, raw('"z":1'))
    assert out == b"{" + HEAD + b',"z":1}'


def test_arrays_stay_json_arrays(core: Any) -> None:
    body = '"list":[1,"two",null,{"k":null,"e":{}},[],[3.5,false],{}]'
    assert flat(core, body) == b'{"list":[1,"two",null,{"k":null,"e":{}},[],[3.5,false],{}]}'


def test_empty_containers_and_nulls_give_no_key(core: Any) -> None:
    assert flat(core, '"o":{},"l":[],"n":null,"deep":{"e":{},"n":null},"k":0') == b'{"k":0}'


def test_flatten_arrays_option(make_core: Make) -> None:
    core = make_core(flatten_arrays=True)
    body = '"l":["a",null,{},[],{"k":1},[true,[2]]],"e":[]'
    assert flat(core, body) == b'{"l.0":"a","l.4.k":1,"l.5.0":true,"l.5.1.0":2}'


def test_odd_keys(core: Any) -> None:
    body = r'"":1,"a.b":2,"q\"k":3,"b\\s":4,"名前":5,"ctl\u0001\n":6,"sl\/":7,"o":{"":8,".":9}'
    expected = '{"":1,"a.b":2,"q\\"k":3,"b\\\\s":4,"名前":5,"ctl\\u0001\\n":6,"sl/":7,"o.":8,"o..":9}'
    assert flat(core, body) == expected.encode()


def test_string_escaping_is_json_dumps_ensure_ascii_false(core: Any) -> None:
    body = r'"s":"q\" b\\ \/ \u003cangle\u003e\u0026 \b\f\n\r\t \u0000\u001f\u007f é 🔑 \ud83d\udd11"'
    out = flat(core, body)
    value = 'q" b\\ / <angle>& \b\f\n\r\t \x00\x1f\x7f é 🔑 🔑'
    assert out == b'{"s":' + json.dumps(value, ensure_ascii=False).encode() + b"}"
    assert b"\\u001f" in out and b"\\u0000" in out and b"\x7f" in out


def test_numbers(core: Any) -> None:
    body = (
        '"i":-12,"z":-0,"u":18446744073709551615,"m":-9223372036854775808,'
        '"f":0.1,"g":1E5,"h":1e16,"j":-0.0,"k":5e-324,"l":1.7976931348623157e308,"n":0.1e1,'
        '"big":123456789012345678901234567890,"neg":-9223372036854775809,"t":true,"fa":false'
    )
    expected = (
        '{"i":-12,"z":0,"u":18446744073709551615,"m":-9223372036854775808,'
        '"f":0.1,"g":100000.0,"h":1e+16,"j":-0.0,"k":5e-324,"l":1.7976931348623157e+308,"n":1.0,'
        '"big":1.2345678901234568e+29,"neg":-9.223372036854776e+18,"t":true,"fa":false}'
    )
    assert flat(core, body) == expected.encode()


def test_repeated_keys_keep_last_value_at_first_position(core: Any) -> None:
    # orjson builds a dict: a repeated key keeps its first position and last value
    assert flat(core, '"a":1,"b":2,"a":3') == b'{"a":3,"b":2}'
    assert flat(core, '"a":1,"a":null,"b":2') == b'{"b":2}'
    assert flat(core, '"o":{"x":1,"y":2,"x":{"z":3}}') == b'{"o.x.z":3,"o.y":2}'
    assert flat(core, '"l":[{"k":1,"k":2}]') == b'{"l":[{"k":2}]}'


def test_dotted_key_and_nested_path_give_one_name(core: Any) -> None:
    # the second value of a flattened name wins, at the first one's position
    assert flat(core, '"a.b":1,"c":0,"a":{"b":2}') == b'{"a.b":2,"c":0}'
    assert flat(core, '"a":{"b":1},"a.b":2') == b'{"a.b":2}'
    # no clash: a container and a leaf that only share a prefix
    assert flat(core, '"x":{"y":1},"x.y.z":5') == b'{"x.y":1,"x.y.z":5}'


def test_repeated_envelope_key_uses_last_value(core: Any) -> None:
    line = f'{{"time":"{T0}","type":7,"type":"response","request":{{"id":"x","id":"{ID1}"}}}}\n'.encode()
    span = only(spans_of(core, line))
    assert span.request_id == ID1
    assert core.counters()["responses"] == 1


def test_many_keys_in_one_object(core: Any) -> None:
    members = ",".join(f'"k{i}":{i}' for i in range(500))
    out = flat(core, '"d":{' + members + "}")
    assert out == ("{" + ",".join(f'"d.k{i}":{i}' for i in range(500)) + "}").encode()
    out = flat(core, '"d":{' + members + ',"k7":"again"}')
    assert out.count(b'"d.k7":"again"') == 1 and b'"d.k7":7' not in out


def test_realistic_line_flattens_like_the_reference(core: Any, sample_log: Any) -> None:
    with open(sample_log, "rb") as f:
        lines = f.read().splitlines()
    response = next(line for line in lines if b'"type":"response"' in line and b'"error"' in line)
    expected = _core_py.dump_attrs(_core_py.flatten(json.loads(response)))
    span = only(spans_of(core, response + b"\n"))
    assert span.attrs_json == _core_py.with_pairing(expected, ORPHAN)


# ---------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T08:00:00Z", T0_NS),
        ("2026-11-27T08:00:00.1Z", T0_NS + 100_000_000),
        ("2026-11-27T08:00:00.12Z", T0_NS + 120_000_000),
        ("2026-11-27T08:00:00.123Z", T0_NS + 123_000_000),
        ("2026-11-27T08:00:00.1234Z", T0_NS + 123_400_000),
        ("2026-11-27T08:00:00.12345Z", T0_NS + 123_450_000),
        ("2026-11-27T08:00:00.123456Z", T0_NS + 123_456_000),
        ("2026-11-27T08:00:00.1234567Z", T0_NS + 123_456_700),
        ("2026-11-27T08:00:00.12345678Z", T0_NS + 123_456_780),
        ("2026-11-27T08:00:00.123456789Z", T0_NS + 123_456_789),
        ("2026-11-27T08:00:00.000000001Z", T0_NS + 1),
        ("2026-11-27t08:00:00z", T0_NS),
        ("2026-11-27T09:30:00+01:30", T0_NS),
        ("2026-11-27T03:00:00.5-05:00", T0_NS + 500_000_000),
        ("2026-11-27T08:00:00-00:00", T0_NS),
        ("2026-11-27T08:00:60Z", T0_NS + 60 * SEC),  # leap second, as the reference
        ("2026-02-31T00:00:00Z", calendar.timegm((2026, 3, 3, 0, 0, 0)) * SEC),  # day not checked per month
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2000-02-29T00:00:00Z", 951782400 * SEC),
        ("0000-01-01T00:00:00Z", -62167219200 * SEC),  # beyond 64-bit nanoseconds
        ("0001-01-01T00:00:00Z", -62135596800 * SEC),
        ("9999-12-31T23:59:59.999999999+23:59", 253402300799 * SEC + 999_999_999 - 86340 * SEC),
    ],
)
def test_rfc3339_times(core: Any, text: str, expected: int) -> None:
    span = only(spans_of(core, ev("response", time=text)))
    assert span.start_ns == span.end_ns == expected
    assert _core_py.parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T08:00:00",
        "2026-11-27T08:00:00.Z",
        "2026-11-27T08:00:00.1234567891Z",
        "2026-11-27 08:00:00Z",
        "2026-13-27T08:00:00Z",
        "2026-00-27T08:00:00Z",
        "2026-11-32T08:00:00Z",
        "2026-11-00T08:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T08:60:00Z",
        "2026-11-27T08:00:61Z",
        "2026-11-27T08:00:00+24:00",
        "2026-11-27T08:00:00+01:60",
        "2026-11-27T08:00:00+0100",
        "2026-11-27T08:00:00ZZ",
        "2026-11-27T08:00:00Z ",
        "2026-11-27T08:00:0aZ",
        "+026-11-27T08:00:00Z",
        "2026-1-27T08:00:00Z",
        "２０２６-11-27T08:00:00Z",
        "",
    ],
)
def test_invalid_times(core: Any, text: str) -> None:
    assert spans_of(core, ev("response", time=text)) == []
    assert core.counters()["invalid"] == 1
    assert _core_py.parse_rfc3339_ns(text) is None


# ---------------------------------------------------------------- envelope


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'"request"',
        b"12",
        b"null",
        b'{"type":"request"}',
        b'{"time":"' + T0.encode() + b'"}',
        b'{"time":"' + T0.encode() + b'","type":1,"request":{"id":"x"}}',
        b'{"time":"' + T0.encode() + b'","type":null}',
        b'{"time":5,"type":"request","request":{"id":"x"}}',
        b'{"time":"' + T0.encode() + b'","type":"request","request":[]}',
        b'{"time":"' + T0.encode() + b'","type":"request","request":"id"}',
        b'{"time":"' + T0.encode() + b'","type":"request","request":{"id":7}}',
        b'{"time":"' + T0.encode() + b'","type":"response","request":{"id":["x"]}}',
        b'{"time":"' + T0.encode() + b'","type":"response","request":{"id":"x"},"error":{}}',
        b'{"time":"' + T0.encode() + b'","type":"response","request":{"id":"x"},"error":false}',
        b'{"time":"2026","type":"response","request":{"id":"x"}}',
        b'{"time":"' + T0.encode() + b'","type":"kmip-request","request":5}',  # invalid beats unknown
    ],
)
def test_invalid_envelopes(core: Any, line: bytes) -> None:
    assert spans_of(core, line) == []
    counters = core.counters()
    assert counters["invalid"] == 1
    assert counters["lines"] == 1
    assert counters["requests"] == counters["responses"] == counters["unknown_type"] == 0


def test_null_request_error_and_id_are_absent(core: Any) -> None:
    line = b'{"time":"' + T0.encode() + b'","type":"response","request":null,"error":null}'
    span = only(spans_of(core, line))
    assert span.pairing == ORPHAN and span.request_id == "" and span.error == "" and span.name == "response"
    line = b'{"time":"' + T0.encode() + b'","type":"response","request":{"id":null}}'
    assert only(spans_of(core, line)).request_id == ""


def test_unknown_types_are_counted_and_dropped(core: Any) -> None:
    assert spans_of(core, ev("kmip-request") + ev("Request") + ev("")) == []
    assert core.counters()["unknown_type"] == 3
    assert core.pending == 0
    assert core.watermark_ns == 0


@pytest.mark.parametrize(
    "line",
    [
        b'{"time":"2026-11-27T08:00:00Z","type":"request"',
        b'{"time":"2026-11-27T08:00:00Z","type":"re',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":"\xff"}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":"\xed\xa0\x80"}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":"a\x00b"}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request"}\x00',
        b'\xef\xbb\xbf{"time":"2026-11-27T08:00:00Z","type":"request"}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":"\\ud800"}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":1e400}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request","x":NaN}',
        b'{"time":"2026-11-27T08:00:00Z","type":"request",}',
        b'{"a":1} {"b":2}',
        b"   ",
        b"\x00",
        b"\xff\xfe",
    ],
)
def test_malformed_lines(core: Any, line: bytes) -> None:
    assert spans_of(core, line + b"\n" + ev("response")) != []
    counters = core.counters()
    assert counters["malformed"] == 1
    assert counters["lines"] == 2
    assert counters["responses"] == 1


def test_nesting_deeper_than_parsers_allow_is_malformed(core: Any) -> None:
    deep = b'{"time":"' + T0.encode() + b'","type":"response","d":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    deep_obj = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    assert spans_of(core, deep + b"\n" + deep_obj + b"\n") == []
    assert core.counters()["malformed"] == 2


def test_nesting_just_inside_the_limit(core: Any) -> None:
    # 1024 levels of objects: both orjson and the core accept it
    line = (
        b'{"time":"' + T0.encode() + b'","type":"response","x":' + b'{"a":' * 1022 + b"1" + b"}" * 1022 + b"}"
    )
    span = only(spans_of(core, line))
    assert span.attrs_json.startswith(
        b"{" + HEAD.replace(f',"request.id":"{ID1}"'.encode(), b"") + b',"x.a.a.a'
    )


def test_deep_arrays_are_encoded(core: Any) -> None:
    # json's recursive C encoder raises RecursionError near depth 1000 (below the
    # parsers' 1024): both cores then encode with an explicit stack.
    depth = 1000
    line = raw('"d":' + "[" * depth + "]" * depth)
    span = only(spans_of(core, line))
    assert span.attrs_json.endswith(
        b',"d":' + b"[" * depth + b"]" * depth + b',"vault_observe.pairing":"orphan"}'
    )


def test_oversize_lines_are_counted_before_prefix_stripping(make_core: Make) -> None:
    core = make_core(max_line_bytes=300, prefix=b"@cee: ")
    short = ev("response")
    assert len(short) < 290
    long = ev("response", ID2, pad="x" * 300)
    exact = short.rstrip(b"\n") + b" " * (300 - len(short) + 1)
    assert len(exact) == 300
    spans = spans_of(core, long + b"@cee: " + short + exact + b"\n" + b"\r" * 301 + b"\n")
    assert [s.request_id for s in spans] == [ID1, ID1]
    assert core.counters()["oversize"] == 2
    assert core.counters()["lines"] == 4


def test_ten_megabyte_line(make_core: Make) -> None:
    big = ev("response", pad="x" * (10 << 20))
    core = make_core()
    span = only(spans_of(core, big + ev("response", ID2)[:0]))
    assert len(span.attrs_json) > 10 << 20
    core = make_core(max_line_bytes=1 << 20)
    assert spans_of(core, big) == []
    assert core.counters()["oversize"] == 1


def test_prefix_is_stripped_when_present(make_core: Make) -> None:
    core = make_core(prefix=b"@cee: ")
    spans = spans_of(
        core, b"@cee: " + ev("response") + ev("response", ID2) + b"@cee: \n@cee:" + ev("response", ID3)
    )
    assert [s.request_id for s in spans] == [ID1, ID2]
    counters = core.counters()
    assert counters["malformed"] == 2  # the bare prefix and the one without its space
    assert counters["lines"] == 4


def test_response_without_id_hashes_the_line_after_the_prefix(make_core: Make) -> None:
    core = make_core(prefix=b"P")
    line = ev("response", ...)
    span = only(spans_of(core, b"P" + line))
    assert span.pairing == ORPHAN
    assert span.request_id == ""
    assert span.trace_id == _core_py.trace_id_for(line.rstrip(b"\n"))
    assert span.span_id == _core_py.span_id_for(span.trace_id)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("request_fields", "parts"),
    [
        ({"operation": "read", "mount_point": "secret/", "path": "secret/data/x"}, ("read secret/", "read", "secret/")),
        ({"operation": "read", "mount_point": "", "path": "secret/data/x"}, ("read secret/data/x", "read", "")),
        ({"operation": "read", "mount_point": 5, "path": "p"}, ("read p", "read", "")),
        ({"operation": "", "mount_point": "m/"}, ("m/", "", "m/")),
        ({"operation": 1, "path": "p"}, ("p", "", "")),
        ({"operation": "list"}, ("list", "list", "")),
        ({"path": ["x"]}, ("response", "", "")),
        ({}, ("response", "", "")),
        ({"operation": "update", "mount_point": "键/", "path": "键/x"}, ("update 键/", "update", "键/")),
        ({"operation": "a b", "mount_point": "c d", "path": "x"}, ("a b c d", "a b", "c d")),
        ({"operation": 'we"ird\\', "mount_point": "\u00e9/"}, ('we"ird\\ \u00e9/', 'we"ird\\', "\u00e9/")),
        # parts longer than a packed span holds: the span is kept as its record
        ({"operation": "o" * 70_000, "mount_point": "m/"}, ("o" * 70_000 + " m/", "o" * 70_000, "m/")),
        ({"operation": "o", "mount_point": "m" * 70_000}, ("o " + "m" * 70_000, "o", "m" * 70_000)),
    ],
)
def test_span_names(core: Any, request_fields: dict[str, Any], parts: tuple[str, str, str]) -> None:
    """The name, and the operation and mount it was made of, as span fields."""
    entry = {"time": T0, "type": "response", "request": {"id": ID1, **request_fields}}
    span = only(spans_of(core, json.dumps(entry).encode()))
    assert (span.name, span.operation, span.mount) == parts


def test_each_pairing_keeps_the_operation_and_mount_of_its_entry(make_core: Make) -> None:
    """From the response when there is one, else from the request (kept while pending,
    and past the name table's bound); the attribute filters do not change them."""
    core = make_core(max_pending=1, ttl_s=1, exclude=["request.*"])
    data = (
        ev("request", ID1, operation="create", mount_point="kv/")
        + ev("response", ID1, t(1), operation="update", mount_point="db/")  # paired
        + ev("response", ID2, t(2), operation="read", mount_point=...)  # orphan: no mount
        + ev("request", ID2, t(3), operation="list", mount_point="a b/")  # evicted by the next
        + ev("request", ID3, t(4), operation=..., mount_point="sys/")  # unanswered
    )
    spans = spans_of(core, data)
    assert [(s.pairing, s.name, s.operation, s.mount) for s in spans] == [
        (PAIRED, "update db/", "update", "db/"),
        (ORPHAN, "read secret/data/app", "read", ""),
        (EVICTED, "list a b/", "list", "a b/"),
        (UNANSWERED, "sys/", "", "sys/"),
    ]


def test_paired_span_takes_the_response_name(core: Any) -> None:
    span = only(
        spans_of(core, ev("request", operation="create") + ev("response", operation="update", time=t(1)))
    )
    assert span.name == "update secret/"


def test_names_past_the_interning_bound(make_core: Make, impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if impl == "c":
        monkeypatch.setattr(compiled_module("_fast"), "NAME_LIMIT", 3)
    core = make_core(ttl_s=1)
    data = b"".join(ev("request", f"id-{i}", path=f"p{i}", mount_point=...) for i in range(8))
    data += b"".join(ev("response", f"id-{i}", path=f"q{i}", mount_point=...) for i in range(0, 8, 2))
    spans = spans_of(core, data)
    assert [s.name for s in spans] == [f"read q{i}" for i in range(0, 8, 2)] + [
        f"read p{i}" for i in range(1, 8, 2)
    ]
    assert {(s.operation, s.mount) for s in spans} == {("read", "")}
    # The same text as "<operation> <mount>" and as "<operation> <path>": each keeps its parts.
    core = make_core(ttl_s=1)
    data = b"".join(ev("request", f"id-{i}", path="x/", mount_point=... if i % 2 else "x/") for i in range(8))
    spans = spans_of(core, data)
    assert [(s.name, s.mount) for s in spans] == [("read x/", "" if i % 2 else "x/") for i in range(8)]


# ---------------------------------------------------------------- correlation


def test_request_then_response_is_paired(core: Any) -> None:
    spans = spans_of(core, ev("request") + ev("response", time=t(1.5), error="denied", operation="update"))
    span = only(spans)
    assert span.pairing == PAIRED
    assert span.trace_id == bytes.fromhex(ID1.replace("-", ""))
    assert span.span_id == _core_py.span_id_for(span.trace_id) != 0
    assert span.parent_span_id == 0
    assert (span.start_ns, span.end_ns) == (T0_NS, T0_NS + 1_500_000_000)
    assert span.error == "denied"
    assert span.request_id == ID1
    attrs = span.attributes()
    assert attrs["type"] == "response" and attrs["error"] == "denied" and "vault_observe.pairing" not in attrs
    assert core.counters()["paired"] == 1
    assert core.pending == 0


def test_response_earlier_than_its_request_has_zero_length(core: Any) -> None:
    span = only(spans_of(core, ev("request", time=t(5)) + ev("response", time=t(2))))
    assert (span.start_ns, span.end_ns) == (T0_NS + 5 * SEC, T0_NS + 5 * SEC)


def test_orphan_response(core: Any) -> None:
    span = only(spans_of(core, ev("response", ID2, time=t(3))))
    assert span.pairing == ORPHAN
    assert span.start_ns == span.end_ns == T0_NS + 3 * SEC
    assert span.trace_id == bytes.fromhex(ID2.replace("-", ""))
    assert span.attributes()["vault_observe.pairing"] == "orphan"
    assert core.counters()["orphans"] == 1


def test_ttl_expiry_with_injected_clock(make_core: Make) -> None:
    core = make_core(ttl_s=10)
    now = 1_000 * SEC
    core.feed(ev("request", ID1, time=t(0)), now_ns=now)
    core.feed(ev("request", ID2, time=t(0)), now_ns=now + 4 * SEC)
    assert core.expire(now + 10 * SEC - 1) == 0
    assert core.expire(now + 10 * SEC) == 1
    span = only(core.drain())
    assert span.pairing == UNANSWERED and span.request_id == ID1
    assert span.start_ns == span.end_ns == T0_NS
    # the request's own attributes, then the marker
    assert span.attrs_json == (
        f'{{"time":"{t(0)}","type":"request","auth.token_type":"service","request.id":"{ID1}",'
        '"request.operation":"read","request.mount_point":"secret/","request.path":"secret/data/app",'
        '"vault_observe.pairing":"unanswered"}'
    ).encode()
    assert span.name == "read secret/"
    assert core.pending == 1
    # a response after expiry is an orphan
    assert only(spans_of(core, ev("response", ID1, time=t(20)), flush=False)).pairing == ORPHAN
    core.expire(now + 14 * SEC)
    assert [s.request_id for s in core.drain()] == [ID2]
    assert core.counters()["unanswered"] == 2


def test_deadline_from_entry_time_without_clock(make_core: Make) -> None:
    core = make_core(ttl_s=2)
    core.feed(ev("request", ID1, time=t(10)) + ev("request", ID2, time=t(1)))
    core.expire(T0_NS + 3 * SEC)
    assert [s.request_id for s in core.drain()] == [ID2]
    core.expire(T0_NS + 12 * SEC)
    assert [s.request_id for s in core.drain()] == [ID1]


def test_expire_emits_only_due_requests(make_core: Make) -> None:
    # the deadline of a stale (answered or replaced) entry must not let a later one out
    core = make_core(ttl_s=10)
    core.feed(ev("request", ID1, time=t(0)) + ev("response", ID1, time=t(1)) + ev("request", ID2, time=t(5)))
    core.drain()
    assert core.expire(T0_NS + 11 * SEC) == 0
    assert core.pending == 1
    core.feed(ev("request", ID3, time=t(6)) + ev("request", ID3, time=t(7)))  # replaced: stale entry
    assert core.expire(T0_NS + 16 * SEC) == 1
    assert [s.request_id for s in core.drain()] == [ID2]


def test_expire_order_is_deadline_then_arrival(make_core: Make) -> None:
    core = make_core(ttl_s=5)
    ids = [f"r{i}" for i in range(6)]
    nows = [50, 10, 30, 10, 40, 20]
    for rid, now in zip(ids, nows, strict=True):
        core.feed(ev("request", rid), now_ns=now * SEC)
    core.feed(ev("response", "r4", time=t(1)))
    core.drain()
    core.expire(35 * SEC)
    assert [s.request_id for s in core.drain()] == ["r1", "r3", "r5", "r2"]
    core.flush()
    assert [s.request_id for s in core.drain()] == ["r0"]
    assert core.pending == 0


def test_flush_emits_everything_pending_in_order(core: Any) -> None:
    core.feed(ev("request", ID1, time=t(3)) + ev("request", ID2, time=t(1)) + ev("request", ID3, time=t(2)))
    assert core.flush() == 3
    assert [s.request_id for s in core.drain()] == [ID2, ID3, ID1]
    assert core.flush() == 0


def test_unanswered_request_with_error_keeps_its_attributes(core: Any) -> None:
    line = ev("request", time=t(1), error="wrapping token is not valid", data={"k": [1, None]})
    span = only(spans_of(core, line))
    assert span.pairing == UNANSWERED
    assert span.error == "wrapping token is not valid"
    expected = _core_py.dump_attrs(_core_py.flatten(json.loads(line)))
    assert span.attrs_json == _core_py.with_pairing(expected, UNANSWERED)


def test_eviction_of_smallest_deadline_when_full(make_core: Make) -> None:
    core = make_core(max_pending=2, ttl_s=1)
    core.feed(ev("request", ID1), now_ns=20 * SEC)
    core.feed(ev("request", ID2), now_ns=10 * SEC)
    assert core.feed(ev("request", ID3), now_ns=30 * SEC) == 1
    span = only(core.drain())
    assert span.pairing == EVICTED and span.request_id == ID2
    assert span.attributes()["vault_observe.pairing"] == "evicted"
    assert core.pending == 2
    core.feed(ev("request", ID1), now_ns=5 * SEC)  # a duplicate does not evict
    assert core.drain() == []
    assert core.counters()["evicted"] == 1
    assert core.counters()["duplicates"] == 1


def test_eviction_ties_go_to_the_earliest_arrival(make_core: Make) -> None:
    core = make_core(max_pending=3)
    for rid in ("a", "b", "c", "d", "e"):
        core.feed(ev("request", rid), now_ns=0)
    assert [s.request_id for s in core.drain()] == ["a", "b"]


def test_duplicate_request_replaces_the_pending_one(core: Any) -> None:
    core.feed(ev("request", time=t(1), operation="create") + ev("request", time=t(2), operation="update"))
    assert core.pending == 1
    span = only(spans_of(core, ev("response", time=t(3))))
    assert span.pairing == PAIRED
    assert span.start_ns == T0_NS + 2 * SEC
    assert core.counters()["duplicates"] == 1
    assert core.counters()["requests"] == 2


def test_duplicate_gets_a_fresh_deadline(make_core: Make) -> None:
    core = make_core(ttl_s=10)
    core.feed(ev("request", ID1), now_ns=0)
    core.feed(ev("request", ID2), now_ns=1 * SEC)
    core.feed(ev("request", ID1), now_ns=2 * SEC)
    core.expire(11 * SEC)
    assert [s.request_id for s in core.drain()] == [ID2]


def test_probe_is_ignored(core: Any) -> None:
    assert spans_of(core, ev("request", path="sys/audit/test", mount_point=...)) == []
    counters = core.counters()
    assert counters["probes"] == 1 and counters["requests"] == 1
    assert core.pending == 0
    # only requests are probes
    assert only(spans_of(core, ev("response", path="sys/audit/test"))).pairing == ORPHAN


def test_request_without_id(core: Any) -> None:
    assert spans_of(core, ev("request", ...) + ev("request", "") + ev("request", None)) == []
    assert core.counters()["no_id"] == 3
    assert core.pending == 0


def test_non_uuid_ids(core: Any) -> None:
    spans = spans_of(
        core,
        ev("request", "dev-gen-root", path="auth/token/create", mount_point=...)
        + ev("response", "dev-gen-root", time=t(1), path="auth/token/create", mount_point=...)
        + ev("request", "dev-revoke-init-root", time=t(2)),
    )
    paired, unanswered = spans
    assert paired.pairing == PAIRED and paired.request_id == "dev-gen-root"
    assert paired.trace_id == _core_py.trace_id_for(b"dev-gen-root")
    assert unanswered.pairing == UNANSWERED
    assert unanswered.trace_id == _core_py.trace_id_for(b"dev-revoke-init-root")
    assert unanswered.attributes()["time"] == t(2)  # non-canonical ids keep the attributes


def test_ids_pair_by_exact_text(core: Any) -> None:
    upper = ID1.upper()
    spans = spans_of(
        core, ev("request", upper) + ev("response", ID1, time=t(1)) + ev("response", upper, time=t(2))
    )
    assert [(s.request_id, s.pairing) for s in spans] == [(ID1, ORPHAN), (upper, PAIRED)]
    assert spans[0].trace_id == spans[1].trace_id == bytes.fromhex(ID1.replace("-", ""))
    spans = spans_of(
        core, ev("request", "Ab") + ev("request", "aB") + ev("response", "aB") + ev("response", "ab")
    )
    assert [(s.request_id, s.pairing) for s in spans] == [("aB", PAIRED), ("ab", ORPHAN), ("Ab", UNANSWERED)]


def test_unicode_and_escaped_ids(core: Any) -> None:
    odd = 'id "ü" \\ \n'
    spans = spans_of(core, ev("request", odd) + ev("request", "ü") + ev("response", "ü", time=t(1)))
    assert [(s.request_id, s.pairing) for s in spans] == [("ü", PAIRED), (odd, UNANSWERED)]
    assert spans[1].trace_id == _core_py.trace_id_for(odd.encode())


def test_times_beyond_64_bit_nanoseconds(make_core: Make) -> None:
    core = make_core(ttl_s=10)
    old = "0001-01-01T00:00:00Z"
    old_ns = -62135596800 * SEC
    spans = spans_of(
        core, ev("request", ID1, time=old) + ev("request", ID2, time=t(0)) + ev("response", ID1, time=old)
    )
    assert [(s.request_id, s.pairing, s.start_ns) for s in spans] == [
        (ID1, PAIRED, old_ns),
        (ID2, UNANSWERED, T0_NS),
    ]
    core.feed(ev("request", ID1, time="9999-01-01T00:00:00Z") + ev("request", ID2, time=old))
    core.feed(ev("request", ID3, time="0001-01-01T00:00:00.5Z"))
    core.expire(old_ns + 10 * SEC)
    assert [s.request_id for s in core.drain()] == [ID2]
    core.expire(old_ns + 11 * SEC)
    assert [s.request_id for s in core.drain()] == [ID3]
    core.expire(10**30)
    span = only(core.drain())
    assert span.start_ns == 253370764800 * SEC
    assert core.watermark_ns == 253370764800 * SEC


def test_huge_ttl(make_core: Make) -> None:
    core = make_core(ttl_s=1e12)
    core.feed(ev("request", ID1, time=t(1)) + ev("request", ID2, time=t(0)))
    core.expire(T0_NS + 10**21 - 1)
    assert core.drain() == []
    core.expire(T0_NS + 10**21 + SEC)
    assert [s.request_id for s in core.drain()] == [ID2, ID1]


def test_many_pending_requests(make_core: Make) -> None:
    core = make_core(max_pending=5000, ttl_s=1)
    data = b"".join(
        ev("request", f"{i:08x}-0000-4000-8000-000000000000", time=t(i % 97)) for i in range(6000)
    )
    core.feed(data)
    assert core.pending == 5000
    evicted = core.drain()
    assert len(evicted) == 1000 and {s.pairing for s in evicted} == {EVICTED}
    responses = b"".join(
        ev("response", f"{i:08x}-0000-4000-8000-000000000000", time=t(200)) for i in range(0, 6000, 2)
    )
    spans = spans_of(core, responses, flush=False)
    assert sum(s.pairing == PAIRED for s in spans) + sum(s.pairing == ORPHAN for s in spans) == 3000
    core.flush()
    rest = core.drain()
    keys = [(s.start_ns, s.request_id) for s in rest]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    assert core.pending == 0
