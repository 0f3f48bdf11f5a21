"""The systemd protocols: readiness datagrams on NOTIFY_SOCKET and passed sockets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests import activation
from vault_observe import sd_notify


def test_notify_sends_the_state_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(5)
        assert sd_notify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_address() -> None:
    name = f"vault-observe-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        assert sd_notify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(4096) == b"STOPPING=1"


def test_notify_without_a_manager_or_with_a_bad_address_does_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not sd_notify.notify("READY=1", {})
    assert not sd_notify.notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})
    # Nobody listens there: logged, never raised (the daemon goes on).
    assert not sd_notify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert "cannot notify the service manager (READY=1)" in caplog.text


def test_listen_fds_ignores_sockets_meant_for_another_process() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "audit"}
    assert sd_notify.listen_fds(env) == []
    assert env == {}  # unset: children must not take them either
    assert sd_notify.listen_fds({}) == []
    assert sd_notify.listen_fds({"LISTEN_FDS": "x", "LISTEN_PID": "1"}) == []


PROBE = """
import json, socket
from vault_observe import sd_notify
import os
out = []
for sock, name in sd_notify.listen_fds():
    out.append([sock.fileno(), name, sock.family == socket.AF_UNIX, sock.type == socket.SOCK_DGRAM,
                os.get_inheritable(sock.fileno())])
print(json.dumps([out, "LISTEN_FDS" in os.environ]))
"""


def test_listen_fds_takes_the_passed_sockets_in_order_with_their_names(tmp_path: Path) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(tmp_path / "s"))
    stream.listen()
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram.bind(("127.0.0.1", 0))
    with stream, dgram:
        child = activation.spawn(
            [sys.executable, "-c", PROBE], [(stream, "audit"), (dgram, "udp")], stdout=subprocess.PIPE
        )
        out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    fds, still_set = json.loads(out)
    assert fds == [[3, "audit", True, False, False], [4, "udp", False, True, False]]
    assert not still_set
