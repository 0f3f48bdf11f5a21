"""Trace context, attribute filters and sampling: the same cases for both cores."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.implementations import core_class
from vault_observe import _core_py
from vault_observe.model import PAIRED, UNANSWERED


@pytest.fixture
def Core(impl: str) -> Any:  # noqa: N802 - a class
    return core_class(impl)


RID = "0b6e3f2c-9c4a-4d8e-a1b2-c3d4e5f60718"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def entry(kind: str, rid: str, second: int, headers: dict[str, Any] | None = None, **extra: Any) -> bytes:
    request: dict[str, Any] = {
        "id": rid,
        "operation": "read",
        "mount_point": "secret/",
        "path": "secret/data/x",
    }
    if headers is not None:
        request["headers"] = headers
    body: dict[str, Any] = {
        "time": f"2026-01-01T00:00:{second:02d}.5Z",
        "type": kind,
        "auth": {"policies": ["a"]},
        "request": request,
    }
    if kind == "response":
        body["response"] = {"data": {"value": "hmac-sha256:x", "n": 1}}
    body.update(extra)
    return json.dumps(body).encode() + b"\n"


def pair(rid: str, headers: dict[str, Any] | None = None, **extra: Any) -> bytes:
    return entry("request", rid, 1, headers) + entry("response", rid, 2, headers, **extra)


def test_traceparent_joins_the_callers_trace(Core: Any) -> None:  # noqa: N803
    core = Core()
    core.feed(pair(RID, {"traceparent": [f"00-{TRACE}-{PARENT}-01"]}))
    [span] = core.drain()
    assert span.trace_id.hex() == TRACE
    assert span.parent_span_id == int(PARENT, 16)
    assert span.request_id == RID and span.attributes()["request.id"] == RID
    # The span id still comes from the request id, not from the shared trace.
    plain = Core()
    plain.feed(pair(RID))
    [alone] = plain.drain()
    assert span.span_id == alone.span_id
    assert alone.trace_id.hex() == RID.replace("-", "") and alone.parent_span_id == 0


def test_traceparent_on_unanswered_requests(Core: Any) -> None:  # noqa: N803
    core = Core()
    core.feed(entry("request", RID, 1, {"traceparent": [f"00-{TRACE}-{PARENT}-01"]}))
    core.flush()
    [span] = core.drain()
    assert span.pairing == UNANSWERED
    assert (span.trace_id.hex(), span.parent_span_id) == (TRACE, int(PARENT, 16))


@pytest.mark.parametrize(
    "value",
    [
        "hmac-sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",  # audited with hmac=true
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent
        f"ff-{TRACE}-{PARENT}-01",  # forbidden version
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four parts
        f"00-{TRACE}-{PARENT}",
        "",
    ],
)
def test_invalid_traceparent_is_ignored(Core: Any, value: str) -> None:  # noqa: N803
    core = Core()
    core.feed(pair(RID, {"traceparent": [value]}))
    [span] = core.drain()
    assert span.trace_id.hex() == RID.replace("-", "") and span.parent_span_id == 0


def test_future_traceparent_version_with_more_fields_is_accepted(Core: Any) -> None:  # noqa: N803
    core = Core()
    core.feed(pair(RID, {"traceparent": [f"01-{TRACE}-{PARENT}-01-more"]}))
    [span] = core.drain()
    assert span.trace_id.hex() == TRACE


def test_trace_context_can_be_turned_off(Core: Any) -> None:  # noqa: N803
    core = Core(trace_context=False)
    core.feed(pair(RID, {"traceparent": [f"00-{TRACE}-{PARENT}-01"]}))
    [span] = core.drain()
    assert span.parent_span_id == 0 and span.trace_id.hex() == RID.replace("-", "")


def test_include_and_exclude_globs(Core: Any) -> None:  # noqa: N803
    core = Core(include=["request.*", "response.*", "error"], exclude=["response.data.*", "request.path"])
    core.feed(pair(RID, error="boom"))
    [span] = core.drain()
    assert span.attributes() == {
        "request.id": RID,
        "request.operation": "read",
        "request.mount_point": "secret/",
        "error": "boom",
    }
    assert span.error == "boom"  # status is not an attribute: filters leave it alone


def test_exclude_alone_keeps_the_rest(Core: Any) -> None:  # noqa: N803
    core = Core(exclude=["auth.*", "time", "type"])
    core.feed(pair(RID))
    [span] = core.drain()
    assert not any(key.startswith("auth.") or key in ("time", "type") for key in span.attributes())
    assert span.attributes()["response.data.n"] == 1


def test_sampling_keeps_one_in_n_by_trace_id_and_every_error(Core: Any) -> None:  # noqa: N803
    core = Core(sample_rate=4)
    ids = [f"{i:08x}-1111-4111-8111-111111111111" for i in range(400)]
    core.feed(b"".join(pair(rid) for rid in ids))
    core.feed(b"".join(pair(f"{i:08x}-2222-4222-8222-222222222222", error="denied") for i in range(20)))
    spans = core.drain()
    ok = [s for s in spans if not s.error]
    errors = [s for s in spans if s.error]
    assert len(errors) == 20 and all(s.sample_rate == 1 for s in errors)
    assert 60 <= len(ok) <= 140  # about 100 of 400
    assert all(s.sample_rate == 4 and s.pairing == PAIRED for s in ok)
    counters = core.counters()
    assert counters["sampled_out"] == 400 - len(ok)
    assert counters["spans"] == len(spans) and counters["paired"] == 420
    # Stable: the same trace ids give the same choice in another run (and the other core).
    again = Core(sample_rate=4)
    again.feed(b"".join(pair(rid) for rid in ids))
    assert [s.request_id for s in again.drain()] == [s.request_id for s in ok]
    reference = _core_py.Core(sample_rate=4)
    reference.feed(b"".join(pair(rid) for rid in ids))
    assert [s.request_id for s in reference.drain()] == [s.request_id for s in ok]


def test_sampling_keeps_unanswered_and_orphans(Core: Any) -> None:  # noqa: N803
    core = Core(sample_rate=1000)
    core.feed(entry("request", RID, 1) + entry("response", "11111111-1111-4111-8111-111111111111", 2))
    core.flush()
    assert sorted(s.pairing for s in core.drain()) == [1, 2]


def test_filters_see_array_indexes_when_arrays_are_flattened(Core: Any) -> None:  # noqa: N803
    core = Core(flatten_arrays=True, include=["auth.*"], exclude=["*.0"])
    core.feed(entry("response", RID, 2).replace(b'["a"]', b'["a", "b", "c"]'))
    [span] = core.drain()
    assert span.attributes() == {
        "auth.policies.1": "b",
        "auth.policies.2": "c",
        "vault_observe.pairing": "orphan",
    }


def test_filters_match_keys_that_need_escaping(Core: Any) -> None:  # noqa: N803
    core = Core(include=['q"*', "tab\t*", "back\\slash"])
    body = {
        "time": "2026-01-01T00:00:01Z",
        "type": "response",
        'q"k': 1,
        "tab\tx": 2,
        "back\\slash": 3,
        "z": 4,
    }
    core.feed(json.dumps(body).encode() + b"\n")
    [span] = core.drain()
    assert span.attributes() == {'q"k': 1, "tab\tx": 2, "back\\slash": 3, "vault_observe.pairing": "orphan"}


def test_unanswered_attributes_are_filtered(Core: Any) -> None:  # noqa: N803
    # An unanswered span keeps the request's attributes that the filters keep.
    core = Core(exclude=["type", "request.*"])
    core.feed(entry("request", RID, 1))
    core.flush()
    [span] = core.drain()
    assert span.attributes() == {
        "time": "2026-01-01T00:00:01.5Z",
        "auth.policies": ["a"],
        "vault_observe.pairing": "unanswered",
    }
    core = Core(include=["request.path"])
    core.feed(entry("request", RID, 1))
    core.flush()
    [span] = core.drain()
    assert span.attrs_json == b'{"request.path":"secret/data/x","vault_observe.pairing":"unanswered"}'


def test_unanswered_span_takes_the_requests_trace_context(Core: Any) -> None:  # noqa: N803
    core = Core(max_pending=1)
    other = "11111111-1111-4111-8111-111111111111"
    core.feed(entry("request", RID, 1, {"traceparent": f"00-{TRACE}-{PARENT}-01"}))
    core.feed(entry("request", other, 2))  # evicts the first
    core.feed(entry("response", other, 3, {"traceparent": [f"00-{TRACE}-{'1' * 16}-01"]}))
    evicted, paired = core.drain()
    assert (evicted.trace_id.hex(), evicted.parent_span_id) == (TRACE, int(PARENT, 16))
    assert (paired.trace_id.hex(), paired.parent_span_id) == (TRACE, int("1" * 16, 16))
    assert paired.span_id != evicted.span_id


def test_set_filters_applies_to_the_lines_fed_after_it(Core: Any) -> None:  # noqa: N803
    """A reload (SIGHUP) changes the filters and the sample rate of a running core."""
    core = Core()
    core.feed(pair(RID))
    [before] = core.drain()
    assert "auth.client_token" in before.attributes() or len(before.attributes()) > 4
    core.set_filters(include=["request.*"], exclude=["request.path"], sample_rate=1000)
    ids = [f"{i:08x}-3333-4333-8333-333333333333" for i in range(50)]
    core.feed(b"".join(pair(rid) for rid in ids))
    kept = core.drain()
    assert len(kept) < 10 and core.counters()["sampled_out"] == 50 - len(kept)
    for span in kept:
        assert all(key.startswith("request.") and key != "request.path" for key in span.attributes())
    core.set_filters()  # back to everything
    core.feed(pair("aaaaaaaa-3333-4333-8333-333333333333"))
    [after] = core.drain()
    assert after.attributes().keys() == before.attributes().keys()
    with pytest.raises(ValueError):
        core.set_filters(sample_rate=0)
