"""Both cores give the same spans (attribute bytes included) and counters for any input.

Generated streams carry traceparent headers (valid and not) and run with key
filters and sampling too; the heads of skipped lines (take_bad_samples) must
match as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.implementations import core_class
from vault_observe import _core_py
from vault_observe.model import SpanRecord

from .test_core import ID1, ID2, ID3, SEC, T0_NS, t

pytestmark = pytest.mark.c_extension  # the compiled core against the reference

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "openbao-sample.jsonl"
# Examples per property test; raise it for a long fuzzing run.
SCALE = float(os.environ.get("VAULT_OBSERVE_PARITY_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


ReferenceCore = _core_py.Core


@pytest.fixture(scope="module")
def fast_cls() -> Any:
    return core_class("c")


def snapshot(spans: list[SpanRecord]) -> list[tuple[Any, ...]]:
    return [(s.as_tuple(), s.attrs_json, type(s)) for s in spans]


def state(core: Any) -> tuple[Any, ...]:
    # Reasons are free text; the counters they belong to and the line heads are not.
    bad = {name: head for name, (_reason, head) in core.take_bad_samples().items()}
    return (core.counters(), core.pending, core.watermark_ns, bad)


# Blank lines count for nothing, but enough of them make a feed big enough for the
# compiled core's two-pass path (parse and flatten without the GIL, then the rest).
TWO_PASS_PAD = b"\n" * (64 << 10)


def run_both(
    fast_cls: Any, ops: list[tuple[Any, ...]], two_pass: bool = False, **options: Any
) -> tuple[Any, Any]:
    """Apply the same feed/expire/flush steps to both cores, comparing after each."""
    if two_pass:
        options = {**options, "release_gil": True}
    ref = ReferenceCore(**options)
    fast = fast_cls(**options)
    for step, op in enumerate(ops):
        results = []
        for core in (ref, fast):
            if op[0] == "feed":
                ready = core.feed(TWO_PASS_PAD + op[1] if two_pass else op[1], op[2])
            elif op[0] == "expire":
                ready = core.expire(op[1])
            else:
                ready = core.flush()
            # every other step through the sequence the daemon queues (packed spans in
            # the compiled core), the others as the list of drain()
            spans = list(core.drain_spans()) if step % 2 else core.drain()
            results.append((ready, snapshot(spans), state(core)))
        assert results[1] == results[0], op
    return ref, fast


# ---------------------------------------------------------------- JSON text generators


def enc_str(s: str, style: int) -> str:
    """A JSON string for ``s``, spelled one of several valid ways."""
    if style == 0:
        return json.dumps(s, ensure_ascii=False)
    if style == 1:
        return json.dumps(s, ensure_ascii=True)
    # Go style: <, >, & as \u escapes, / as \/
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").replace("/", "\\/")


ODD_KEYS = [
    "",
    "a",
    "b",
    "a.b",
    ".",
    "..",
    "a.",
    'q"k',
    "b\\s",
    "名前",
    "ctl\x01\n",
    "0",
    "1",
    "x.y.z",
    "type",
    "time",
]
keys = st.one_of(st.sampled_from(ODD_KEYS), st.text(max_size=6))
strings = st.one_of(
    st.sampled_from(["", "hmac-sha256:" + "ab" * 32, "<a&b>", "tab\tnl\n", "\x00\x1f\x7f", "é🔑", "/"]),
    st.text(max_size=12),
)
NUMBER_SPELLINGS = [
    "0",
    "-0",
    "-0.0",
    "1E5",
    "1e-7",
    "0.1e1",
    "1e16",
    "1e15",
    "5e-324",
    "1.7976931348623157e308",
    "2.5E+3",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "0.30000000000000004",
    "1234567890.0987654321e-5",
    "9007199254740993",
    "1e-400",
    "100000000000000000000000000000000000000000.5",
]
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(NUMBER_SPELLINGS),
    st.tuples(st.integers(0, 10**20), st.integers(0, 10**12), st.integers(-330, 310)).map(
        lambda p: f"{p[0]}.{p[1]}e{p[2]}"
    ),
)
scalars = st.one_of(
    st.tuples(strings, st.integers(0, 2)).map(lambda p: enc_str(*p)),
    numbers,
    st.sampled_from(["true", "false", "null"]),
)
SEPARATORS = [",", ", ", " ,\t", ",\r\n "[0:1] + " "]


def obj_text(members: list[tuple[str, str]], key_style: int, sep: str) -> str:
    return "{" + sep.join(f"{enc_str(k, key_style)}:{v}" for k, v in members) + "}"


def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(st.lists(children, max_size=4), st.sampled_from(SEPARATORS)).map(
            lambda p: "[" + p[1].join(p[0]) + "]"
        ),
        st.tuples(
            st.lists(st.tuples(keys, children), max_size=5), st.integers(0, 2), st.sampled_from(SEPARATORS)
        ).map(lambda p: obj_text(*p)),
    )


values = st.recursive(scalars, containers, max_leaves=14)
small_values = st.recursive(scalars, containers, max_leaves=4)

IDS = [ID1, ID2, ID3, ID1.upper(), "dev-gen-root", "x", "", "ü", 'q"\\', None]
TIMES = [
    t(0),
    t(1),
    t(1.5),
    t(2),
    t(7),
    t(12),
    "2026-11-27T08:00:03.1+00:00",
    "2026-11-27T09:00:04-01:00",
    "2026-11-27T08:00:05.123456Z",
    "0001-01-01T00:00:00Z",
    "not a time",
    "2026-11-27T08:00:00",
]


TRACE_HEX = [
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "0" * 32,
    "0" * 31 + "1",
    "f" * 32,
    "4BF92F3577B34DA6A3CE929D0E0E4736",
]
PARENT_HEX = ["00f067aa0ba902b7", "0" * 16, "f" * 16, "00F067AA0BA902B7", "0" * 15 + "1"]


@st.composite
def traceparents(draw: st.DrawFn) -> str:
    """W3C traceparent values: valid ones, near misses and junk."""
    trace = draw(st.one_of(st.sampled_from(TRACE_HEX), st.integers(0, 2**128 - 1).map(lambda v: f"{v:032x}")))
    parent = draw(
        st.one_of(st.sampled_from(PARENT_HEX), st.integers(0, 2**64 - 1).map(lambda v: f"{v:016x}"))
    )
    if draw(st.booleans()):
        version, flags, suffix = draw(
            st.sampled_from([("00", "01", ""), ("00", "00", ""), ("cc", "03", "-x")])
        )
    else:
        version = draw(st.sampled_from(["00", "01", "fe", "ff", "0g", "0A", "0"]))
        flags = draw(st.sampled_from(["01", "00", "ff", "1", "0x"]))
        suffix = draw(st.sampled_from(["", "-", "-x", "-é-", "x", "-0-1"]))
    value = f"{version}-{trace}-{parent}-{flags}{suffix}"
    if draw(st.integers(0, 5)) == 0:  # one character changed
        pos = draw(st.integers(0, len(value) - 1))
        value = value[:pos] + draw(st.sampled_from(["-", "a", "G", "0", "é", "\x00", ""])) + value[pos + 1 :]
    if draw(st.integers(0, 9)) == 0:
        value = draw(st.sampled_from(["", "hmac-sha256:" + "ab" * 32, "-" * 60, "0" * 55]))
    return value


@st.composite
def header_values(draw: st.DrawFn) -> str:
    """The JSON of request.headers: mostly Vault's {name: [value]} shape, sometimes not."""
    value = traceparents()
    tp = draw(
        st.one_of(
            value.map(lambda v: json.dumps([v])),
            value.map(json.dumps),
            st.tuples(value, value).map(lambda p: json.dumps(list(p))),
            st.sampled_from(["[]", "[1]", "null", "5", '{"a":"b"}', "[null]"]),
        )
    )
    members = [("traceparent", tp)]
    if draw(st.booleans()):
        members.append(("x-correlation-id", '["ff6f08d0-a1cf-b3eb-316e-1e98985fa9fc"]'))
    if draw(st.integers(0, 9)) == 0:  # a repeated header
        members.append(("traceparent", json.dumps([draw(value)])))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["null", "[]", '"00-x"', "{}"]))
    return obj_text(draw(st.permutations(members)), 0, ",")


