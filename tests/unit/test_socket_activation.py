"""Sockets passed by systemd, and a shutdown that leaves nothing Vault wrote unread."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import activation
from vault_observe.config import Listener
from vault_observe.errors import ConfigError
from vault_observe.framing import FramingCounters
from vault_observe.sources.sockets import SocketSource

REPO = Path(__file__).resolve().parents[2]
LINE = b'{"time":"2026-01-01T00:00:00Z","type":"request","request":{"id":"%06d"}}\n'


def source_for(listeners: list[Listener], passed: list[tuple[socket.socket, str]] = []) -> SocketSource:  # noqa: B006
    return SocketSource(listeners, max_line_bytes=1 << 20, counters=FramingCounters(), passed=passed)


def read_lines(source: SocketSource, want: int, timeout: float = 20.0) -> list[bytes]:
    lines: list[bytes] = []
    end = time.monotonic() + timeout
    while len(lines) < want and time.monotonic() < end:
        read = source.read(0.05)
        assert read is not None
        for chunk in read.chunks:
            lines.extend(bytes(chunk.lines).splitlines())
    return lines


def drained(source: SocketSource, timeout: float = 0.0) -> list[bytes]:
    """Stop the source and return what it still read: each chunk, then the end."""
    source.stop(timeout)
    read = source.read(0.0)
    assert read is not None and source.read(0.0) is None
    return [bytes(chunk.lines) for chunk in read.chunks]


def held_unix(path: Path) -> socket.socket:
    """A listening socket as systemd holds it for a .socket unit."""
    held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    held.bind(str(path))
    held.listen(128)
    return held


def test_a_passed_listener_is_used_and_outlives_the_daemon(tmp_path: Path) -> None:
    path = tmp_path / "audit.sock"
    with held_unix(path) as held:
        # The configured path is the passed socket's: it is not bound again (that
        # would fail: someone listens there).
        source = source_for([Listener("unix", str(path))], [(held.dup(), "audit")])
        source.start()
        assert source.activated and source.bound_addresses() == [f"unix://{path}"]
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(LINE % 1)
            assert read_lines(source, 1) == [(LINE % 1).rstrip()]
            drained(source, 5.0)
        source.close()
        assert path.exists(), "the service manager's socket file was removed"
        # Between two instances, a new connection and its entries wait in the backlog.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            client.sendall(LINE % 2)
            nxt = source_for([], [(held.dup(), "audit")])
            nxt.start()
            try:
                assert read_lines(nxt, 1) == [(LINE % 2).rstrip()]
            finally:
                nxt.close()


def test_a_passed_udp_socket_keeps_unread_datagrams_for_the_next_instance() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as client:
        held.bind(("127.0.0.1", 0))
        address = held.getsockname()
        source = source_for([], [(held.dup(), "udp")])
        source.start()
        assert source.bound_addresses() == [f"udp://127.0.0.1:{address[1]}"]
        client.sendto(LINE % 1, address)
        assert read_lines(source, 1) == [(LINE % 1).rstrip()]
        client.sendto(LINE % 2, address)
        time.sleep(0.1)
        assert drained(source) == []
        source.close()
        held.settimeout(5)
        assert held.recv(65536) == LINE % 2


def test_own_udp_socket_is_emptied_before_it_is_closed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        source = source_for([Listener("udp", "127.0.0.1", 0)])
        source.start()
        host, port = source.bound_addresses()[0].removeprefix("udp://").rsplit(":", 1)
        for i in range(50):
            client.sendto(LINE % i, (host, int(port)))
        time.sleep(0.2)
        lines = [line for chunk in drained(source) for line in chunk.splitlines()]
        source.close()
    assert len(lines) == 50


def test_a_passed_socket_that_does_not_listen_is_refused(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unbound, unbound.dup() as passed:
        unbound.bind(str(tmp_path / "x.sock"))
        source = source_for([], [(passed, "x")])
        with pytest.raises(ConfigError, match="Accept=no"):
            source.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram, dgram.dup() as passed:
        source = source_for([], [(passed, "x")])
        with pytest.raises(ConfigError, match="ListenStream"):
            source.start()


WRITER = """
import socket, sys
line = LINE
sent = 0
with socket.socket(socket.AF_UNIX) as client:
    client.connect(sys.argv[1])
    try:
        while True:
            client.sendall(line % sent)
            sent += 1
    except OSError as exc:
        print(sent, type(exc).__name__)
