"""What an operator meets at the daemon's edges: start-up failures that name the path or
address and say what to do, a replay's exit status, the warning of a daemon without sink."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.implementations import PACKAGE_PATH
from tests.receivers import ZipkinReceiver
from vault_observe.cli import main
from vault_observe.config import Config, Listener
from vault_observe.errors import listen_error
from vault_observe.pipeline import Daemon

SAMPLE_SPANS = 718  # spans of tests/data/openbao-sample.jsonl


def run_cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": PACKAGE_PATH}
    return subprocess.run(
        [sys.executable, "-m", "vault_observe", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------- replay exit status


def test_replay_exits_1_when_spans_were_not_delivered(sample_log: Path) -> None:
    with ZipkinReceiver() as receiver:
        receiver.fail_with = 503  # down for the whole replay
        result = run_cli(
            "--input",
            str(sample_log),
            "--zipkin",
            receiver.url,
            "--retry-window",
            "0.3",
            "--batch-size",
            "100",
        )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        f"replay incomplete: {SAMPLE_SPANS} spans not delivered (zipkin: {SAMPLE_SPANS} failed, 0 dropped)"
        in last
    )


def test_replay_exits_0_when_every_span_was_delivered(sample_log: Path) -> None:
    with ZipkinReceiver() as receiver:
        result = run_cli("--input", str(sample_log), "--zipkin", receiver.url)
        assert len(receiver.spans) == SAMPLE_SPANS
    assert result.returncode == 0, result.stderr
    assert "replay incomplete" not in result.stderr


def test_replay_counts_spans_dropped_at_shutdown(sample_log: Path) -> None:
    """A sink that hangs: the shutdown timeout drops what is queued, and the replay fails."""
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    hold.listen(1)  # accepts connections (the kernel does) but never answers
    try:
        port = hold.getsockname()[1]
        result = run_cli(
            "--input",
            str(sample_log),
            "--zipkin",
            f"http://127.0.0.1:{port}/api/v2/spans",
            "--shutdown-timeout",
            "0.5",
            "--send-timeout",
            "30",
        )
    finally:
        hold.close()
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "replay incomplete:" in last and "zipkin:" in last and "dropped" in last


# ---------------------------------------------------------------- start-up failures


def test_socket_in_a_missing_folder_names_the_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "missing" / "a.sock"
    with caplog.at_level(logging.ERROR, logger="vault_observe"):
        assert main(["--socket-path", str(path)]) == 1
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert f"cannot listen on unix://{path}" in message
    assert f"the folder {path.parent} does not exist; create it" in message


def test_port_in_use_names_the_address(caplog: pytest.LogCaptureFixture) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        with caplog.at_level(logging.ERROR, logger="vault_observe"):
            assert main(["--listen", f"tcp://127.0.0.1:{port}"]) == 1
    finally:
        busy.close()
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert f"cannot listen on tcp://127.0.0.1:{port}" in message
    assert "pick another port" in message


def test_missing_input_and_capture_folder_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="vault_observe"):
        assert main(["--input", str(tmp_path / "absent.log")]) == 1
        (tmp_path / "in.log").write_bytes(b"")
        assert main(["--input", str(tmp_path / "in.log"), "--capture", str(tmp_path / "no" / "c.log")]) == 1
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages[0] == f"--input {tmp_path / 'absent.log'}: No such file or directory"
    assert messages[1].startswith(f"--capture {tmp_path / 'no' / 'c.log'}: No such file or directory")
    assert f"the folder {tmp_path / 'no'} does not exist" in messages[1]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any folder: no permission error to get")
def test_unwritable_socket_folder_says_what_to_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with caplog.at_level(logging.ERROR, logger="vault_observe"):
        assert main(["--socket-path", str(folder / "a.sock")]) == 1
    message = caplog.records[-1].getMessage()
    assert f"cannot listen on unix://{folder / 'a.sock'}" in message and "--socket-mode" in message


@pytest.mark.parametrize(
    ("kind", "port", "code", "advice"),
    [
        ("unix", 0, errno.EACCES, "run vault-observe as a user that can (such as the Vault user)"),
        ("tcp", 80, errno.EACCES, "ports below 1024 need root or CAP_NET_BIND_SERVICE"),
        ("tcp", 9090, errno.EADDRNOTAVAIL, "no interface of this host has that address"),
        ("udp", 9090, errno.EADDRINUSE, "another process is listening on port 9090"),
    ],
)
def test_listen_errors_give_the_remedy(kind: str, port: int, code: int, advice: str) -> None:
    """The messages of the failures this machine cannot produce for real (root here)."""
    where = "unix:///run/vault/a.sock" if kind == "unix" else f"{kind}://10.9.9.9:{port}"
    error = listen_error(where, kind, port, "/run/vault/a.sock", OSError(code, os.strerror(code)))
    assert str(error).startswith(f"cannot listen on {where}: {os.strerror(code)}: ")
    assert advice in str(error) and error.errno == code


# ---------------------------------------------------------------- no sink


@pytest.mark.parametrize("with_sink", [False, True])
def test_socket_daemon_without_a_sink_warns_once(
    short_socket: Path, caplog: pytest.LogCaptureFixture, with_sink: bool
) -> None:
    config = Config(
        listeners=[Listener("unix", str(short_socket))], stdout=with_sink, metrics_address="127.0.0.1:0"
    )
    daemon = Daemon(config)
    with caplog.at_level(logging.WARNING, logger="vault_observe"):
        daemon.start()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(short_socket))
            client.sendall(b'{"type":"request","time":"2026-01-01T00:00:00Z","request":{"id":"a"}}\n' * 3)
        daemon.stop()
    warnings = [r.getMessage() for r in caplog.records if "no sink" in r.getMessage()]
    assert warnings == (
        []
        if with_sink
        else [
            "no sink is configured (--stdout, --zipkin, --honeycomb, --otlp): spans are counted and discarded"
        ]
    )