@st.composite
def entry_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "response", "request", "response", "kmip-request"]))
    rid = draw(st.sampled_from([*IDS, ...]))
    request: list[tuple[str, str]] = []
    if rid is not ...:
        request.append(("id", "null" if rid is None else enc_str(rid, draw(st.integers(0, 2)))))
    for field, choices in (
        ("operation", ["read", "update", ""]),
        ("mount_point", ["secret/", "", "sys/"]),
        ("path", ["secret/data/a", "sys/audit/test", "sys/audit/test", "", "键/x"]),
    ):
        if draw(st.booleans()):
            request.append((field, enc_str(draw(st.sampled_from(choices)), 0)))
    request += draw(st.lists(st.tuples(keys, small_values), max_size=2))
    if draw(st.integers(0, 2)) == 0:
        request.append(("headers", draw(header_values())))
    if draw(st.integers(0, 9)) == 0:  # a repeated envelope key
        request.append(
            draw(
                st.sampled_from(
                    [("id", enc_str(ID1, 0)), ("id", enc_str(ID2, 0)), ("headers", draw(header_values()))]
                )
            )
        )
    request = draw(st.permutations(request))
    members: list[tuple[str, str]] = [
        ("time", enc_str(draw(st.sampled_from(TIMES)), 0)),
        ("type", enc_str(kind, 0)),
        ("auth", obj_text([("token_type", '"service"'), ("policies", '["root","default"]')], 0, ",")),
        ("request", obj_text(request, 0, ",")),
    ]
    if draw(st.booleans()):
        members.append(
            ("error", draw(st.sampled_from(['"denied"', '""', "null", '"1 error occurred:\\n\\t* x\\n\\n"'])))
        )
    members += draw(st.lists(st.tuples(keys, small_values), max_size=3))
    if draw(st.integers(0, 4)) == 0:
        members = draw(st.permutations(members))
    line = obj_text(members, draw(st.integers(0, 2)), draw(st.sampled_from(SEPARATORS))).encode()
    # now and then, damage the line
    damage = draw(st.integers(0, 11))
    if damage == 0:
        line = line[: draw(st.integers(0, len(line)))]
    elif damage == 1:
        pos = draw(st.integers(0, len(line)))
        junk = draw(
            st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b'"', b"}", b" ", b"\xef\xbb\xbf"])
        )
        line = line[:pos] + junk + line[pos:]
    elif damage == 2:
        line = b"\xef\xbb\xbf" + line
    elif damage == 3:
        line = draw(st.sampled_from([b"", b"   ", b"[1]", b'"x"', b"null", b"{}", b"\r"]))
    return line


