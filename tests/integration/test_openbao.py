"""The dev-server controller and the demo workload against a real OpenBao, without the daemon.

A minimal socket reader stands in for vault-observe here, so these tests check what
the daemon tests rely on: the controller starts and stops a server cleanly, audit
devices can be enabled through the API, and the workload produces exactly the audit
lines it claims (the same entries on a socket device and on a file device).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from tests.integration.audit import expected_spans
from tests.integration.harness import SocketCollector, read_jsonl
from vault_observe.core import Core
from vault_observe.demo import CORRELATION_ID, run_workload
from vault_observe.model import PAIRING_NAMES
from vault_observe.openbao import BaoError, DevServer, find_bao

pytestmark = pytest.mark.integration


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_start_use_stop(bao_binary: str) -> None:
    server = DevServer(bao_binary)
    workdir = server.workdir
    with server:
        assert server.running
        assert _port_in_use(server.port)
        health = server.request("GET", "sys/health", token=None).json()
        assert health["initialized"] is True and health["sealed"] is False
        server.api("POST", "secret/data/x", {"data": {"a": "b"}})
        assert server.api("GET", "secret/data/x").json()["data"]["data"] == {"a": "b"}
        assert server.request("GET", "secret/data/x", token="bogus").status == 403
        with pytest.raises(BaoError, match="404"):
            server.api("GET", "secret/data/nope")
        server.audit_request_header("X-Tenant", hmac=True)
        headers = server.api("GET", "sys/config/auditing/request-headers").json()["data"]["headers"]
        assert headers == {"x-tenant": {"hmac": True}}
    assert not server.running
    assert server.process is not None and server.process.returncode is not None
    assert not _port_in_use(server.port)
    assert not workdir.exists()  # its own temporary directory is removed
    assert server.stop() == server.process.returncode  # idempotent


def test_failed_start_leaves_no_process(tmp_path: Path) -> None:
    fake = tmp_path / "bao"
    fake.write_text("#!/bin/sh\necho 'pretend failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = DevServer(str(fake))
    with pytest.raises(BaoError, match="pretend failure"):
        server.start(timeout=10)
    assert server.process is not None and server.process.poll() == 3


def test_find_bao_prefers_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bao_binary: str
) -> None:
    monkeypatch.setenv("VAULT_OBSERVE_BAO", bao_binary)
    assert find_bao() == bao_binary
    not_executable = tmp_path / "bao"
    not_executable.write_text("")
    monkeypatch.setenv("VAULT_OBSERVE_BAO", str(not_executable))
    assert find_bao() is None
    monkeypatch.delenv("VAULT_OBSERVE_BAO")
    assert find_bao() is not None


def test_workload_lines_match_a_file_device(bao: DevServer, short_tmp: Path) -> None:
    socket_path = short_tmp / "a.sock"
    file_path = bao.workdir / "audit.log"
    with SocketCollector(socket_path) as collector:
        bao.enable_socket_audit(socket_path)
        bao.enable_file_audit(file_path)
        workload = run_workload(bao, clients=3, rounds=3)
        # The socket device saw: its test entry, its enable call's response, and the
        # file device's enable call (request and response), then the workload.
        expected = workload.audit_lines + 4
        deadline = time.monotonic() + 10
        while len(collector.lines()) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        socket_entries = [json.loads(line) for line in collector.lines()]
    file_entries = read_jsonl(file_path)

    assert len(collector.connections) == 1
    assert len(socket_entries) == expected
    assert len(file_entries) == workload.audit_lines + 2  # its test entry, its enable response

    def keys(entries: list[dict[str, object]]) -> list[tuple[str, str]]:
        out = []
        for entry in entries:
            request = entry["request"]
            assert isinstance(request, dict)
            if request.get("path") in ("sys/audit/test", "sys/audit/file", "sys/audit/socket"):
                continue
            out.append((str(entry["type"]), str(request["id"])))
        return out

    assert sorted(keys(socket_entries)) == sorted(keys(file_entries))
    assert len(keys(file_entries)) == workload.audit_lines
    with_header = [e for e in file_entries if "headers" in e["request"]]
    assert [(e["type"], e["request"]["headers"]) for e in with_header] == [
        ("request", {"x-correlation-id": [CORRELATION_ID]}),
        ("response", {"x-correlation-id": [CORRELATION_ID]}),
    ]
    statuses = workload.statuses
    assert statuses[403] == 2 and statuses[404] == 2 and statuses[400] == 2
    answered = {e["request"]["id"] for e in file_entries if e["type"] == "response"}
    unanswered = [
        e
        for e in file_entries
        if e["type"] == "request"
        and e["request"]["id"] not in answered
        and e["request"]["path"] != "sys/audit/test"
    ]
    assert [(e["request"]["path"], e["error"]) for e in unanswered] == [
        ("sys/wrapping/unwrap", "wrapping token is not valid or does not exist")
    ]
    assert sum(1 for c in workload.calls if c.client) == 3 * 3 * 3
    assert os.path.getsize(file_path) > 0


def test_core_on_live_output(bao: DevServer, short_tmp: Path) -> None:
    """The correlating core, fed a live socket stream, gives the spans worked out by hand."""
    socket_path = short_tmp / "a.sock"
    with SocketCollector(socket_path) as collector:
        bao.enable_socket_audit(socket_path)
        workload = run_workload(bao, clients=4, rounds=4)
        expected_lines = workload.audit_lines + 2
        deadline = time.monotonic() + 10
        while len(collector.lines()) < expected_lines and time.monotonic() < deadline:
            time.sleep(0.02)
        stream = b"".join(bytes(buffer) for buffer in collector.connections)
    expected = expected_spans([json.loads(line) for line in stream.splitlines()])
    assert sorted(e.pairing for e in expected.values()).count("orphan") == 1
    assert [e.name for e in expected.values() if e.pairing == "unanswered"] == ["update sys/"]

    core = Core(ttl_s=60)
    core.feed(stream)
    core.flush()
    spans = {span.trace_id.hex(): span for span in core.drain()}
    assert sorted(spans) == sorted(expected)
    for trace_id, want in expected.items():
        span = spans[trace_id]
        assert (span.name, span.error, span.start_ns, span.duration_ns, PAIRING_NAMES[span.pairing]) == (
            want.name,
            want.error,
            want.start_ns,
            want.duration_ns,
            want.pairing,
        )
        assert span.attributes()["request.id"] == want.request_id
