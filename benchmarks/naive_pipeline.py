"""The naive pipeline, for comparison: what one writes with the stock OpenTelemetry parts.

Read lines, ``json.loads``, flatten recursively, pair by request id in a dict, then
``tracer.start_span`` / ``end`` through a BatchSpanProcessor into the Zipkin JSON
exporter (the faster stock Zipkin exporter). The queue is made large enough that no
span is dropped, so it is compared on delivering everything.

Usage: python naive_pipeline.py AUDIT_LOG ZIPKIN_URL
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from opentelemetry.exporter.zipkin.json import ZipkinExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif value is not None and value != []:
            out[prefix + key] = value
    return out


def ns(text: str) -> int:
    import datetime as dt

    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def main(path: str, url: str) -> None:
    logging.disable(logging.WARNING)  # the SDK warns about every dropped attribute
    provider = TracerProvider(resource=Resource.create({"service.name": "vault"}))
    provider.add_span_processor(BatchSpanProcessor(ZipkinExporter(endpoint=url), max_queue_size=1_000_000))
    tracer = provider.get_tracer("naive")
    pending: dict[str, tuple[int, str]] = {}

    def emit(name: str, start: int, end: int, attrs: dict[str, Any], error: str) -> None:
        span = tracer.start_span(name, kind=SpanKind.SERVER, start_time=start, attributes=attrs)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end)

    with open(path, "rb") as fh:
        for line in fh:
            entry = json.loads(line)
            request = entry.get("request", {})
            rid = request.get("id", "")
            name = f"{request.get('operation', '')} {request.get('mount_point') or request.get('path', '')}"
            t = ns(entry["time"])
            if entry["type"] == "request":
                if request.get("path") != "sys/audit/test":
                    pending[rid] = (t, name)
                continue
            start = pending.pop(rid, (t, name))[0]
            emit(name, start, t, flatten(entry), entry.get("error", ""))
    for t, name in pending.values():
        emit(name, t, t, {}, "")
    provider.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
