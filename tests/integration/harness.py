"""Processes and readers for the integration tests: the daemon as a child process, and a
minimal unix-socket reader that stands in for it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.implementations import PACKAGE_PATH

REPO = Path(__file__).resolve().parents[2]
API_KEY = "integration-key"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class ObserveProcess:
    """``python -m vault_observe ...`` as a child process; always ends it at teardown."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": PACKAGE_PATH, "HONEYCOMB_API_KEY": API_KEY, **(env or {})}
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
