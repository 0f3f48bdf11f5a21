"""Stdout sink: JSON lines with the attributes spliced in, one flush per batch."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from vault_observe._core_py import Core, parse_rfc3339_ns
from vault_observe.model import PAIRING_NAMES, SpanRecord
from vault_observe.sinks.stdout import StdoutSink


@pytest.fixture(scope="module")
def sample_spans(sample_log: Path) -> list[SpanRecord]:
    core = Core()
    core.feed(sample_log.read_bytes())
    core.flush()
    return core.drain()


def check_line(line: bytes, span: SpanRecord) -> None:
    obj = json.loads(line)
    expected_keys = [
        "trace_id",
        "span_id",
        "name",
        "start",
        "end",
        "duration_ms",
        "pairing",
        "request_id",
        "attributes",
    ]
    if span.parent_span_id:
        expected_keys.insert(2, "parent_span_id")
    if span.error:
        expected_keys.insert(expected_keys.index("pairing"), "error")
    assert list(obj) == expected_keys
    assert obj["trace_id"] == span.trace_id.hex()
    assert obj["span_id"] == f"{span.span_id:016x}"
    assert obj["name"] == span.name
    assert parse_rfc3339_ns(obj["start"]) == span.start_ns
    assert parse_rfc3339_ns(obj["end"]) == span.end_ns
    assert obj["start"].endswith("Z") and len(obj["start"]) == 30  # nanoseconds, always 9 digits
    assert type(obj["duration_ms"]) is float
    assert obj["duration_ms"] == round((span.end_ns - span.start_ns) / 1000) / 1000
    assert obj["pairing"] == PAIRING_NAMES[span.pairing]
    assert obj["request_id"] == span.request_id
    assert obj.get("error", "") == span.error
    assert obj.get("parent_span_id") == (f"{span.parent_span_id:016x}" if span.parent_span_id else None)
    # the attribute bytes go out as they are
    assert line.endswith(b',"attributes":' + span.attrs_json + b"}")
    assert json.dumps(obj["attributes"]) == json.dumps(json.loads(span.attrs_json))


def test_sample_as_json_lines(sample_spans: list[SpanRecord]) -> None:
    out = io.BytesIO()
    sink = StdoutSink(out)
    assert sink.send(sample_spans, 0.0) == 0
    lines = out.getvalue().split(b"\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == len(sample_spans)
    for line, span in zip(lines, sample_spans, strict=False):
        check_line(line, span)
    assert {"paired", "orphan", "unanswered"} <= {json.loads(x)["pairing"] for x in lines[:-1]}
    assert sink.stats() == {
        "sent": len(sample_spans),
        "failed": 0,
        "batches": 1,
        "bytes": len(out.getvalue()),
    }


def test_parent_error_and_odd_text() -> None:
    span = SpanRecord(
        b"\x01" * 16,
        7,
        0xABC,
        'read "odd"\nname ☃',
        1_700_000_000_000_000_001,
        1_700_000_000_002_000_000,
        "1 error occurred:\n\t* permission denied\n\n",
        0,
        "",
        b'{"a":[1,2.5,true,{"b":null}],"c":"\\u0001"}',
    )
    out = io.BytesIO()
    StdoutSink(out).send([span], 0.0)
    line = out.getvalue()
    assert line.count(b"\n") == 1
    check_line(line.rstrip(b"\n"), span)
    assert json.loads(line)["start"] == "2023-11-14T22:13:20.000000001Z"


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_flush_per_batch(sample_spans: list[SpanRecord]) -> None:
    out = CountingStream()
    sink = StdoutSink(out)
    for start in range(0, 300, 100):
        sink.send(sample_spans[start : start + 100], 0.0)
    assert out.flushes == 3
    assert out.getvalue().count(b"\n") == 300


class BrokenStream(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_broken_stream_is_counted_not_raised(
    sample_spans: list[SpanRecord], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="vault_observe")
    sink = StdoutSink(BrokenStream())  # type: ignore[arg-type]
    assert sink.send(sample_spans[:10], 0.0) == 10
    assert sink.send(sample_spans[:5], 0.0) == 5
    sink.flush(1.0)
    sink.close()
    assert sink.stats()["failed"] == 15 and sink.stats()["sent"] == 0
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1  # rate-limited


def test_closed_stream(sample_spans: list[SpanRecord]) -> None:
    out = io.BytesIO()
    out.close()
    sink = StdoutSink(out)
    assert sink.send(sample_spans[:3], 0.0) == 3
    sink.close()


def test_default_stream_is_stdout(
    sample_spans: list[SpanRecord], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    sink = StdoutSink()
    sink.send(sample_spans[:2], 0.0)
    sink.close()
    out = capsysbinary.readouterr().out
    lines = out.split(b"\n")
    assert len(lines) == 3
    check_line(lines[0], sample_spans[0])
