"""One hostile line costs at most itself: the findings of the differential fuzzer
(``tests/fuzz``) as regression cases, run against both cores and every encoder.

Core side: reserved attribute names, the nil UUID, odd ``feed`` arguments, and a
core used from several threads at once (a clear RuntimeError, never corrupted
memory) or fed a buffer that another thread changes meanwhile.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest

from vault_observe import _core_py
from vault_observe.model import EVICTED, ORPHAN, PAIRED, PAIRING_KEY, UNANSWERED

from .test_core import ID1, T0, Make, core, core_class, ev, impl, make_core, only, raw, spans_of, t

__all__ = ["core", "impl", "make_core"]  # the fixtures of test_core, run on both cores

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
        ev("request", ID1, T0, error="x", **marker),  # kept attributes (an error): evicted
        ev("request", "not-a-uuid", t(1), **marker),  # kept attributes (not a UUID): unanswered
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
    # every line was flattened once: 4 entry keys dropped
    assert core.counters()["reserved_keys"] == 4


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


@pytest.mark.parametrize("rid", [NIL, NIL.upper().replace("0", "0")])
def test_nil_uuid_request_id_is_hashed_never_a_zero_trace_id(core: Any, rid: str) -> None:
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
    assert not _core_py.is_canonical_uuid(NIL.encode())
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


@pytest.mark.parametrize("options", [{"release_gil": True}, {"include": ["*"]}], ids=["gil-free", "filter"])
def test_threads_hammering_one_compiled_core_get_runtime_errors_not_corruption(
    options: dict[str, Any], switch_often: None
) -> None:
    """Both ways a feed lets other threads in: the GIL-free first pass, and the key
    filter (Python) asked about names it has not seen (each line has its own)."""
    core = compiled_core(max_pending=50, **options)
    chunk = big_chunk(300)
    stop = time.monotonic() + 2.0
    refused = [0]
    errors: list[BaseException] = []

    def work(op: str) -> None:
        try:
            while time.monotonic() < stop:
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
