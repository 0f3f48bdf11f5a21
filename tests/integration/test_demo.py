"""``vault-observe demo``: a dev server, the daemon in-process, the spans on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.implementations import PACKAGE_PATH
from tests.receivers import ZipkinReceiver

pytestmark = pytest.mark.integration


def test_demo_prints_spans_and_sends_to_the_given_sinks(bao_binary: str) -> None:
    env = {**os.environ, "PYTHONPATH": PACKAGE_PATH, "VAULT_OBSERVE_BAO": bao_binary}
    zipkin = ZipkinReceiver()
    with zipkin:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "vault_observe", "demo", "--zipkin", zipkin.url],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=90,
        )
        seconds = time.monotonic() - started
        stderr = done.stderr.decode(errors="replace")
        assert done.returncode == 0, stderr
        assert seconds < 60, seconds
        spans = [json.loads(line) for line in done.stdout.splitlines()]
        assert zipkin.errors == []
        zipkin_ids = sorted(s["traceId"] for s in zipkin.spans)

    assert len(spans) > 50
    assert zipkin_ids == sorted(s["trace_id"] for s in spans)  # the same spans in both sinks
    names = {s["name"] for s in spans}
    assert {"create secret/", "read secret/", "create kv1/", "read kv1/", "update auth/token/"} <= names
    assert "update auth/userpass/" in names
    pairings = [s["pairing"] for s in spans]
    assert pairings.count("orphan") == 1  # the device's enable call
    assert pairings.count("unanswered") == 1  # the second unwrap of a wrapping token
    errors = [s["error"] for s in spans if s.get("error")]
    assert any("permission denied" in e for e in errors)
    assert "invalid credentials" in errors
    assert "wrapping token is not valid or does not exist" in errors
    assert all(s["duration_ms"] >= 0 for s in spans)
    assert any(s["duration_ms"] > 0 for s in spans)
    assert "vault-observe demo: OpenBao" in stderr
    assert "error:" not in stderr.split("vault-observe demo: OpenBao", 1)[1]
    # The summary ends with a table of the spans by name: count, errors, p50/p99.
    table = stderr.split("spans by name", 1)[1].splitlines()[1:]
    assert table[0].split() == ["span", "count", "errors", "p50", "ms", "p99", "ms"]
    rows = {}
    for line in table[2:-2]:
        name, count, errors_, p50, p99 = line.strip().rsplit(None, 4)
        rows[name] = (int(count), int(errors_), p50, p99)
    total = table[-1].split()
    assert total[:4] == ["all", "spans", str(len(spans)), str(len(errors))]
    for name in names:
        of_name = [s for s in spans if s["name"] == name]
        count, errors_, p50, p99 = rows[name]
        assert (count, errors_) == (len(of_name), sum(1 for s in of_name if s.get("error")))
        if any(s["pairing"] == "paired" for s in of_name):
            assert float(p50) <= float(p99)
    assert stderr.rstrip().endswith(table[-1].rstrip())  # the table is the last thing printed