NOWS = st.one_of(st.none(), st.integers(0, 40).map(lambda k: T0_NS + k * SEC // 2))
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.lists(entry_lines(), min_size=1, max_size=6), NOWS),
        st.tuples(st.just("expire"), st.integers(-4, 60).map(lambda k: T0_NS + k * SEC // 2)),
        st.tuples(st.just("flush")),
    ),
    min_size=1,
    max_size=8,
)
# include/exclude pattern sets: odd globs, keys that need escaping, array indexes
FILTERS = [
    {},
    {"include": ["request.*"]},
    {"exclude": ["auth.*", "*.a", "type", "request.id"]},
    {"include": ["*"], "exclude": ["*.0", "*.1.*", ""]},
    {"include": ["[a-c]*", "?", "名*", "*.0", "request.headers.*"], "exclude": ["[!a]*.b"]},
    {"exclude": ['*"*', "*\\*", "*\n*", "*\x01*", "*.*.*"]},
    {"include": ["nothing matches this"]},
]
options_strategy = st.fixed_dictionaries(
    {
        "ttl_s": st.sampled_from([0, 0.5, 3, 10]),
        "max_pending": st.sampled_from([1, 2, 3, 1000]),
        "flatten_arrays": st.booleans(),
        "prefix": st.sampled_from([b"", b"@cee: "]),
        "max_line_bytes": st.sampled_from([1 << 24, 400]),
        "sample_rate": st.sampled_from([1, 1, 2, 3, 2**64 + 1]),
        "trace_context": st.sampled_from([True, True, False]),
    }
).flatmap(lambda o: st.sampled_from(FILTERS).map(lambda f: {**o, **f}))


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=options_strategy, ops=ops_strategy, prefix_some=st.booleans(), two_pass=st.booleans())
def test_generated_streams_give_identical_spans(
    fast_cls: Any, options: dict[str, Any], ops: list[tuple[Any, ...]], prefix_some: bool, two_pass: bool
) -> None:
    steps: list[tuple[Any, ...]] = []
    for op in ops:
        if op[0] == "feed":
            lines = [(options["prefix"] if prefix_some else b"") + line for line in op[1]]
            steps.append(("feed", b"\n".join(lines) + b"\n", op[2]))
        else:
            steps.append(op)
    steps.append(("flush",))
    run_both(fast_cls, steps, two_pass=two_pass, **options)


@settings(max_examples=examples(150), deadline=None)
@given(
    value=values,
    key=keys,
    flatten_arrays=st.booleans(),
    filters=st.sampled_from(FILTERS),
    two_pass=st.booleans(),
)
def test_generated_values_flatten_identically(
    fast_cls: Any, value: str, key: str, flatten_arrays: bool, filters: dict[str, Any], two_pass: bool
) -> None:
    line = f'{{"time":"{t(0)}","type":"response",{enc_str(key, 0)}:{value}}}'.encode()
    run_both(fast_cls, [("feed", line, None)], two_pass=two_pass, flatten_arrays=flatten_arrays, **filters)


