"""The shared POST transport: keep-alive per thread, answers, proxies from the environment."""

from __future__ import annotations

import socket
from http.server import BaseHTTPRequestHandler

import pytest

from tests.receivers import Receiver
from vault_observe.sinks.transport import TRANSIENT_ERRORS, Transport


class Echo(Receiver):
    """Answers 202 with the request's path; ``close_after`` asks the client to close."""

    close_after = False

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        if self.close_after:
            handler.close_connection = True
        return handler.path.encode()

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:  # type: ignore[override]
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Retry-After", "7")
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_post_returns_status_headers_and_body_and_keeps_the_connection() -> None:
    with Echo() as rx:
        transport = Transport(f"{rx.base_url}/1/batch/a%20b?x=1", {"X-Key": "k"})
        first = transport.post(b"[]", 5.0)
        local = transport._local.conn.sock.getsockname()
        second = transport.post(b"[1]", 5.0, {"Content-Type": "application/json"})
        assert transport._local.conn.sock.getsockname() == local
    assert (first.status, first.body) == (202, b"/1/batch/a%20b?x=1")
    assert first.headers["retry-after"] == "7"  # case-insensitive
    assert second.status == 202
    assert [r["size"] for r in rx.requests] == [2, 3]
    assert rx.requests[0]["headers"]["X-Key"] == "k"
    assert rx.requests[0]["headers"]["User-Agent"].startswith("vault-observe/")
    assert rx.requests[1]["headers"]["Content-Type"] == "application/json"


def test_a_connection_the_server_closes_is_replaced() -> None:
    with Echo() as rx:
        rx.close_after = True
        transport = Transport(rx.base_url)
        assert [transport.post(b"x", 5.0).status for _ in range(3)] == [202, 202, 202]
        assert getattr(transport._local, "conn", None) is None  # dropped after each answer


def test_no_answer_raises_a_transient_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(TRANSIENT_ERRORS):
            Transport(f"http://127.0.0.1:{port}/").post(b"x", 2.0)


@pytest.mark.parametrize("url", ["ftp://example.com/", "http:///path", "127.0.0.1:9411"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(ValueError):
        Transport(url)


def test_plain_http_goes_to_the_proxy_in_absolute_form(monkeypatch: pytest.MonkeyPatch) -> None:
    with Echo() as proxy:
        monkeypatch.setenv("http_proxy", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        target = "http://collector.invalid:9411/api/v2/spans"
        transport = Transport(target)
        assert transport.via_proxy == f"127.0.0.1:{proxy.port}"
        answer = transport.post(b"{}", 5.0)
    assert answer.status == 202 and answer.body == target.encode()
    assert proxy.requests[0]["headers"]["Proxy-Authorization"] == "Basic dXNlcjpwQHNz"  # user:p@ss


def test_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with Echo() as rx:
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        transport = Transport(rx.base_url)
        assert transport.via_proxy is None
        assert transport.post(b"x", 5.0).status == 202
