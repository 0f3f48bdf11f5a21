"""Log formats and progress: text with UTC RFC 3339 times, JSON objects with the
summary's counters as fields, progress figures in every mode, and a progress bar only
for a person at a terminal."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.implementations import PACKAGE_PATH
from vault_observe.config import Config, Listener
from vault_observe.logs import SUMMARY_FIELDS
from vault_observe.pipeline import Daemon

TEXT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def replay(sample: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault_observe", "--input", str(sample), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": PACKAGE_PATH, **(env or {})},
    )


def test_text_log_has_utc_rfc3339_times(sample_log: Path) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    # A zone far from UTC: the times must not follow it.
    result = replay(sample_log, env={"TZ": "America/Los_Angeles"})
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, line
        when = dt.datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert before <= when <= after


@pytest.mark.parametrize("how", ["flag", "env"])
def test_json_log_is_one_object_per_line_with_the_counters(sample_log: Path, how: str) -> None:
    if how == "flag":
        result = replay(sample_log, "--log-format", "json", "--summary-interval", "0.000001")
    else:
        result = replay(
            sample_log, "--summary-interval", "0.000001", env={"VAULT_OBSERVE_LOG_FORMAT": "json"}
        )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    for record in records:
        assert {"time", "level", "logger", "msg"} <= set(record)
        assert record["level"] in ("debug", "info", "warning", "error")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    final = records[-1]
    assert final["msg"] == "final summary"
    assert final["lines"] == 1430 and final["spans"] == 718 and final["unanswered"] == 6
    assert final["bytes"] == sample_log.stat().st_size and final["read_fraction"] == 1.0
    assert final["lines_per_second"] > 0 and final["mb_per_second"] > 0
    # progress on the way, every --summary-interval
    progress = [r for r in records if r["msg"] == "summary"]
    assert progress and all(0 < r["read_fraction"] <= 1 and r["lines"] <= 1430 for r in progress)


def _summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, SUMMARY_FIELDS) for r in caplog.records if r.getMessage().startswith("summary: ")]


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_progress_in_socket_and_follow_modes(
    sample_log: Path, short_socket: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = sample_log.read_bytes()
    caplog.set_level(logging.INFO, logger="vault_observe")
    # sockets
    daemon = Daemon(Config(listeners=[Listener("unix", str(short_socket))], summary_interval=0.05))
    daemon.start()
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(short_socket))
            client.sendall(data)
        wait_for(lambda: any(s["lines"] == 1430 for s in _summaries(caplog)))
    finally:
        daemon.stop()
    rates = [s for s in _summaries(caplog) if s["lines"] == 1430]
    assert "lines_per_second" in rates[0] and "mb_per_second" in rates[0]
    caplog.clear()
    # a followed file: the share read too
    path = tmp_path / "audit.log"
    path.write_bytes(data)
    daemon = Daemon(Config(input=str(path), follow=True, summary_interval=0.05))
    daemon.start()
    try:
        wait_for(lambda: any(s.get("read_fraction") == 1.0 for s in _summaries(caplog)))
    finally:
        daemon.stop()
    assert any(s["lines"] == 1430 for s in _summaries(caplog))


def _replay_on_a_terminal(sample: Path, *flags: str) -> str:
    """Replay with stderr on a pseudo-terminal; what the terminal showed."""
    master, slave = pty.openpty()
    # a terminal of 24 rows and 100 columns (a new pseudo-terminal has none)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    output = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            output.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vault_observe", "--input", str(sample), *flags],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            timeout=120,
            env={**os.environ, "PYTHONPATH": PACKAGE_PATH},
        )
    finally:
        os.close(slave)
    reader.join(10)
    os.close(master)
    assert result.returncode == 0
    return output.decode(errors="replace")


def test_progress_bar_only_on_a_terminal_with_text_logs(sample_log: Path) -> None:
    bar = re.compile(r"\d+%\|.*\| [\d.]+[kMG]?/[\d.]+[kMG]")
    shown = _replay_on_a_terminal(sample_log)
    assert bar.search(shown), shown
    assert "final summary" in shown
    # JSON logs on a terminal: no bar, every line still JSON
    shown = _replay_on_a_terminal(sample_log, "--log-format", "json")
    assert not bar.search(shown)
    assert all(json.loads(line) for line in shown.splitlines() if line.strip())
    # not a terminal: no bar
    result = replay(sample_log)
    assert not bar.search(result.stderr) and "\r" not in result.stderr
