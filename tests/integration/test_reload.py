"""SIGHUP on a real daemon process under load: it keeps running and every connection
open, loses no line, applies the re-read config file in place (new sink set, filters,
log level), reopens --capture, logs what needs a restart, and keeps its running
settings when the file does not parse."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import ObserveProcess
from tests.receivers import ZipkinReceiver

pytestmark = pytest.mark.integration

MakeObserve = Callable[..., ObserveProcess]


def audit_pair(n: int) -> bytes:
    """A request entry and its response entry, as an audit device writes them."""
    request = {
        "id": f"{n:08x}-5555-4555-8555-555555555555",
        "operation": "read",
        "mount_point": "secret/",
        "path": f"secret/data/item-{n}",
    }
    when = "2026-12-03T09:00:00.000000Z"
    lines = [
        {"type": "request", "time": when, "auth": {"token_type": "service"}, "request": request},
        {"type": "response", "time": when, "request": request, "response": {"data": {"n": n}}},
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class Writer(threading.Thread):
    """One audit device connection that writes pairs until stopped, as Vault would."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sent = 0  # pairs
        self.data = bytearray()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                chunk = b"".join(audit_pair(self.sent + i) for i in range(20))
                self.sock.sendall(chunk)  # raises if the daemon closed the connection
                self.data += chunk
                self.sent += 20
                time.sleep(0.01)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        self.sock.close()

    def wait_sent(self, pairs: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while self.sent < pairs:
            assert self.error is None and time.monotonic() < end, self.error
            time.sleep(0.02)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def final_counters(stderr: str) -> dict[str, int]:
    lines = [line for line in stderr.splitlines() if "final summary" in line]
    assert lines, stderr
    top_level = re.sub(r"\w+\[[^\]]*\]", "", lines[-1])
    return {key: int(value) for key, value in re.findall(r"\b(\w+)=(\d+)\b", top_level)}


def test_sighup_reloads_in_place_under_load(observe: MakeObserve, short_tmp: Path, tmp_path: Path) -> None:
    sock = short_tmp / "audit.sock"
    conf = tmp_path / "vault-observe.toml"
    capture = tmp_path / "capture.log"
    rotated = tmp_path / "capture.log.1"
    with ZipkinReceiver() as first, ZipkinReceiver() as second:
        conf.write_text(f'zipkin = "{first.url}"\nflush-interval = 0.05\n')
        daemon = observe(["--config", str(conf), "--socket-path", str(sock), "--capture", str(capture)])
        daemon.start(sock)
        assert daemon.process is not None
        writer = Writer(sock)
        writer.start()
        try:
            writer.wait_sent(300)
            # logrotate moves the capture file away, then reloads the daemon
            capture.rename(rotated)
            conf.write_text(
                f'zipkin = "{second.url}"\nflush-interval = 0.05\nlog-level = "debug"\n'
                'exclude = ["request.path"]\nlisten = ["tcp://127.0.0.1:0"]\n'
            )
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: applied" in daemon.stderr())
            mark = writer.sent
            writer.wait_sent(mark + 300)
            # A file that does not parse: logged, and the running settings stay.
            conf.write_text("ttl = [\n")
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "the running settings stay" in daemon.stderr())
            writer.wait_sent(writer.sent + 200)
            assert daemon.process.poll() is None  # SIGHUP never ends the daemon
        finally:
            writer.stop()
        assert writer.error is None, writer.error  # the connection stayed open throughout
        total = writer.sent
        wait_for(lambda: len(first.spans) + len(second.spans) >= total)
        assert daemon.terminate() == 0, daemon.stderr()
    log = daemon.stderr()
    assert "Traceback" not in log, log
    counters = final_counters(log)
    assert counters["lines"] == 2 * total and counters["paired"] == total  # no line lost
    assert counters["connections"] == 1
    # The old sink set delivered what it held; the new one took over: every span once.
    ids = [span["tags"]["request.id"] for span in first.spans + second.spans]
    assert len(ids) == len(set(ids)) == total
    assert len(first.spans) >= 300 and len(second.spans) >= 500
    # The new filter applies to the new spans only.
    assert all("request.path" in span["tags"] for span in first.spans)
    assert all("request.path" not in span["tags"] for span in second.spans)
    # Settings that need a restart are named, and keep their running value.
    assert "SIGHUP: listeners changed" in log and "needs a restart" in log
    assert "listening on tcp://" not in log
    assert re.search(r"SIGHUP: applied .*exclude", log) and re.search(r"SIGHUP: applied .*log_level", log)
    assert " DEBUG " in log.split("SIGHUP: applied")[1]  # the new log level
    assert "not valid TOML" in log
    # --capture was reopened: the moved file and the new one hold every byte, in order.
    assert rotated.read_bytes() + capture.read_bytes() == bytes(writer.data)
    assert capture.stat().st_size > 0
