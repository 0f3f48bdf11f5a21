"""Operations features against a real OpenBao: trace context from an audited
``traceparent`` header, and following the file device's log across rotation."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.receivers import ZipkinReceiver
from tests.sinks import CollectingSink
from vault_observe.config import Config, Listener
from vault_observe.openbao import DevServer
from vault_observe.pipeline import Daemon
from vault_observe.sinks.zipkin import ZipkinSink

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_audited_traceparent_puts_vault_spans_into_the_callers_trace(bao: DevServer, short_tmp: Path) -> None:
    bao.audit_request_header("traceparent", hmac=False)
    socket_path = short_tmp / "audit.sock"
    with ZipkinReceiver() as receiver:
        config = Config(listeners=[Listener("unix", str(socket_path))], flush_interval=0.05)
        daemon = Daemon(config, [ZipkinSink(receiver.url)])
        daemon.start()
        try:
            bao.enable_socket_audit(socket_path)
            bao.api(
                "POST",
                "secret/data/traced",
                {"data": {"k": "v"}},
                headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
            )
            untraced = bao.api("GET", "secret/data/traced")
            assert untraced.ok
            wait_for(lambda: any(s["name"] == "read secret/" for s in receiver.spans))
        finally:
            daemon.stop()
    traced = [s for s in receiver.spans if s["name"] == "create secret/" or s["name"] == "update secret/"]
    assert len(traced) == 1
    span = traced[0]
    assert span["traceId"] == TRACE and span["parentId"] == PARENT
    request_id = span["tags"]["request.id"]
    assert span["id"] != PARENT and len(request_id) == 36  # the request id stays an attribute
    [read] = [s for s in receiver.spans if s["name"] == "read secret/"]
    assert read["traceId"] == read["tags"]["request.id"].replace("-", "") and "parentId" not in read


def test_hmac_audited_traceparent_is_ignored(bao: DevServer, short_tmp: Path) -> None:
    bao.audit_request_header("traceparent", hmac=True)
    socket_path = short_tmp / "audit.sock"
    sink = CollectingSink()
    daemon = Daemon(Config(listeners=[Listener("unix", str(socket_path))], flush_interval=0.05), [sink])
    daemon.start()
    try:
        bao.enable_socket_audit(socket_path)
        bao.api("GET", "secret/config", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        wait_for(lambda: any(s.name == "read secret/" for s in sink.spans))
    finally:
        daemon.stop()
    [span] = [s for s in sink.spans if s.name == "read secret/"]
    assert span.parent_span_id == 0
    assert span.attributes()["request.headers.traceparent"][0].startswith("hmac-sha256:")


def test_follow_the_file_device_across_rotation_and_restart(bao: DevServer, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    checkpoint = tmp_path / "audit.checkpoint"
    bao.enable_file_audit(log)

    def writes(start: int, count: int) -> None:
        for i in range(start, start + count):
            bao.api("POST", f"secret/data/follow/{i}", {"data": {"i": i}})

    def follower(sink: CollectingSink) -> Daemon:
        config = Config(input=str(log), follow=True, checkpoint=str(checkpoint), flush_interval=0.05)
        daemon = Daemon(config, [sink])
        daemon.start()
        return daemon

    def paths(sink: CollectingSink) -> list[str]:
        return sorted(
            s.attributes().get("request.path", "")
            for s in sink.spans
            if s.name in ("create secret/", "update secret/")
        )

    first = CollectingSink()
    daemon = follower(first)
    writes(0, 10)
    wait_for(lambda: len(paths(first)) == 10)
    # logrotate's way: rename, then SIGHUP makes OpenBao reopen its file
    log.rename(tmp_path / "audit.log.1")
    writes(10, 5)  # still written to the renamed file
    assert bao.process is not None
    os.kill(bao.process.pid, signal.SIGHUP)
    wait_for(log.exists)
    writes(15, 5)  # in the new file
    wait_for(lambda: len(paths(first)) == 20)
    daemon.stop()
    assert paths(first) == sorted(f"secret/data/follow/{i}" for i in range(20))
    assert daemon.follower is not None and daemon.follower.rotations == 1
    assert all(s.pairing == 0 for s in first.spans if s.name != "update sys/")

    writes(20, 5)  # while the daemon is down
    second = CollectingSink()
    daemon = follower(second)
    wait_for(lambda: len(paths(second)) == 5)
    time.sleep(0.5)
    daemon.stop()
    assert paths(second) == sorted(f"secret/data/follow/{i}" for i in range(20, 25))
