"""vault-observe as a process between a real OpenBao and loopback Zipkin/Honeycomb receivers.

OpenBao writes every entry to two devices: a ``file`` device (the reference) and a
``socket`` device read by vault-observe. Each device stamps its own ``time``, so the
expected durations come from the bytes the daemon received (its ``--capture`` file),
and the file log proves that nothing was lost on the way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.audit import Expected, check_honeycomb, check_zipkin, expected_spans, load
from tests.integration.harness import API_KEY, ObserveProcess
from tests.receivers import HoneycombReceiver, ZipkinReceiver
from vault_observe.demo import CORRELATION_ID, run_workload
from vault_observe.openbao import DevServer

pytestmark = pytest.mark.integration

MakeObserve = Callable[..., ObserveProcess]


@pytest.fixture
def zipkin() -> Iterator[ZipkinReceiver]:
    receiver = ZipkinReceiver()
    with receiver:
        yield receiver


@pytest.fixture
def honeycomb() -> Iterator[HoneycombReceiver]:
    receiver = HoneycombReceiver(api_key=API_KEY)
    with receiver:
        yield receiver


def daemon_args(
    socket_path: Path, capture: Path, zipkin: ZipkinReceiver, honeycomb: HoneycombReceiver
) -> list[str]:
    return [
        "--socket-path",
        str(socket_path),
        "--zipkin",
        zipkin.url,
        "--honeycomb",
        "--honeycomb-api-host",
        honeycomb.base_url,
        "--capture",
        str(capture),
        "--flush-interval",
        "0.1",
    ]


def stop_cleanly(daemon: ObserveProcess) -> None:
    """SIGTERM: the daemon exits 0 and has logged no error."""
    assert daemon.terminate() == 0, daemon.stderr()
    log = daemon.stderr()
    assert "Traceback" not in log and " ERROR " not in log, log


def final_counters(stderr: str) -> dict[str, int]:
    """The integer counters of the daemon's last summary line (logged at exit)."""
    lines = [line for line in stderr.splitlines() if "summary" in line]
    assert lines, f"no summary logged at exit:\n{stderr}"
    top_level = re.sub(r"\w+\[[^\]]*\]", "", lines[-1])  # without the per-sink "name[...]" groups
    return {key: int(value) for key, value in re.findall(r"\b(\w+)=(\d+)\b", top_level)}


def entry_keys(entries: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["request"]["id"]) for e in entries if e["request"].get("path") != "sys/audit/test"}


def extra_errors(bao: DevServer) -> None:
    """Failures the shared workload does not make."""
    with bao.client() as client:
        assert client.request("GET", "secret/data/app/config", token="not-a-token").status == 403
        assert client.request("GET", "sys/policies/acl", token=None).status in (400, 403, 405)
        # An unknown user: the error is only in the HMACed response.data, no top-level error.
        assert (
            client.request("POST", "auth/userpass/login/nobody", {"password": "x"}, token=None).status == 400
        )
        assert client.request("GET", "no-such-mount/x").status == 404
        assert client.request("POST", "sys/wrapping/unwrap", {"token": "s.not-wrapping"}).status == 400


def burst(bao: DevServer, clients: int, rounds: int) -> None:
    """``clients`` threads, each on its own connection, writing and reading at once."""
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            with bao.client() as client:
                for i in range(rounds):
                    path = f"secret/data/burst/{number}/{i}"
                    assert client.request("POST", path, {"data": {"i": i}}).status == 200
                    assert client.request("GET", path).status == 200
                    assert client.request("GET", f"secret/data/burst/missing/{i}").status == 404
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_every_entry_becomes_one_span_in_each_sink(
    bao: DevServer,
    short_tmp: Path,
    tmp_path: Path,
    observe: MakeObserve,
    zipkin: ZipkinReceiver,
    honeycomb: HoneycombReceiver,
) -> None:
    socket_path = short_tmp / "audit.sock"
    capture = tmp_path / "capture.jsonl"
    file_log = tmp_path / "file-audit.log"
    daemon = observe(daemon_args(socket_path, capture, zipkin, honeycomb)).start(socket_path)
    bao.enable_socket_audit(socket_path)
    bao.enable_file_audit(file_log)  # after the socket device: all its entries reach the socket too
    workload = run_workload(bao, clients=4, rounds=8)
    extra_errors(bao)
    burst(bao, clients=8, rounds=6)
    # Stop at once: whatever is still in the connection must be read before exiting.
    stop_cleanly(daemon)

    received = load(capture)
    reference = load(file_log)
    # Nothing lost: every entry of the file device (its test entry aside) reached the
    # daemon, which also got the two entries logged before the file device existed.
    assert entry_keys(reference) <= entry_keys(received)
    paths = {(e["type"], e["request"]["id"]): e["request"]["path"] for e in received}
    extras = entry_keys(received) - entry_keys(reference)
    assert sorted((kind, paths[kind, rid]) for kind, rid in extras) == [
        ("request", "sys/audit/file"),
        ("response", "sys/audit/socket"),
    ]

    expected = expected_spans(received)
    responses = [e for e in reference if e["type"] == "response"]
    assert len(responses) >= workload.audit_lines // 2
    for entry in responses:
        assert expected[entry["request"]["id"].replace("-", "")].error == entry.get("error", "")
    pairings = _count(expected.values())
    assert pairings["orphan"] == 1  # the socket device's own enable call
    assert pairings["unanswered"] == 2  # the two failed unwraps
    assert any(e.error for e in expected.values() if e.pairing == "paired")

    check_zipkin(zipkin.spans, expected)
    check_honeycomb(honeycomb.events, expected)
    assert zipkin.errors == [] and honeycomb.errors == []
    # The audited request header is an attribute: JSON text as a Zipkin tag, an array in Honeycomb.
    header = "request.headers.x-correlation-id"
    assert [s["tags"][header] for s in zipkin.spans if header in s["tags"]] == [f'["{CORRELATION_ID}"]']
    assert [e["data"][header] for e in honeycomb.events if header in e["data"]] == [[CORRELATION_ID]]

    counters = final_counters(daemon.stderr())
    assert counters["spans"] == len(expected)
    assert counters["lines"] == len(received)
    assert counters["bytes"] == capture.stat().st_size  # the capture holds every byte received
    for bad in ("malformed", "invalid", "truncated", "oversize", "evicted"):
        assert counters.get(bad, 0) == 0, (bad, counters)
    assert counters["connections"] == 1


