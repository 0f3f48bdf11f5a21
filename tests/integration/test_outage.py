"""A Zipkin outage under load from a real OpenBao: every span accounted, memory bounded
by --queue-bytes and given back once the queue drains (``benchmarks/soak_outage.py``
runs the same scenario for minutes; this is its short version)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.soak_outage import Plan, run

pytestmark = pytest.mark.integration

QUEUE_MIB = 8


def test_sink_outage_every_span_accounted_memory_bounded_and_given_back(
    bao_binary: str, tmp_path: Path
) -> None:
    plan = Plan(
        clients=4,
        keys=32,  # spans of a few KB: the queue reaches its bound within the outage
        warmup=8.0,
        refuse=10.0,
        refuse_until_full=True,  # a loaded machine makes fewer requests: wait for the bound
        refuse_max=120.0,
        fail=8.0,  # 503 for twice the retry window
        retry_window=4.0,
        batch_size=200,
        queue_bytes=f"{QUEUE_MIB}MiB",
        settle=30.0,
        settle_within=4.0,  # watch until RSS is back this close, or settle seconds
        capture=True,
    )
    result = run(plan, tmp_path, bao_binary)
    summary = result.summary()
    detail = {k: v for k, v in summary.items() if k != "plan"}
    zipkin = result.counters["sinks"]["zipkin"]

    # Nothing lost on the way in: every response of the file device reached the daemon,
    # and each became one span.
    assert summary["missing_from_capture"] == 0, detail
    assert result.counters["responses"] == result.file_responses > 1000, detail
    assert result.counters["spans"] - result.counters["unanswered"] == result.file_responses, detail
    # Every span accounted: delivered, failed after its retry window, or dropped and counted.
    spans = result.counters["spans"]
    assert zipkin["queued"] + zipkin["dropped_queue_full"] == spans, detail
    assert (
        zipkin["delivered"] + zipkin["failed"] + zipkin["dropped_queue_full"] + zipkin["dropped_shutdown"]
        == spans
    ), detail
    # The fault happened: batches failed (refused, then 503 past the window) and the bound was hit.
    assert zipkin["failed"] > 0 and zipkin["dropped_queue_full"] > 0, detail
    assert zipkin["delivered"] > 0, detail
    # The receiver holds what was delivered: no span twice, none it could not decode. (A
    # batch it took whose reply was lost is the daemon's "failed": at most that many more.)
    assert summary["receiver_errors"] == [] and result.receiver_duplicates == 0, detail
    assert zipkin["delivered"] <= result.receiver_spans <= zipkin["delivered"] + zipkin["failed"], detail

    # Memory: the queue never held more than its bound, RSS never rose past the bound plus
    # what is in flight (two senders' batches and their bodies) and the allocator's slack.
    bound = QUEUE_MIB * 2**20
    assert 0.5 * bound < summary["peak_queue_bytes"] <= bound, detail
    baseline = result.baseline()
    rss = summary["rss_mib"]
    assert rss["peak"] <= baseline + QUEUE_MIB + 24, (result.samples, detail)
    # ... and gave it back: within 32 MiB of the warm-up's level within 30 s of the drain.
    assert summary["seconds_to_within_32mib_after_drain"] is not None, (result.samples[-20:], detail)
    assert summary["seconds_to_within_32mib_after_drain"] <= 30.0, detail
    # Where the outage added more than the allocator's few MiB of slack, at least half of
    # it is given back (malloc_trim after the drain; glibc alone keeps it). On a quiet
    # machine the 8 MiB bound may add only ~11 MiB, of which ~7 stay as slack: the 32 MiB
    # criterion above is the guarantee, this one guards the trim where it matters.
    after = [s.rss_mib for s in result.samples if result.drained_at <= s.t <= result.drained_at + 30]
    added = rss["peak"] - baseline
    if added > 16.0:
        assert min(after) <= baseline + added / 2, (after, detail)