@settings(max_examples=examples(150), deadline=None)
@given(
    header=header_values(),
    rid=st.sampled_from([ID1, ID2, "dev-gen-root", ""]),
    sample_rate=st.sampled_from([1, 2, 3]),
    two_pass=st.booleans(),
)
def test_generated_traceparents(
    fast_cls: Any, header: str, rid: str, sample_rate: int, two_pass: bool
) -> None:
    request = f'"request":{{"id":{json.dumps(rid)},"headers":{header}}}'
    lines = [
        f'{{"time":"{t(0)}","type":"request",{request}}}',
        f'{{"time":"{t(1)}","type":"response",{request}}}',
        f'{{"time":"{t(2)}","type":"request",{request}}}',
    ]
    steps: list[tuple[Any, ...]] = [("feed", line.encode(), None) for line in lines]
    run_both(fast_cls, [*steps, ("flush",)], two_pass=two_pass, sample_rate=sample_rate)


@settings(max_examples=examples(60), deadline=None)
@given(
    ids=st.lists(st.sampled_from([ID1, ID2, ID3, "a", "b", "c", "dev-gen-root"]), min_size=1, max_size=20),
    sample_rate=st.integers(2, 5),
    errors=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_sampling_decisions(fast_cls: Any, ids: list[str], sample_rate: int, errors: list[bool]) -> None:
    steps: list[tuple[Any, ...]] = []
    for i, rid in enumerate(ids):
        error = ',"error":"denied"' if errors[i] else ""
        for second, kind in ((i, "request"), (i + 0.5, "response")):
            line = f'{{"time":"{t(second)}","type":"{kind}","request":{{"id":"{rid}"}}{error}}}'
            steps.append(("feed", line.encode(), None))
    run_both(fast_cls, [*steps, ("flush",)], sample_rate=sample_rate)


@settings(max_examples=examples(100), deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(IDS[:-1]), st.integers(0, 30), st.booleans()), max_size=40),
    ttl_s=st.sampled_from([1, 5]),
    max_pending=st.sampled_from([2, 5, 100]),
)
def test_random_request_response_orders(
    fast_cls: Any, pairs: list[tuple[str, int, bool]], ttl_s: int, max_pending: int
) -> None:
    steps: list[tuple[Any, ...]] = []
    for i, (rid, second, is_request) in enumerate(pairs):
        entry = {
            "time": t(second / 2),
            "type": "request" if is_request else "response",
            "request": {"id": rid},
        }
        steps.append(("feed", json.dumps(entry).encode(), None if i % 3 else T0_NS + i * SEC // 4))
        if i % 5 == 4:
            steps.append(("expire", T0_NS + i * SEC // 2))
    steps.append(("flush",))
    run_both(fast_cls, steps, ttl_s=ttl_s, max_pending=max_pending)


def nest(depth: int, shape: str, inner: str) -> str:
    """``inner`` under ``depth`` levels of objects, arrays or both."""
    opens, closes = [], []
    for level in range(depth):
        if shape == "obj" or (shape == "mixed" and level % 3):
            opens.append('{"k":')
            closes.append("}")
        else:
            opens.append("[")
            closes.append("]")
    return "".join(opens) + inner + "".join(reversed(closes))


@settings(max_examples=examples(40), deadline=None)
@given(
    depth=st.one_of(st.integers(1, 40), st.integers(990, 1030)),
    shape=st.sampled_from(["obj", "arr", "mixed"]),
    inner=st.one_of(
        scalars, st.sampled_from(["{}", "[]", '{"a":1,"a":2}', "123456789012345678901234567890"])
    ),
    flatten_arrays=st.booleans(),
)
def test_deep_nesting(fast_cls: Any, depth: int, shape: str, inner: str, flatten_arrays: bool) -> None:
    line = f'{{"time":"{t(0)}","type":"response","d":{nest(depth, shape, inner)}}}'.encode()
    run_both(fast_cls, [("feed", line, None)], flatten_arrays=flatten_arrays)


# ---------------------------------------------------------------- real data


def corpus_steps(data: bytes, chunk_lines: int, clock: bool) -> list[tuple[Any, ...]]:
    lines = data.splitlines(keepends=True)
    steps: list[tuple[Any, ...]] = []
    for i in range(0, len(lines), chunk_lines):
        now = T0_NS + i * SEC // 100 if clock else None
        steps.append(("feed", b"".join(lines[i : i + chunk_lines]), now))
        if clock:
            steps.append(("expire", T0_NS + i * SEC // 100))
    steps.append(("flush",))
    return steps


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"flatten_arrays": True},
        {"max_pending": 4, "ttl_s": 0.05},
        {"prefix": b'{"time"', "max_line_bytes": 20_000},
        {
            "include": ["request.*", "response.*", "error", "auth.policies"],
            "exclude": ["*.hmac*", "request.id"],
        },
        {"exclude": ["auth.*", "*.0", "request.headers.*"], "flatten_arrays": True},
        {"sample_rate": 3},
        {"sample_rate": 2, "max_pending": 4, "ttl_s": 0.05, "include": ["*path*", "type"]},
        {"trace_context": False, "sample_rate": 5},
    ],
)
@pytest.mark.parametrize("two_pass", [False, True])
def test_sample_gives_identical_spans(fast_cls: Any, options: dict[str, Any], two_pass: bool) -> None:
    data = SAMPLE.read_bytes()
    steps = corpus_steps(data, 97, clock="ttl_s" in options)
    ref, _fast = run_both(fast_cls, steps, two_pass=two_pass, **options)
    assert ref.counters()["lines"] == 1430


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"flatten_arrays": True, "max_pending": 50, "ttl_s": 0.2},
        {"sample_rate": 4, "include": ["request.*", "response.data.*", "auth.*"], "exclude": ["*.1"]},
    ],
)
def test_shared_corpus_gives_identical_spans(
    fast_cls: Any, shared_corpus: Path, options: dict[str, Any]
) -> None:
    data = shared_corpus.read_bytes()
    ref, _fast = run_both(fast_cls, corpus_steps(data, 500, clock=bool(options)), two_pass=True, **options)
    assert ref.counters()["lines"] == 5730


