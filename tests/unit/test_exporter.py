"""The exporter under every network sink: retry policy, Retry-After, deadlines, the
reply hooks, keep-alive and reset connections, proxies from the environment."""

from __future__ import annotations

import contextlib
import email.utils
import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.receivers import Receiver
from vault_observe.errors import ConfigError
from vault_observe.sinks.encoding.wire import JoinedBody
from vault_observe.sinks.exporter import Exporter, RetryPolicy, Verdict, parse_retry_after
from vault_observe.sinks.honeycomb import read_statuses
from vault_observe.sinks.otlp import read_partial_success
from vault_observe.sinks.tls import TlsOptions

FAST = RetryPolicy(initial=0.01, maximum=0.05, jitter=0.0)
ITEMS = [b'{"n":%d}' % i for i in range(5)]


class Echo(Receiver):
    """Keeps each body's items; answers 202 with ``answer`` (default: empty), and
    ``Retry-After: retry_after`` on failures when set."""

    answer = b""
    retry_after: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[Any] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/x"

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        with self.lock:
            self.bodies.append(json.loads(body))
        return self.answer

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:  # type: ignore[override]
        handler.send_response(status)
        if status >= 400 and self.retry_after is not None:
            handler.send_header("Retry-After", self.retry_after)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def joined(items: Sequence[bytes]) -> JoinedBody:
    return JoinedBody.join(list(items), b"[", b"]")


def exporter(url: str, **kwargs: Any) -> Exporter:
    kwargs.setdefault("retry", FAST)
    return Exporter(
        "test",
        url,
        logger=__import__("logging").getLogger("vault_observe.test"),
        content_type="application/json",
        encode=joined,
        merge=JoinedBody.concat,
        **kwargs,
    )


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# ---------------------------------------------------------------- retry policy


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried_until_accepted(status: int) -> None:
    with Echo() as rx:
        rx.fail_next, rx.fail_status = 2, status
        ex = exporter(rx.url)
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
    assert len(rx.requests) == 3 and rx.bodies == [[{"n": i} for i in range(5)]]
    assert ex.stats() | {"bytes": 0} == {
        "sent": 5,
        "failed": 0,
        "unencodable": 0,
        "retries": 2,
        "batches": 1,
        "bytes": 0,
    }


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 500, 501])
def test_other_statuses_are_final(status: int) -> None:
    with Echo() as rx:
        rx.fail_with = status
        ex = exporter(rx.url)
        assert ex.export(ITEMS, deadline(10)) == 5  # type: ignore[arg-type]
    assert len(rx.requests) == 1
    stats = ex.stats()
    assert (stats["sent"], stats["failed"], stats["retries"], stats["batches"]) == (0, 5, 0, 1)