def _count(spans: Iterable[Expected]) -> dict[str, int]:
    out: dict[str, int] = {"paired": 0, "orphan": 0, "unanswered": 0}
    for span in spans:
        out[span.pairing] += 1
    return out


def _kv_writes(bao: DevServer, prefix: str, n: int) -> None:
    for i in range(n):
        bao.api("POST", f"secret/data/{prefix}/{i}", {"data": {"i": i}})
        bao.api("GET", f"secret/data/{prefix}/{i}")


def test_restarted_daemon_gets_the_next_connection(
    bao: DevServer,
    short_tmp: Path,
    tmp_path: Path,
    observe: MakeObserve,
    zipkin: ZipkinReceiver,
    honeycomb: HoneycombReceiver,
) -> None:
    socket_path = short_tmp / "audit.sock"
    first_capture = tmp_path / "first.jsonl"
    second_capture = tmp_path / "second.jsonl"
    file_log = tmp_path / "file-audit.log"
    first = observe(daemon_args(socket_path, first_capture, zipkin, honeycomb)).start(socket_path)
    bao.enable_socket_audit(socket_path)
    bao.enable_file_audit(file_log)
    _kv_writes(bao, "before", 5)
    stop_cleanly(first)
    assert not socket_path.exists()  # removed at exit

    second = observe(daemon_args(socket_path, second_capture, zipkin, honeycomb)).start(socket_path)
    # OpenBao's next write fails on the closed connection; it re-dials and writes again.
    _kv_writes(bao, "after", 5)
    stop_cleanly(second)

    before, after = load(first_capture), load(second_capture)
    reference = load(file_log)
    assert entry_keys(reference) <= entry_keys(before) | entry_keys(after)
    assert not entry_keys(before) & entry_keys(after)
    # The new connection starts with the first call made after the restart, whole.
    assert after[0]["type"] == "request" and after[0]["request"]["path"] == "secret/data/after/0"
    assert all(e["request"]["path"].startswith("secret/data/after/") for e in after)

    # Each daemon pairs what it received; the two together cover everything once.
    expected = expected_spans(before)
    expected_after = expected_spans(after)
    assert not set(expected) & set(expected_after)
    expected.update(expected_after)
    assert _count(expected.values()) == {"paired": 21, "orphan": 1, "unanswered": 0}
    check_zipkin(zipkin.spans, expected)
    check_honeycomb(honeycomb.events, expected)
    for proc, lines in ((first, before), (second, after)):
        counters = final_counters(proc.stderr())
        assert counters["lines"] == len(lines)
        assert counters["connections"] == 1
        assert counters.get("truncated", 0) == 0 and counters.get("malformed", 0) == 0


def test_reenabled_device_is_a_new_connection(
    bao: DevServer,
    short_tmp: Path,
    tmp_path: Path,
    observe: MakeObserve,
    zipkin: ZipkinReceiver,
    honeycomb: HoneycombReceiver,
) -> None:
    socket_path = short_tmp / "audit.sock"
    capture = tmp_path / "capture.jsonl"
    daemon = observe(daemon_args(socket_path, capture, zipkin, honeycomb)).start(socket_path)
    bao.enable_socket_audit(socket_path)
    _kv_writes(bao, "one", 3)
    bao.disable_audit("socket")  # OpenBao closes its connection
    _kv_writes(bao, "unseen", 2)
    bao.enable_socket_audit(socket_path)  # a new connection, starting with a test entry
    _kv_writes(bao, "two", 3)
    stop_cleanly(daemon)

    received = load(capture)
    assert not any("unseen" in e["request"]["path"] for e in received)
    expected = expected_spans(received)
    # The disabling call's request went out on the first connection, its response
    # nowhere; the re-enabling call's response is the second connection's first entry.
    unanswered = [e for e in expected.values() if e.pairing == "unanswered"]
    orphans = [e for e in expected.values() if e.pairing == "orphan"]
    assert [e.name for e in unanswered] == ["delete sys/"]
    assert [e.name for e in orphans] == ["update sys/", "update sys/"]
    check_zipkin(zipkin.spans, expected)
    check_honeycomb(honeycomb.events, expected)
    counters = final_counters(daemon.stderr())
    assert counters["connections"] == 2
    assert counters["probes"] == 2
    assert counters.get("truncated", 0) == 0 and counters.get("malformed", 0) == 0