# ---------------------------------------------------------------- hostile input


def hostile_lines() -> list[bytes]:
    good = SAMPLE.read_bytes().splitlines()[3]
    return [
        good[: len(good) // 2],
        good[:-1],
        good.replace(b"secret", b"s\xffcret", 1),
        good.replace(b"root", b"r\x00ot", 1),
        good.replace(b'"', b"\x00", 1),
        b"\x00" * 100,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b"[" * 10_000 + b"]" * 10_000,
        b'{"time":"' + t(0).encode() + b'","type":"response","x":' + b"[" * 10_000,
        # with an id: the reference hashes a line without one in pure Python
        b'{"time":"' + t(0).encode() + b'","type":"response","request":{"id":"' + ID1.encode() + b'"},'
        b'"big":"' + b"y" * (10 << 20) + b'"}',
        b'{"time":"' + t(0).encode() + b'","type":"response","big":"' + b"y" * (10 << 20),
        b"\xef\xbb\xbf" + good,
        good + b"\xef\xbb\xbf",
    ]


@pytest.mark.parametrize("max_line_bytes", [1 << 24, 1 << 20])
@pytest.mark.parametrize("per_line", [False, True])
def test_hostile_input_gives_identical_counters(fast_cls: Any, max_line_bytes: int, per_line: bool) -> None:
    lines = hostile_lines()
    feeds = [[line] for line in lines] if per_line else [lines]  # one feed takes the two-pass path
    steps: list[tuple[Any, ...]] = [("feed", b"\n".join(chunk) + b"\n", None) for chunk in feeds]
    ref, fast = run_both(fast_cls, [*steps, ("flush",)], two_pass=True, max_line_bytes=max_line_bytes)
    counters = fast.counters()
    assert counters["lines"] == len(lines)
    assert counters["malformed"] + counters["oversize"] >= 9


def test_lines_read_by_the_reference_keep_their_span_names(fast_cls: Any) -> None:
    # A repeated key sends a line to the reference reading (orjson) in the compiled
    # core; its span name is a str built for that line alone, used after it is made.
    lines = []
    for i in range(300):
        kind = "request" if i % 2 == 0 else "response"
        request = {"id": f"slow-{i // 2}", "operation": f"op-{i}-\u00e9\u4e2d", "mount_point": f"m{i}/"}
        entry = json.dumps({"time": t(i), "type": kind, "request": request})
        lines.append(('{"type":"x",' + entry[1:]).encode())  # the first "type" is overridden
    ops: list[tuple[Any, ...]] = [("feed", b"\n".join(lines) + b"\n", None), ("flush",)]
    ref, _fast = run_both(fast_cls, ops)
    assert ref.counters()["paired"] == 150