""".replace("LINE", repr(LINE))


def test_shutdown_reads_a_unix_connection_until_the_writer_is_refused(tmp_path: Path) -> None:
    """Every line whose write succeeded is read: none is in the kernel at close.

    A writer that never pauses, as Vault under load: the reader is shut for reading, so
    the writer's next write fails (Vault's cue to dial again) instead of landing in a
    buffer about to be closed.
    """
    path = tmp_path / "audit.sock"
    source = source_for([Listener("unix", str(path))])
    source.start()
    # In another process, so it writes while this one reads (no shared GIL).
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        lines = read_lines(source, 2000)
        for chunk in drained(source, 10.0):
            lines.extend(chunk.splitlines())
        out, _ = writer.communicate(timeout=60)
    finally:
        writer.kill()
        source.close()
    sent_text, error = out.split()
    sent = int(sent_text)
    assert error == "BrokenPipeError"
    assert len(lines) == sent, f"{sent - len(lines)} lines written successfully were never read"
    assert lines == [(LINE % i).rstrip() for i in range(sent)]


def test_shutdown_resets_a_tcp_connection_so_the_writer_dials_again() -> None:
    source = source_for([Listener("tcp", "127.0.0.1", 0)])
    source.start()
    host, port = source.bound_addresses()[0].removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as client:
        for i in range(10):
            client.sendall(LINE % i)
        lines = read_lines(source, 10)
        client.sendall(LINE % 10)
        time.sleep(0.1)
        lines += [line for chunk in drained(source, 5.0) for line in chunk.splitlines()]
        source.close()
        assert len(lines) == 11
        with pytest.raises(OSError):
            for _ in range(10):  # the first write after a reset may still be accepted locally
                client.sendall(LINE % 11)
                time.sleep(0.05)


def test_the_unix_socket_file_of_an_own_listener_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "audit.sock"
    source = source_for([Listener("unix", str(path))])
    source.start()
    assert path.exists()
    source.stop(0.0)
    source.close()
    assert not os.path.exists(path)


def test_a_configured_tcp_listener_matches_a_passed_socket_by_its_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # "localhost" resolves to the passed socket's address: not bound a second time
        source = source_for([Listener("tcp", "localhost", port)], [(held.dup(), "tcp")])
        source.start()
        try:
            assert source.bound_addresses() == [f"tcp://127.0.0.1:{port}"]
        finally:
            source.close()


def test_the_daemon_serves_the_passed_socket_and_no_default_one(tmp_path: Path) -> None:
    """``vault-observe`` with nothing but a socket from systemd: READY=1, spans, STOPPING=1."""
    path = tmp_path / "held.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    lines = b"".join(
        b'{"time":"2026-01-01T00:00:0%dZ","type":"%s","auth":{},"request":{"id":"id-%d","operation":"read","path":"kv/x"}}\n'
        % (i % 10, kind, i)
        for i in range(20)
        for kind in (b"request", b"response")
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "PYTHONPATH": str(REPO / "src")}
    with held_unix(path) as held, notify:
        daemon = activation.spawn(
            [sys.executable, "-m", "vault_observe", "--stdout", "--flush-interval", "0.05"],
            [(held, "audit")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert notify.recv(4096) == f"READY=1\nSTATUS=listening on unix://{path}".encode()
            assert not (tmp_path / "observe.sock").exists()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                client.sendall(lines)
                time.sleep(0.5)
                daemon.terminate()
                out, err = daemon.communicate(timeout=60)
            assert notify.recv(4096) == b"STOPPING=1"
        finally:
            daemon.kill()
    assert daemon.returncode == 0, err.decode()
    assert b"passed by the service manager, audit" in err
    assert sorted(json.loads(line)["request_id"] for line in out.splitlines()) == sorted(
        f"id-{i}" for i in range(20)
    )


def test_the_socket_path_appears_only_once_it_accepts_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client finding the path (Vault dialling again after a restart) is never refused."""
    path = tmp_path / "audit.sock"
    seen_at_listen: list[bool] = []
    listen = socket.socket.listen

    def watch(self: socket.socket, *args: int) -> None:
        seen_at_listen.append(path.exists())
        listen(self, *args)

    monkeypatch.setattr(socket.socket, "listen", watch)
    source = source_for([Listener("unix", str(path))])
    source.start()
    try:
        assert seen_at_listen == [False]
        assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["audit.sock"]
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        source.close()