def test_bytes_count_every_attempt_on_the_wire() -> None:
    with Echo() as rx:
        rx.fail_next = 1
        ex = exporter(rx.url, compression="gzip")
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
    assert rx.requests[0]["headers"]["Content-Encoding"] == "gzip"
    assert ex.stats()["bytes"] == sum(r["size"] for r in rx.requests)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(form: str) -> None:
    with Echo() as rx:
        rx.fail_next, rx.fail_status = 1, 503
        # an HTTP date has whole seconds: two ahead waits more than one
        rx.retry_after = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
        ex = exporter(rx.url)
        started = time.monotonic()
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
        elapsed = time.monotonic() - started
    assert elapsed >= 0.9  # the server's wait, not the policy's 10 ms
    assert len(rx.requests) == 2 and ex.stats()["retries"] == 1


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    with Echo() as rx:
        rx.fail_with, rx.retry_after = 429, "120"
        ex = exporter(rx.url)
        started = time.monotonic()
        assert ex.export(ITEMS, deadline(5)) == 5  # type: ignore[arg-type]
        assert time.monotonic() - started < 2.0
    assert len(rx.requests) == 1 and ex.stats()["retries"] == 0


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = parse_retry_after(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 28 <= later <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_backoff_grows_to_its_cap_with_jitter_within_bounds() -> None:
    policy = RetryPolicy(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.5)
    for attempt, base in enumerate([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        delays = [policy.delay(attempt) for _ in range(300)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.2  # spread out, not one value
    steady = RetryPolicy(initial=0.3, maximum=1.0, jitter=0.0)
    assert [steady.delay(n) for n in range(4)] == [0.3, 0.6, 1.0, 1.0]


def test_a_slow_receiver_is_given_up_on_at_the_deadline() -> None:
    with Echo() as rx:
        rx.delay = 3.0
        ex = exporter(rx.url, timeout=30.0)
        started = time.monotonic()
        assert ex.export(ITEMS, deadline(0.5)) == 5  # type: ignore[arg-type]
        assert time.monotonic() - started < 1.5
        ex.close()


def test_no_receiver_is_retried_until_the_deadline() -> None:
    ex = exporter(f"http://127.0.0.1:{free_port()}/")
    started = time.monotonic()
    assert ex.export(ITEMS, deadline(0.6)) == 5  # type: ignore[arg-type]
    assert time.monotonic() - started < 1.5
    assert ex.stats()["retries"] >= 2


def test_past_deadline_sends_nothing() -> None:
    with Echo() as rx:
        ex = exporter(rx.url)
        assert ex.export(ITEMS, time.monotonic() - 1) == 5  # type: ignore[arg-type]
    assert rx.requests == []


def test_close_ends_a_backoff_wait() -> None:
    ex = exporter(f"http://127.0.0.1:{free_port()}/", retry=RetryPolicy(initial=30.0, maximum=30.0))
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(ex.export(ITEMS, deadline(120))))  # type: ignore[arg-type]
    started = time.monotonic()
    worker.start()
    time.sleep(0.3)
    ex.close()
    worker.join(5)
    assert result == [5] and time.monotonic() - started < 3


# ---------------------------------------------------------------- reply hooks


def test_too_large_items_are_dropped_and_the_rest_cut_into_bodies() -> None:
    items = [b'{"n":%d}' % i for i in range(10)] + [b'{"big":"' + b"x" * 300 + b'"}']
    with Echo() as rx:
        ex = exporter(rx.url, max_bytes=100, max_items=4)
        assert ex.export(items, deadline(10)) == 1  # type: ignore[arg-type]
    assert [len(body) for body in rx.bodies] == [4, 4, 2]
    assert all(r["size"] <= 100 for r in rx.requests)
    assert ex.stats()["sent"] == 10 and ex.stats()["batches"] == 3


class PerEvent(Echo):
    """Honeycomb's batch answer: 400 for items with ``"bad"``, 503 the first time an
    item with ``"busy"`` comes, 202 for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_busy: set[int] = set()

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        items = json.loads(body)
        statuses = []
        with self.lock:
            self.bodies.append(items)
            for item in items:
                if item.get("bad"):
                    statuses.append({"status": 400, "error": "too many columns"})
                elif item.get("busy") and item["n"] not in self.seen_busy:
                    self.seen_busy.add(item["n"])
                    statuses.append({"status": 503, "error": "try again"})
                else:
                    statuses.append({"status": 202})
        return json.dumps(statuses).encode()


def test_honeycomb_per_event_statuses_refuse_some_and_retry_others(caplog: pytest.LogCaptureFixture) -> None:
    items = [b'{"n":0}', b'{"n":1,"bad":1}', b'{"n":2,"busy":1}', b'{"n":3}', b'{"n":4,"busy":1}']
    with PerEvent() as rx:
        ex = exporter(rx.url, read_reply=read_statuses)
        with caplog.at_level("WARNING", logger="vault_observe.test"):
            assert ex.export(items, deadline(10)) == 1  # type: ignore[arg-type]
    assert [[item["n"] for item in body] for body in rx.bodies] == [[0, 1, 2, 3, 4], [2, 4]]
    stats = ex.stats()
    assert (stats["sent"], stats["failed"], stats["retries"], stats["batches"]) == (4, 1, 1, 2)
    assert "event refused (400): too many columns" in caplog.text


def test_honeycomb_events_still_busy_at_the_deadline_fail() -> None:
    class Busy(Echo):
        def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
            return json.dumps([{"status": 429} for _ in json.loads(body)]).encode()

    with Busy() as rx:
        ex = exporter(rx.url, read_reply=read_statuses)
        assert ex.export(ITEMS, deadline(0.5)) == 5  # type: ignore[arg-type]
    assert ex.stats()["retries"] >= 2 and ex.stats()["sent"] == 0


def test_otlp_partial_success_is_counted() -> None:
    with Echo() as rx:
        rx.answer = b'{"partialSuccess":{"rejectedSpans":"2","errorMessage":"too many attributes"}}'
        ex = exporter(rx.url, read_reply=read_partial_success)
        assert ex.export(ITEMS, deadline(10)) == 2  # type: ignore[arg-type]
    assert len(rx.requests) == 1  # rejected spans are not sent again
    assert ex.stats()["sent"] == 3 and ex.stats()["failed"] == 2


@pytest.mark.parametrize("answer", [b"", b"{}", b'{"partialSuccess":{}}', b"<html>ok</html>"])
def test_otlp_full_success_answers(answer: bytes) -> None:
    assert read_partial_success(answer, 5) == Verdict()


# ---------------------------------------------------------------- connections


def test_posts_keep_one_connection_and_send_the_headers() -> None:
    with Echo() as rx:
        ex = exporter(rx.url, headers={"X-Key": "k"})
        for _ in range(3):
            assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
    assert len({r["client"] for r in rx.requests}) == 1
    headers = rx.requests[0]["headers"]
    assert headers["X-Key"] == "k" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("vault-observe/")
    assert rx.requests[0]["path"] == "/v1/x"


def test_a_connection_the_server_closes_is_replaced() -> None:
    class Closing(Echo):
        def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
            handler.close_connection = True
            return super().decode(handler, body)

    with Closing() as rx:
        ex = exporter(rx.url)
        assert [ex.export(ITEMS, deadline(10)) for _ in range(3)] == [0, 0, 0]  # type: ignore[arg-type]
    assert len({r["client"] for r in rx.requests}) == 3
    assert ex.stats()["retries"] == 0


class ResettingServer:
    """Answers 200 on a kept-alive connection, then resets that connection when the
    next request comes on it; a new connection is answered again."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.answered = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            for number in range(2):
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if number == 1:  # the second request on this connection: reset it
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.answered += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def test_a_reset_connection_is_retried_at_once_on_a_new_one() -> None:
    server = ResettingServer()
    try:
        ex = exporter(f"http://127.0.0.1:{server.port}/", retry=RetryPolicy(initial=30.0, maximum=30.0))
        started = time.monotonic()
        assert ex.export(ITEMS, deadline(20)) == 0  # type: ignore[arg-type]
        assert ex.export(ITEMS, deadline(20)) == 0  # type: ignore[arg-type]  # reset, then a new connection
        assert time.monotonic() - started < 5  # no 30 s backoff
    finally:
        server.close()
    assert server.answered == 2 and server.connections == 2
    assert ex.stats()["retries"] == 0


def test_a_bad_url_is_a_config_error() -> None:
    for url in ("ftp://example.com/", "http:///path", "http://127.0.0.1:99999/"):
        with pytest.raises(ConfigError):
            exporter(url)


# ---------------------------------------------------------------- proxies


def test_plain_http_goes_to_the_proxy_in_absolute_form(monkeypatch: pytest.MonkeyPatch) -> None:
    with Echo() as proxy:
        monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        target = "http://collector.invalid:9411/api/v2/spans"
        ex = exporter(target)
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
    assert proxy.requests[0]["path"] == target
    assert proxy.requests[0]["headers"]["Proxy-Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with Echo() as rx:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        ex = exporter(rx.url)
        assert ex.client.proxy is None
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]


def test_an_unknown_proxy_scheme_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError, match="proxy"):
        exporter("https://collector.invalid/")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate (and its key, in the same file) for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    pem = folder / "server.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    pem.write_bytes((folder / "cert.pem").read_bytes() + (folder / "key.pem").read_bytes())
    return pem


def server_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


class ConnectProxy:
    """A loopback CONNECT proxy (spoken to over TLS when given a context): tunnels
    each CONNECT to its target and keeps the request lines it saw."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context = context
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            stack.enter_context(conn)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            self.seen.append(line)
            method, target, _ = line.split(" ", 2)
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            upstream = stack.enter_context(socket.create_connection((host, int(port))))
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(conn, upstream)

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        while True:
            # TLS may hold decrypted bytes that select cannot see
            ready = [a] if isinstance(a, ssl.SSLSocket) and a.pending() else select.select([a, b], [], [], 10)[0]
            if not ready:
                return
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (b if sock is a else a).sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def https_receiver(certificate: Path) -> Iterator[Echo]:
    rx = Echo()
    rx.server.socket = server_context(certificate).wrap_socket(rx.server.socket, server_side=True)
    with rx:
        yield rx


@pytest.mark.parametrize("proxy_scheme", ["http", "https"])
def test_https_through_a_connect_proxy(
    proxy_scheme: str, certificate: Path, https_receiver: Echo, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ConnectProxy(server_context(certificate) if proxy_scheme == "https" else None)
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        ex = exporter(f"https://127.0.0.1:{https_receiver.port}/v1/x", tls=TlsOptions(ca_file=str(certificate)))
        assert ex.client.proxy == proxy.url
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]
        assert ex.export(ITEMS, deadline(10)) == 0  # type: ignore[arg-type]  # the same tunnel
        ex.close()
    finally:
        proxy.close()
    assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [f"CONNECT 127.0.0.1:{https_receiver.port}"]
    assert https_receiver.bodies == [[{"n": i} for i in range(5)]] * 2


def test_https_checks_the_certificate_against_the_ca_bundle(https_receiver: Echo) -> None:
    ex = exporter(f"https://127.0.0.1:{https_receiver.port}/v1/x")  # the system's CAs only
    assert ex.export(ITEMS, deadline(0.5)) == 5  # type: ignore[arg-type]
    assert https_receiver.bodies == []
