"""The pending-request table of both cores: marks (``feed(..., mark=)`` and
``oldest_pending_mark``), the attributes that unanswered spans keep, and expiry in
bounded chunks."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from vault_observe.model import EVICTED, PAIRED, UNANSWERED

from .test_core import SEC, T0_NS, Make, core_class, ev, t


@pytest.fixture(params=["py", "c"])
def make_core(request: pytest.FixtureRequest) -> Make:
    cls = core_class(str(request.param))

    def make(**kwargs: Any) -> Any:
        return cls(**kwargs)

    return make


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
