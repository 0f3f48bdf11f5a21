"""``vault-observe --input FILE --stdout`` on real OpenBao output, checked against
expectations computed here from the file itself (stdlib json, independent of the core)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def ns_of(text: str) -> int:
    """RFC 3339 'Z' time -> unix ns, written independently of the core's parser."""
    whole, _, frac = text.rstrip("Z").partition(".")
    seconds = dt.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


def flat(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = prefix + key
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        elif value is None or value == []:
            continue
        else:
            out[name] = value
    return out


def expected_spans(path: Path) -> dict[str, dict[str, Any]]:
    """request id -> what its span must look like."""
    requests: dict[str, dict[str, Any]] = {}
    spans: dict[str, dict[str, Any]] = {}
    for line in path.read_bytes().splitlines():
        entry = json.loads(line)
        request = entry["request"]
        rid = request["id"]
        if entry["type"] == "request":
            if request.get("path") != "sys/audit/test":
                requests[rid] = entry
            continue
        operation = request.get("operation", "")
        target = request.get("mount_point") or request.get("path", "")
        start = requests.pop(rid)["time"] if rid in requests else entry["time"]
        spans[rid] = {
            "name": f"{operation} {target}".strip(),
            "duration_ns": ns_of(entry["time"]) - ns_of(start),
            "pairing": "paired" if start != entry["time"] else "orphan",
            "error": entry.get("error", ""),
            "attributes": flat(entry),
        }
    for rid, entry in requests.items():
        spans[rid] = {"pairing": "unanswered", "duration_ns": 0, "error": entry.get("error", "")}
    return spans


def replay(path: Path, *extra: str) -> tuple[list[dict[str, Any]], str]:
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--input", str(path), *extra],
        capture_output=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr.decode()


def check_replay(path: Path) -> None:
    expected = expected_spans(path)
    spans, log = replay(path, "--stdout")
    assert len(spans) == len(expected)
    by_id = {span["request_id"]: span for span in spans}
    assert by_id.keys() == expected.keys()  # exactly one span per request id
    for rid, want in expected.items():
        got = by_id[rid]
        assert got["trace_id"] == rid.replace("-", "")
        assert got["pairing"] == want["pairing"], rid
        assert got.get("error", "") == want["error"], rid
        assert ns_of(got["end"]) - ns_of(got["start"]) == want["duration_ns"], rid
        assert got["duration_ms"] == round(want["duration_ns"] / 1000) / 1000
        if "attributes" in want:
            assert got["name"] == want["name"]
            attributes = dict(got["attributes"])
            attributes.pop("vault_observe.pairing", None)
            assert attributes == want["attributes"], rid
    lines = path.read_bytes().count(b"\n")
    assert f"lines={lines} " in log
    assert "malformed=0 " in log and "truncated=0 " in log


def test_replay_of_the_bundled_sample(sample_log: Path) -> None:
    check_replay(sample_log)


def test_replay_of_the_full_shared_corpus(shared_corpus: Path) -> None:
    check_replay(shared_corpus)


def test_replay_without_sinks_prints_only_the_summary(sample_log: Path) -> None:
    spans, log = replay(sample_log)
    assert spans == []
    assert "final summary: " in log and " lines=1430 " in log and "spans=718 " in log and "unanswered=6 " in log


def test_replay_from_stdin_with_bad_lines(tmp_path: Path, sample_log: Path) -> None:
    good = sample_log.read_bytes().splitlines(keepends=True)[:40]
    data = (
        b"".join(good[:20])
        + b"not json at all\n"
        + b'["an array"]\n'
        + b"".join(good[20:])
        + b'{"time":"2026'
    )
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--input", "-", "--stdout"],
        input=data,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0
    log = result.stderr.decode()
    assert "malformed=1 " in log and "invalid=1 " in log and "truncated=1 " in log
    assert "first bytes b'not json at all'" in log
    assert len(result.stdout.splitlines()) > 0


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "vault_observe", *argv], capture_output=True, timeout=60)
    assert result.returncode == 0
    if argv == ["--version"]:
        assert result.stdout.startswith(b"vault-observe ") and b"core:" in result.stdout
    else:
        assert b"--socket-path" in result.stdout and b"--honeycomb" in result.stdout
