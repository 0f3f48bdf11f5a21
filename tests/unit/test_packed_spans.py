"""The compiled core's packed spans: the reference core's SpanRecords, and the same
bodies from the compiled encoders whether they read packed spans or records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.implementations import compiled_module, core_class
from vault_observe import __version__, _core_py
from vault_observe.errors import LeftToPython
from vault_observe.model import SpanBatch, SpanRecord
from vault_observe.sink_worker import SinkWorker
from vault_observe.sinks.base import LocalSink

from .test_core import ID1, ID2, t

pytestmark = pytest.mark.c_extension

SERVICE = "vault-test"


def both(data: bytes, **options: Any) -> tuple[Any, list[SpanRecord]]:
    """The compiled core's packed spans and the reference core's records for ``data``."""
    fast = core_class("c")(**options)
    ref = _core_py.Core(**options)
    for core in (fast, ref):
        core.feed(data)
        core.flush()
    return fast.drain_spans(), ref.drain()


def line(kind: str, rid: str, seconds: float | str, path: str = "secret/data/app", **extra: Any) -> bytes:
    when = seconds if isinstance(seconds, str) else t(seconds)
    entry = {"time": when, "type": kind, "request": {"id": rid, "operation": "read", "path": path}, **extra}
    return json.dumps(entry).encode() + b"\n"


def odd_values() -> bytes:
    """Spans with values a packed span cannot hold, between ordinary ones."""
    return b"".join(
        [
            line("request", ID1, 0),
            line("response", ID1, 0.25),
            # a time beyond 2**62 ns since 1970 (the year 2116)
            line("response", ID2, "2200-01-01T00:00:00.000000001Z"),
            # and one before -2**62 ns (the year 1823)
            line("response", "0c3e5b7a-1d2e-4f40-9a8f-5162d2e3f405", "1800-01-01T00:00:00Z"),
            line("response", "6f0c5a4e-7b1d-4c3e-9a8f-1d2e3f405162", 2, error="permission denied"),
        ]
    )


def test_packed_spans_are_the_reference_records(sample_log: Path) -> None:
    packed, records = both(sample_log.read_bytes())
    assert isinstance(packed, Sequence)
    assert packed.plain
    assert len(packed) == len(records) > 500
    got = list(packed)
    assert all(type(span) is SpanRecord for span in got)
    assert got == records
    assert [span.attrs_json for span in got] == [span.attrs_json for span in records]
    assert packed.records() == records
    assert packed[0] == records[0]
    assert packed[-1] == records[-1]
    with pytest.raises(IndexError):
        packed[len(packed)]
    view = packed[100:250]
    assert list(view) == records[100:250]
    assert list(view[3:7]) == records[103:107]
    assert list(packed[::7]) == records[::7]
    assert len(packed[300:200]) == 0


def test_drain_spans_takes_the_ready_spans_once(sample_log: Path) -> None:
    core = core_class("c")()
    core.feed(sample_log.read_bytes())
    first = core.drain_spans()
    assert len(first) > 0
    assert len(core.drain_spans()) == 0
    core.flush()
    unanswered = core.drain_spans()
    assert len(unanswered) > 0
    assert all(span.pairing == 2 for span in unanswered)


def test_values_a_packed_span_cannot_hold_keep_their_record() -> None:
    packed, records = both(odd_values())
    assert len(packed) == len(records) == 4
    assert not packed.plain
    assert list(packed) == records
    assert [span.attrs_json for span in packed] == [span.attrs_json for span in records]
    assert records[1].start_ns > 1 << 62
    assert records[2].start_ns < -(1 << 62)
    assert packed[:1].plain  # the ordinary span alone
    assert packed[3:].plain
    assert not packed[1:3].plain


def test_sample_rates_survive_packing(sample_log: Path) -> None:
    packed, records = both(sample_log.read_bytes(), sample_rate=3)
    assert packed.plain
    assert list(packed) == records
    assert {span.sample_rate for span in records} == {1, 3}


def encoders() -> dict[str, Any]:
    zipkin = compiled_module("_zipkin_proto")
    batch_json = compiled_module("_batch_json")
    from vault_observe.sinks.encoding import otlp

    return {
        "zipkin": zipkin.ProtoEncoder(SERVICE, "vault-observe", __version__),
        "honeycomb": batch_json.HoneycombEncoder(SERVICE),
        "otlp": batch_json.OtlpEncoder(otlp.request_head(SERVICE), otlp.REQUEST_TAIL),
    }


@pytest.mark.parametrize("name", ["zipkin", "honeycomb", "otlp"])
def test_compiled_encoders_read_packed_spans_as_records(sample_log: Path, name: str) -> None:
    encoder = encoders()[name]
    packed, records = both(sample_log.read_bytes(), sample_rate=2)
    want = encoder.encode(records)
    assert want is not None
    assert encoder.encode(packed) == want
    # a batch of views and lists, as a sink worker hands them over
    assert encoder.encode(SpanBatch([packed[:10], records[10:20], packed[20:]])) == want


@pytest.mark.parametrize("name", ["zipkin", "honeycomb", "otlp"])
def test_compiled_encoders_on_spans_kept_as_records(name: str) -> None:
    encoder = encoders()[name]
    packed, records = both(odd_values())
    ordinary = [records[0], records[3]]
    assert encoder.encode(SpanBatch([packed[:1], packed[3:]])) == encoder.encode(ordinary)
    try:
        want = encoder.encode(records)
    except LeftToPython:  # e.g. Zipkin: no time before 1970; the Python encoder decides
        with pytest.raises(LeftToPython):
            encoder.encode(packed)
    else:
        assert encoder.encode(packed) == want


class Collecting(LocalSink):
    """A sink that keeps what it is sent."""

    name = "collecting"

    def __init__(self) -> None:
        self.batches: list[list[SpanRecord]] = []

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        self.batches.append(list(spans))
        return 0

    def stats(self) -> dict[str, int]:
        return {}


def test_worker_cuts_chunks_into_batches_and_drops_past_its_bound(sample_log: Path) -> None:
    packed, records = both(sample_log.read_bytes())
    sink = Collecting()
    worker = SinkWorker(sink, queue_size=250, batch_size=100, flush_interval=0.01, retry_window=1.0)
    worker.offer(packed[:30])
    worker.offer(records[30:230])
    worker.offer(packed[230:400])  # room for 20 of them
    assert worker.depth == 250
    assert worker.counts["dropped_queue_full"] == 150
    # the 20 taken of the last chunk wait copied out, not as a view holding all 170
    last = worker._queue[-1]
    assert len(last) == 20
    if type(last) is not list:
        assert last.store is not packed.store
        assert last.span_bytes <= last.nbytes <= last.span_bytes + 64
        assert last.nbytes < packed[230:400].span_bytes / 5
    worker.start()
    worker.stop(deadline=__import__("time").monotonic() + 10)
    worker.close()
    assert [len(batch) for batch in sink.batches] == [100, 100, 50]
    assert [span for batch in sink.batches for span in batch] == records[:250]
    assert worker.counts["delivered"] == 250
    assert worker.depth == 0


def test_tune_allocator_takes_on_glibc() -> None:
    spans = compiled_module("_spans")
    import platform

    assert spans.tune_allocator() is (platform.libc_ver()[0] == "glibc")
