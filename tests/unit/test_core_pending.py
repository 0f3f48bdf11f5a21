"""The pending-request table of both cores: marks (``feed(..., mark=)`` and
``oldest_pending_mark``), the attributes that unanswered spans keep, and expiry in
bounded chunks."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest

from tests.implementations import core_class
from vault_observe._core_py import dump_attrs, flatten
from vault_observe.model import EVICTED, PAIRED, UNANSWERED

from .test_core import SEC, T0_NS, Make, ev, only, t


def rid(i: int) -> str:
    return str(uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % (1 << 128)))


# ---------------------------------------------------------------- marks


def test_no_mark_before_any_request(make_core: Make) -> None:
    core = make_core()
    assert core.oldest_pending_mark() is None
    core.feed(ev("response", rid(1)), mark=5)  # an orphan stores nothing
    assert core.oldest_pending_mark() is None


def test_default_mark_is_zero(make_core: Make) -> None:
    core = make_core()
    core.feed(ev("request", rid(1)))
    assert core.oldest_pending_mark() == 0
    core.feed(ev("request", rid(2)), None, 7)
    assert core.oldest_pending_mark() == 0


def test_answered_requests_move_the_oldest_mark(make_core: Make) -> None:
    core = make_core()
    core.feed(ev("request", rid(1)) + ev("request", rid(2)), mark=100)
    core.feed(ev("request", rid(3)), mark=250)
    core.feed(ev("request", rid(4)), mark=400)
    assert core.oldest_pending_mark() == 100
    core.feed(ev("response", rid(1)), mark=500)
    assert core.oldest_pending_mark() == 100  # rid(2) of mark 100 still waits
    core.feed(ev("response", rid(2)), mark=600)
    assert core.oldest_pending_mark() == 250
    core.feed(ev("response", rid(4)), mark=700)
    assert core.oldest_pending_mark() == 250  # a later request answered first moves nothing
    core.feed(ev("response", rid(3)), mark=800)
    assert core.oldest_pending_mark() is None
    assert [s.pairing for s in core.drain()] == [PAIRED] * 4
    core.feed(ev("request", rid(5)), mark=900)
    assert core.oldest_pending_mark() == 900


def test_expired_and_flushed_requests_move_the_oldest_mark(make_core: Make) -> None:
    core = make_core(ttl_s=10)
    core.feed(ev("request", rid(1), t(0)), mark=10)
    core.feed(ev("request", rid(2), t(5)), mark=20)
    core.feed(ev("request", rid(3), t(8)), mark=30)
    core.expire(T0_NS + 10 * SEC)
    assert core.oldest_pending_mark() == 20
    core.expire(T0_NS + 15 * SEC)
    assert core.oldest_pending_mark() == 30
    core.flush()
    assert core.oldest_pending_mark() is None
    assert [s.pairing for s in core.drain()] == [UNANSWERED] * 3


def test_evicted_requests_move_the_oldest_mark(make_core: Make) -> None:
    core = make_core(max_pending=2)
    core.feed(ev("request", rid(1), t(0)), mark=1)
    core.feed(ev("request", rid(2), t(1)), mark=2)
    core.feed(ev("request", rid(3), t(2)), mark=3)
    assert core.oldest_pending_mark() == 2
    core.feed(ev("request", rid(4), t(3)), mark=4)
    assert core.oldest_pending_mark() == 3
    assert [s.pairing for s in core.drain()] == [EVICTED, EVICTED]


def test_duplicate_request_takes_the_new_mark(make_core: Make) -> None:
    core = make_core()
    core.feed(ev("request", rid(1)), mark=1)
    core.feed(ev("request", rid(2)), mark=2)
    core.feed(ev("request", rid(1), t(1)), mark=3)
    assert core.counters()["duplicates"] == 1
    assert core.oldest_pending_mark() == 2
    core.feed(ev("response", rid(2)), mark=4)
    assert core.oldest_pending_mark() == 3


def test_a_mark_below_earlier_ones_is_still_the_smallest(make_core: Make) -> None:
    """Marks that go down (a file that restarts at 0) give the true minimum."""
    core = make_core()
    core.feed(ev("request", rid(1)), mark=5000)
    core.feed(ev("request", rid(2)), mark=0)
    core.feed(ev("request", rid(3)), mark=7000)
    assert core.oldest_pending_mark() == 0
    core.feed(ev("response", rid(2)))
    assert core.oldest_pending_mark() == 5000
    core.feed(ev("response", rid(1)))
    assert core.oldest_pending_mark() == 7000


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.5, "3", None, True])
def test_bad_marks_are_refused(make_core: Make, bad: Any) -> None:
    core = make_core()
    with pytest.raises((TypeError, ValueError)):
        core.feed(ev("request", rid(1)), mark=bad)
    assert core.pending == 0
    core.feed(ev("request", rid(1)), mark=(1 << 64) - 1)
    assert core.oldest_pending_mark() == (1 << 64) - 1


def test_random_marks_match_a_model(make_core: Make) -> None:
    """Many feeds, answers, evictions and expiries: the oldest mark is always the
    minimum over the pending requests, which the spans that come out account for."""
    rng = random.Random(11)
    core = make_core(max_pending=40, ttl_s=10)
    model: dict[str, int] = {}  # request id -> its mark, for the requests still pending
    mark = 0
    now = 0.0
    next_id = 0
    for step in range(2500):
        now += rng.random()
        if rng.random() < 0.02:
            mark = rng.randrange(0, mark + 1)  # sometimes down (a file that restarts)
        else:
            mark += rng.randrange(0, 3)
        lines = []
        for _ in range(rng.randrange(1, 6)):
            if model and rng.random() < 0.45:
                lines.append(ev("response", rng.choice(list(model)), t(now)))
            else:
                next_id += 1
                model[rid(next_id)] = mark
                lines.append(ev("request", rid(next_id), t(now)))
        core.feed(b"".join(lines), mark=mark)
        if step % 7 == 0:
            core.expire(T0_NS + int(now * SEC))
        for span in core.drain():
            model.pop(span.request_id, None)
        assert core.pending == len(model)
        assert core.oldest_pending_mark() == (min(model.values()) if model else None)
    assert core.counters()["evicted"] and core.counters()["unanswered"] and core.counters()["paired"]
    core.flush()
    assert core.oldest_pending_mark() is None


def test_one_old_request_under_many_later_marks(make_core: Make) -> None:
    """A request that waits while thousands of later feeds come and go keeps the
    oldest mark; the marks of the answered ones leave no trace."""
    core = make_core(ttl_s=3600)
    core.feed(ev("request", rid(0)), mark=3)
    for i in range(1, 5000):
        core.feed(ev("request", rid(i)) + ev("response", rid(i)), mark=10 * i)
        if i % 1000 == 0:
            core.feed(ev("request", rid(10_000 + i)), mark=10 * i + 1)
        assert core.oldest_pending_mark() == 3
    core.feed(ev("response", rid(0)))
    assert core.oldest_pending_mark() == 10_001
    assert core.pending == 4


# ---------------------------------------------------------------- attributes of unanswered spans


def request_line(i: int, **extra: Any) -> bytes:
    """A request as OpenBao writes it, with who called and from where."""
    entry: dict[str, Any] = {
        "time": t(i),
        "type": "request",
        "auth": {
            "client_token": "hmac-sha256:" + "ab" * 32,
            "accessor": "hmac-sha256:" + "cd" * 32,
            "display_name": "approle-ci",
            "policies": ["default", "ci"],
            "token_policies": ["default", "ci"],
            "metadata": {"role_name": "ci"},
            "entity_id": "7d2e3f40-1111-4222-8333-944455566677",
            "token_type": "service",
        },
        "request": {
            "id": rid(i),
            "client_id": "0DHqvq2D77kL2/JTPSZkTMJbkFVmUu0TzMi0jiXcFy8=",
            "operation": "update",
            "mount_point": "transit/",
            "mount_type": "transit",
            "client_token": "hmac-sha256:" + "ef" * 32,
            "namespace": {"id": "root"},
            "path": "transit/encrypt/app",
            "data": {"plaintext": "hmac-sha256:" + "01" * 32, "context": ["a,b", "c]d", {"e": 'f"}'}]},
            "remote_address": "10.1.2.3",
            "remote_port": 51360,
        },
    }
    entry.update(extra)
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def test_unanswered_and_evicted_spans_keep_the_requests_attributes(make_core: Make) -> None:
    core = make_core(max_pending=1, pending_attrs_bytes=1 << 20)
    core.feed(request_line(1) + request_line(2))  # the second evicts the first
    core.flush()
    evicted, unanswered = core.drain()
    assert (evicted.pairing, unanswered.pairing) == (EVICTED, UNANSWERED)
    for i, span in ((1, evicted), (2, unanswered)):
        expected = flatten(json.loads(request_line(i)))
        expected["vault_observe.pairing"] = "unanswered" if span.pairing == UNANSWERED else "evicted"
        assert span.attributes() == expected
        assert span.attrs_json == dump_attrs(expected)
    assert core.counters()["attrs_trimmed"] == 0


def test_over_the_cap_the_first_keys_are_kept(make_core: Make) -> None:
    line = request_line(1)
    whole = dump_attrs(flatten(json.loads(line)))
    core = make_core(pending_attrs_bytes=600)
    assert len(whole) > 600
    core.feed(line)
    core.flush()
    span = only(core.drain())
    attrs = span.attributes()
    del attrs["vault_observe.pairing"]
    # the keys of PENDING_FIRST up to request.client_id (67 bytes more would make 621),
    # written in document order; none of the others fits in what is left
    assert list(attrs) == [
        "time",
        "type",
        "auth.display_name",
        "auth.policies",
        "auth.token_policies",
        "auth.metadata.role_name",
        "auth.entity_id",
        "auth.token_type",
        "request.id",
        "request.operation",
        "request.mount_point",
        "request.mount_type",
        "request.namespace.id",
        "request.path",
        "request.remote_address",
        "request.remote_port",
    ]
    assert len(dump_attrs(attrs)) <= 600
    assert core.counters()["attrs_trimmed"] == 1


def test_a_small_cap_keeps_what_fits_in_priority_order(make_core: Make) -> None:
    core = make_core(pending_attrs_bytes=150)
    core.feed(request_line(1))
    core.flush()
    attrs = only(core.drain()).attributes()
    # "{", then time (40 with its comma), type (17), request.id (52), operation (29):
    # 139 bytes; none of the others fits in the 11 left
    assert list(attrs) == ["time", "type", "request.id", "request.operation", "vault_observe.pairing"]
    core = make_core(pending_attrs_bytes=2)
    core.feed(request_line(1))
    core.flush()
    assert only(core.drain()).attrs_json == b'{"vault_observe.pairing":"unanswered"}'


def test_answered_requests_count_no_trimming(make_core: Make) -> None:
    core = make_core(pending_attrs_bytes=100)
    core.feed(request_line(1) + ev("response", rid(1)) + request_line(2))
    core.flush()
    paired, unanswered = core.drain()
    assert paired.pairing == PAIRED and b"auth.token_type" in paired.attrs_json  # the response's own
    assert unanswered.pairing == UNANSWERED
    assert core.counters()["attrs_trimmed"] == 1


@pytest.mark.parametrize("bad", [0, 1, -5, 1 << 31, 10.0, None])
def test_bad_caps_are_refused(make_core: Make, bad: Any) -> None:
    with pytest.raises(ValueError):
        make_core(pending_attrs_bytes=bad)


def _random_request(rng: random.Random, i: int) -> bytes:
    keys = ["path", "remote_address", 'a"b', "c\\d", "request.namespace.x", "é", "\u2028", "k,}"]
    values: list[Any] = [
        "x" * rng.randrange(0, 80),
        rng.randrange(-(10**6), 10**6),
        1.5,
        True,
        ["[", "]", "{", ",", '"'],
        [[1, [2, {"z": "}"}]], []],
        {"nested": {"deep": "v,w"}},
        None,
        {},
    ]
    request: dict[str, Any] = {"id": rid(i) if rng.random() < 0.8 else f"id-{i}"}
    for _ in range(rng.randrange(0, 7)):
        request[rng.choice(keys)] = rng.choice(values)
    entry: dict[str, Any] = {"time": t(i), "type": "request", "request": request}
    if rng.random() < 0.5:
        entry["auth"] = {"display_name": "u" * rng.randrange(1, 40), "policies": ["p"] * rng.randrange(3)}
    if rng.random() < 0.2:
        entry["error"] = "e" * rng.randrange(1, 30)
    for _ in range(rng.randrange(0, 3)):
        entry[rng.choice(keys)] = rng.choice(values)
    return json.dumps(entry, ensure_ascii=rng.random() < 0.5).encode() + b"\n"


@pytest.mark.c_extension
@pytest.mark.parametrize("flatten_arrays", [False, True])
def test_trimming_is_the_same_in_both_cores(flatten_arrays: bool) -> None:
    """Random requests, random caps: both cores keep the same bytes and count the same."""
    fast_cls = core_class("c")
    py_cls = core_class("py")
    rng = random.Random(5)
    for round_ in range(40):
        cap = rng.choice([2, 20, 60, 100, 150, 250, 400, 1024])
        lines = b"".join(_random_request(rng, round_ * 100 + i) for i in range(60))
        results = []
        for cls in (py_cls, fast_cls):
            core = cls(pending_attrs_bytes=cap, max_pending=40, flatten_arrays=flatten_arrays)
            core.feed(lines)
            core.flush()
            results.append(([(s.request_id, s.pairing, s.attrs_json) for s in core.drain()], core.counters()))
        assert results[0] == results[1], cap
        for _, _, attrs in results[0][0]:
            assert len(attrs) - len(b',"vault_observe.pairing":"unanswered"') <= max(
                cap, 2
            ) or attrs.startswith(b'{"vault_observe.pairing"')


@pytest.mark.c_extension
def test_sample_log_unanswered_spans_are_the_same_in_both_cores(sample_log: Any) -> None:
    data = sample_log.read_bytes()
    requests = b"".join(line + b"\n" for line in data.splitlines() if b'"type":"request"' in line)
    for cap in (2, 300, 700, 1024, 1400, 1536, 1 << 20):
        out = []
        for impl in ("py", "c"):
            core = core_class(impl)(pending_attrs_bytes=cap)
            core.feed(requests)
            core.flush()
            out.append(([(s.request_id, s.attrs_json) for s in core.drain()], core.counters()))
        assert out[0] == out[1]
        assert out[0][1]["unanswered"] > 100
        if cap == 1 << 20:
            assert out[0][1]["attrs_trimmed"] == 0
        elif cap >= 300:
            assert all(b'"request.path"' in attrs for _, attrs in out[0][0])


# ---------------------------------------------------------------- expiry in chunks


def test_flush_and_expire_emit_at_most_limit_spans(make_core: Make) -> None:
    core = make_core(ttl_s=10)
    core.feed(b"".join(ev("request", rid(i), t(i)) for i in range(25)))
    assert core.expire(T0_NS + 19 * SEC, 4) == 4  # 10 due, 4 taken
    assert core.pending == 21
    assert core.expire(T0_NS + 19 * SEC, 100) == 10  # the other 6 due
    assert core.pending == 15
    assert core.expire(T0_NS + 19 * SEC, 100) == 10
    taken = [s.request_id for s in core.drain()]
    assert taken == [rid(i) for i in range(10)]
    assert core.flush(7) == 7
    assert core.pending == 8
    assert core.flush(100) == 15
    assert core.flush(1) == 15
    assert [s.request_id for s in core.drain()] == [rid(i) for i in range(10, 25)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            core.flush(bad)
        with pytest.raises(ValueError):
            core.expire(0, bad)


TIMES = [
    "2026-11-27T08:04:45Z",
    "2026-11-27T08:04:45.5Z",
    "2026-11-27T08:04:45.50Z",
    "2026-11-27T08:04:45.123456789Z",
    "2026-11-27T08:04:45.000000001Z",
    "2026-11-27T08:04:45.12345678Z",
    "2026-11-27T08:04:45.1234567890Z",
    "2026-11-27t08:04:45.5z",
    "2026-11-27T10:04:45.5+02:00",
    "1969-12-31T23:59:59.5Z",
    "1970-01-01T00:00:00Z",
    "2000-02-29T23:59:60Z",
    "9999-12-31T23:59:59.999999999Z",
    "0001-01-01T00:00:00Z",
]


def _shapes(request_id: str) -> list[dict[str, Any]]:
    nested = [{"a": 1, "request.id": request_id}]
    return [
        {"request": {"id": request_id}},
        {"request": {"id": request_id, "path": "p"}},
        {"auth": {"x": nested}, "request": {"id": request_id, "path": "p"}},
        {"request": {"path": "p", "id": request_id, "n": nested}},
        {"request": {"id": request_id}, "request.id": request_id},
        {"z": ',"request.id":"' + request_id + '"', "request": {"id": request_id}},
    ]


@pytest.mark.c_extension
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"exclude": ["type"]},
        {"exclude": ["time"]},
        {"flatten_arrays": True},
        # lines over the cap, attributes under it: kept flattened, whole
        {"exclude": ["pad"], "pending_attrs_bytes": 400},
        {"exclude": ["pad", "type"], "pending_attrs_bytes": 400},
    ],
)
def test_what_a_waiting_request_keeps_is_given_back_exactly(options: dict[str, Any]) -> None:
    """The compiled core leaves out of a waiting request's bytes what it can write
    again (its time, its id); every time format and id placement comes back as the
    reference core keeps it."""
    lines = []
    for time_text in TIMES:
        for make_id in (rid, lambda k: rid(k).upper(), lambda k: "dev-" + rid(k)):
            for shape in range(6):
                ident = make_id(len(lines))  # each line its own id: no duplicates
                entry: dict[str, Any] = {"time": time_text, "type": "request", **_shapes(ident)[shape]}
                entry["pad"] = "x" * 500
                lines.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    out = []
    for impl in ("py", "c"):
        core = core_class(impl)(max_pending=1, **options)  # each request evicts the one before
        spans = []
        for line in lines:
            core.feed(line)
            spans += [(s.request_id, s.start_ns, s.attrs_json) for s in core.drain()]
        core.flush()
        spans += [(s.request_id, s.start_ns, s.attrs_json) for s in core.drain()]
        out.append((spans, core.counters()))
    assert out[0] == out[1]
    counts = out[0][1]
    assert len(out[0][0]) == counts["requests"] == len(lines) - counts["invalid"] == len(lines) - 18


def test_the_table_works_on_after_it_empties_and_gives_its_arrays_back(make_core: Make) -> None:
    """Past a few thousand entries an emptied table starts afresh (the compiled core
    frees its arrays): later requests pair, expire and mark as before."""
    core = make_core(ttl_s=10)
    for round_ in range(3):
        base = round_ * 10_000
        core.feed(b"".join(ev("request", rid(base + i), t(i / 1000)) for i in range(6000)), mark=base)
        core.feed(
            ev("request", "dev-" + rid(base), t(1)) + ev("request", rid(base + 9999), t(1), error="e"),
            mark=base + 5,
        )
        assert core.pending == 6002
        assert core.oldest_pending_mark() == base
        if round_ == 1:
            core.flush(5000)
            core.flush()
        else:
            core.feed(b"".join(ev("response", rid(base + i), t(2)) for i in range(6000)))
            core.feed(ev("response", "dev-" + rid(base), t(2)) + ev("response", rid(base + 9999), t(2)))
        assert core.pending == 0 and core.oldest_pending_mark() is None
        spans = core.drain()
        assert len(spans) == 6002
        assert {s.pairing for s in spans} == ({UNANSWERED} if round_ == 1 else {PAIRED})
        # afterwards: one more of each kind
        core.feed(
            ev("request", rid(base + 7000), t(3)) + ev("request", rid(base + 7001), t(3)), mark=base + 1
        )
        core.feed(ev("response", rid(base + 7000), t(4)))
        core.expire(T0_NS + 20 * SEC)
        paired, unanswered = core.drain()
        assert (paired.request_id, paired.pairing) == (rid(base + 7000), PAIRED)
        assert (unanswered.request_id, unanswered.pairing) == (rid(base + 7001), UNANSWERED)
        assert b'"request.path":"secret/data/app"' in unanswered.attrs_json
    counts = core.counters()
    assert counts["paired"] == 2 * 6002 + 3 and counts["unanswered"] == 6002 + 3


def test_a_line_within_the_cap_whose_attributes_are_over_it_is_cut_when_it_expires(make_core: Make) -> None:
    line = request_line(1)
    flat_size = len(dump_attrs(flatten(json.loads(line))))
    cap = (len(line) - 1 + flat_size) // 2
    assert len(line) - 1 < cap < flat_size  # kept as the line, cut once flattened
    core = make_core(pending_attrs_bytes=cap)
    core.feed(line + request_line(2) + ev("response", rid(2)))
    assert core.counters()["attrs_trimmed"] == 0  # nothing cut while waiting
    core.flush()
    _paired, span = core.drain()
    assert span.pairing == UNANSWERED
    assert len(span.attrs_json) - len(',"vault_observe.pairing":"unanswered"') <= cap
    assert b'"request.path":"transit/encrypt/app"' in span.attrs_json
    assert core.counters()["attrs_trimmed"] == 1
