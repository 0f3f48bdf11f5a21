"""Daemon restarts under load behind a real OpenBao socket device: what is lost, with and
without socket activation.

OpenBao writes to a file device (the ground truth) and a unix socket device. A few
clients send kv writes and reads at a paced rate; the daemon (``--stdout``) is stopped
with SIGTERM and started again, twice. Every response in the file device's log must
appear as exactly one span (paired or orphan) in the daemons' outputs.

- activated: the scenario holds the listening socket, as systemd does for
  ``vault-observe.socket``, and passes it to each daemon it starts (LISTEN_FDS=1,
  LISTEN_PID the daemon's own pid); readiness is READY=1 on a NOTIFY_SOCKET.
- own socket: each daemon binds (and at exit removes) the socket itself.

``python -m tests.integration.socket_restarts [--seconds-between 10] [--rate 500] [--tcp]``
prints the figures of both modes (the README's table); the integration test runs the
activated mode, shorter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests import activation
from tests.implementations import PACKAGE_PATH
from vault_observe.openbao import DevServer

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    mode: str
    requests_sent: int = 0
    client_errors: int = 0
    seconds: float = 0.0
    responses: int = 0  # in the file device's log
    missing: int = 0  # responses without a span
    duplicated: int = 0  # responses with more than one span
    dial_errors: int = 0  # OpenBao's log: the socket device could not write
    exit_codes: list[int] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests_sent / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.mode}: {self.requests_sent} requests in {self.seconds:.1f} s ({self.rate:.0f}/s), "
            f"{self.client_errors} client errors; {self.responses} responses in the file device's log, "
            f"{self.missing} without a span, {self.duplicated} with two or more; "
            f"{self.dial_errors} socket-device errors in OpenBao's log; exits {self.exit_codes}"
        )


class Load:
    """``clients`` threads, each with its own connection, paced to ``rate`` requests/s in all."""

    def __init__(self, bao: DevServer, clients: int, rate: float) -> None:
        self.bao = bao
        self.clients = clients
        self.interval = clients / rate
        self.sent = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.seconds = time.monotonic() - self.started

    def _run(self, index: int) -> None:
        client = self.bao.client()
        next_at = time.monotonic()
        n = 0
        try:
            while not self._stop.is_set():
                if n % 2 == 0:
                    response = client.request("POST", f"secret/data/load/{index}", {"data": {"n": n}})
                else:
                    response = client.request("GET", f"secret/data/load/{index}")
                with self._lock:
                    self.sent += 1
                    if not response.ok:
                        self.errors += 1
                n += 1
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
        except OSError:
            with self._lock:
                self.errors += 1
        finally:
            client.close()


class Notifications:
    """A NOTIFY_SOCKET (abstract address) that collects what the daemons send."""

    def __init__(self) -> None:
        self.address = f"@vault-observe-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.received: list[str] = []

    def wait_for(self, state: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.received.append(message)
            if state in message.split("\n"):
                return
        raise AssertionError(f"no {state} within {timeout} s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


class Daemons:
    """Starts and stops one daemon at a time; each writes its spans to its own file."""

    def __init__(self, workdir: Path, socket_path: Path, activated: bool, tcp: bool = False) -> None:
        self.workdir = workdir
        self.socket_path = socket_path
        self.activated = activated
        self.notify = Notifications()
        self.held: socket.socket | None = None
        self.tcp_port = 0
        if tcp:
            with socket.socket() as probe:  # a port that each daemon can bind in turn
                probe.bind(("127.0.0.1", 0))
                self.tcp_port = probe.getsockname()[1]
        if activated:
            if tcp:
                self.held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.held.bind(("127.0.0.1", self.tcp_port))
            else:
                self.held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.held.bind(str(socket_path))
            self.held.listen(socket.SOMAXCONN)
        self.process: subprocess.Popen[bytes] | None = None
        self.outputs: list[Path] = []
        self.exit_codes: list[int] = []
        self._files: list[IO[bytes]] = []

    def start(self) -> None:
        n = len(self.outputs)
        out_path = self.workdir / f"spans-{n}.jsonl"
        self.outputs.append(out_path)
        out = open(out_path, "wb")  # noqa: SIM115 - closed in close()
        err = open(self.workdir / f"daemon-{n}.err", "wb")  # noqa: SIM115
        self._files += [out, err]
        where = (
            ["--listen", f"tcp://127.0.0.1:{self.tcp_port}"]
            if self.tcp_port
            else ["--socket-path", str(self.socket_path)]
        )
        command = [
            sys.executable, "-m", "vault_observe", *where,
            "--stdout", "--flush-interval", "0.1", "--summary-interval", "3600",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": PACKAGE_PATH, "NOTIFY_SOCKET": self.notify.address}
        if self.activated:
            assert self.held is not None
            self.process = activation.spawn(
                command, [(self.held, "audit")], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        else:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.notify.wait_for("READY=1")

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.exit_codes.append(self.process.wait(60))
        self.notify.wait_for("STOPPING=1", 5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def stderr(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.workdir.glob("daemon-*.err"))
        )

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for fh in self._files:
            fh.close()
        self.notify.close()
        if self.held is not None:
            self.held.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def spans(self) -> list[dict[str, Any]]:
        out = []
        for path in self.outputs:
            out += [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        return out


def run(
    bao_binary: str,
    workdir: Path,
    *,
    activated: bool,
    seconds_between: float,
    rate: float,
    clients: int = 4,
    tcp: bool = False,
) -> Outcome:
    outcome = Outcome(("tcp, " if tcp else "unix, ") + ("socket activation" if activated else "own socket"))
    socket_dir = Path(tempfile.mkdtemp(prefix="vo-", dir="/tmp"))  # unix socket paths are short
    socket_path = socket_dir / "audit.sock"
    daemons = Daemons(workdir, socket_path, activated, tcp)
    bao = DevServer(bao_binary, workdir=workdir / "bao")
    try:
        daemons.start()
        bao.start()
        if tcp:
            bao.enable_audit("observe", "socket", {"address": f"127.0.0.1:{daemons.tcp_port}"})
        else:
            bao.enable_socket_audit(socket_path, "observe")
        audit_log = workdir / "audit.log"
        bao.enable_file_audit(audit_log)
        with Load(bao, clients, rate) as load:
            for _ in range(2):
                time.sleep(seconds_between)
                daemons.restart()
            time.sleep(seconds_between)
        outcome.requests_sent, outcome.client_errors, outcome.seconds = load.sent, load.errors, load.seconds
        time.sleep(1.0)  # the last entries reach the device
        daemons.stop()
        outcome.exit_codes = daemons.exit_codes
        outcome.notifications = daemons.notify.received
        entries = [json.loads(line) for line in audit_log.read_bytes().splitlines() if line.strip()]
        responses = [entry["request"]["id"] for entry in entries if entry["type"] == "response"]
        outcome.responses = len(responses)
        seen: dict[str, int] = {}
        for span in daemons.spans():
            if span.get("pairing") != "unanswered":
                seen[span["request_id"]] = seen.get(span["request_id"], 0) + 1
        outcome.missing = sum(1 for rid in responses if rid not in seen)
        outcome.duplicated = sum(1 for rid in responses if seen.get(rid, 0) > 1)
        outcome.dial_errors = bao.log_text().count("backend=observe/")
        return outcome
    finally:
        bao.stop()
        daemons.close()
        with contextlib.suppress(OSError):
            socket_dir.rmdir()


def main() -> None:
    from vault_observe.openbao import find_bao

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds-between", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tcp", action="store_true", help="a tcp socket device instead of unix")
    args = parser.parse_args()
    binary = find_bao()
    assert binary, "no bao binary"
    for _ in range(args.runs):
        for activated in (False, True):
            with tempfile.TemporaryDirectory(prefix="vo-restarts-") as tmp:
                outcome = run(
                    binary, Path(tmp), activated=activated, seconds_between=args.seconds_between,
                    rate=args.rate, clients=args.clients, tcp=args.tcp,
                )  # fmt: skip
            print(outcome.line(), flush=True)


if __name__ == "__main__":
    main()
