"""What the spans must be, worked out from audit entries independently of the daemon's code."""

from __future__ import annotations

import calendar
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROBE_PATH = "sys/audit/test"


def time_ns(text: str) -> int:
    """Unix nanoseconds of OpenBao's ``2026-11-27T08:07:17.352864571Z``."""
    assert text.endswith("Z"), text
    whole, _, fraction = text[:-1].partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def span_name(entry: dict[str, Any]) -> str:
    request = entry["request"]
    return f"{request['operation']} {request.get('mount_point') or request['path']}"


@dataclass
class Expected:
    """One span the daemon must send: a response (paired or orphan) or an unanswered request."""

    request_id: str
    name: str
    error: str
    start_ns: int
    duration_ns: int
    pairing: str  # paired, orphan or unanswered

    @property
    def trace_id(self) -> str:
        return self.request_id.replace("-", "")


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def expected_spans(stream: list[dict[str, Any]]) -> dict[str, Expected]:
    """The spans for entries in the order one daemon received them, by trace id (hex)."""
    pending: dict[str, dict[str, Any]] = {}
    out: dict[str, Expected] = {}
    for entry in stream:
        request = entry["request"]
        rid = request.get("id")
        assert rid, f"entry without request.id: {entry}"
        if entry["type"] == "request":
            if request.get("path") != PROBE_PATH:
                assert rid not in pending, f"request id {rid} seen twice"
                pending[rid] = entry
            continue
        assert entry["type"] == "response"
        end = time_ns(entry["time"])
        req = pending.pop(rid, None)
        if req is None:
            expected = Expected(rid, span_name(entry), entry.get("error", ""), end, 0, "orphan")
        else:
            start = time_ns(req["time"])
            expected = Expected(
                rid, span_name(entry), entry.get("error", ""), start, max(0, end - start), "paired"
            )
        assert expected.trace_id not in out, f"response id {rid} seen twice"
        out[expected.trace_id] = expected
    for rid, req in pending.items():
        start = time_ns(req["time"])
        out[rid.replace("-", "")] = Expected(
            rid, span_name(req), req.get("error", ""), start, 0, "unanswered"
        )
    return out


def by_trace_id(items: list[dict[str, Any]], key: Any) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        grouped.setdefault(key(item), []).append(item)
    return grouped


def check_zipkin(spans: list[dict[str, Any]], expected: dict[str, Expected], service: str = "vault") -> None:
    """Exactly one Zipkin span per expected span, with its name, error, start and duration."""
    grouped = by_trace_id(spans, lambda s: s["traceId"])
    assert sorted(grouped) == sorted(expected), (
        f"missing {sorted(set(expected) - set(grouped))[:5]}, unexpected {sorted(set(grouped) - set(expected))[:5]}"
    )
    for trace_id, want in expected.items():
        got = grouped[trace_id]
        assert len(got) == 1, f"{len(got)} Zipkin spans for {want.request_id}"
        span = got[0]
        tags = span.get("tags", {})
        assert span["name"] == want.name, (span["name"], want)
        assert span.get("kind") == "SERVER"
        assert abs(span["timestamp"] - want.start_ns / 1000) <= 1, (span["timestamp"], want)
        assert abs(span.get("duration", 0) - want.duration_ns / 1000) <= 1, (span.get("duration"), want)
        if want.error:
            assert tags.get("error") == want.error, (tags.get("error"), want)
        else:
            assert "error" not in tags, (tags["error"], want)
        if want.pairing != "paired":
            assert tags.get("vault_observe.pairing") == want.pairing, (tags, want)
        assert tags.get("request.id") == want.request_id
        assert span.get("localEndpoint", {}).get("serviceName") == service


def check_honeycomb(
    events: list[dict[str, Any]], expected: dict[str, Expected], dataset: str = "vault"
) -> None:
    """Exactly one Honeycomb event per expected span, with the same facts. Its
    ``trace.trace_id`` is the request id as OpenBao wrote it (with dashes)."""
    grouped = by_trace_id(events, lambda e: e["data"]["trace.trace_id"].replace("-", ""))
    assert sorted(grouped) == sorted(expected), (
        f"missing {sorted(set(expected) - set(grouped))[:5]}, unexpected {sorted(set(grouped) - set(expected))[:5]}"
    )
    for trace_id, want in expected.items():
        got = grouped[trace_id]
        assert len(got) == 1, f"{len(got)} Honeycomb events for {want.request_id}"
        event = got[0]
        data = event["data"]
        assert data["trace.trace_id"] == want.request_id
        assert event["dataset"] == dataset
        assert data["name"] == want.name, (data["name"], want)
        assert abs(data["duration_ms"] - want.duration_ns / 1e6) <= 1e-3, (data["duration_ms"], want)
        assert abs(time_ns(_utc(event["time"])) - want.start_ns) <= 1000, (event["time"], want)
        if want.error:
            assert data.get("error") == want.error, (data.get("error"), want)
        else:
            assert "error" not in data, (data["error"], want)
        assert data.get("request.id") == want.request_id


def _utc(text: str) -> str:
    """Honeycomb times may end in ``+00:00`` instead of ``Z``."""
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text
