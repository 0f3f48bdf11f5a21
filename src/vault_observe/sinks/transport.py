"""POSTs to one HTTP(S) URL over kept-alive ``http.client`` connections.

Shared by the native sinks. Each calling thread has its own connection, so a sink
with two senders posts twice at once. ``http.client`` rather than ``requests``:
a sender thread gives the GIL back to the reader after every call into the
socket, and it needs it back to go on. The fewer Python calls a POST makes, the
less it holds up the reader, and the sooner it gets going again.

Proxies come from the environment as ``requests`` (and so libhoney) reads them:
``https_proxy``/``http_proxy``/``all_proxy`` (either case), with ``no_proxy``.
An https URL goes through the proxy with CONNECT; an http URL is sent to the
proxy in absolute form.

``http.client`` (with ``ssl`` and ``email``) is imported by the first POST, on a
sender thread: the reader starts reading that much sooner.
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .. import __version__

if TYPE_CHECKING:
    import http.client
    from email.message import Message

USER_AGENT = f"vault-observe/{__version__}"


class ProtocolError(Exception):
    """The answer was not HTTP or ended early (``http.client.HTTPException``)."""


# Errors after which the same request may well succeed (OSError covers refused
# and reset connections, timeouts and TLS errors).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, ProtocolError)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes


class Transport:
    """POST to ``url``; ``post`` raises one of ``TRANSIENT_ERRORS`` when no answer came."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._proxy = _proxy_for(url)
        self._proxy_headers: dict[str, str] = {}
        if self._proxy is not None and self._proxy[2]:
            self._proxy_headers["Proxy-Authorization"] = self._proxy[2]
        if self._proxy is not None and not self._https:
            # A plain-HTTP request to a proxy names the whole URL.
            self._path = url
            self.headers.update(self._proxy_headers)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[http.client.HTTPConnection] = set()  # every thread's, for close()

    @property
    def via_proxy(self) -> str | None:
        """The proxy's host:port, when one is used."""
        return None if self._proxy is None else f"{self._proxy[0]}:{self._proxy[1]}"

    def post(self, body: bytes, timeout: float, headers: Mapping[str, str] | None = None) -> Response:
        import http.client

        for fresh_retry in (False, True):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None and conn.sock is not None
            if conn is None:
                conn = self._local.conn = self._connection(timeout)
                with self._lock:
                    self._open.add(conn)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(
                    "POST", self._path, body=body, headers={**self.headers, **headers} if headers else self.headers
                )
                response = conn.getresponse()
                content = response.read()
            except (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine) as exc:
                self._drop(conn)
                if reused and not fresh_retry:
                    continue  # the server dropped an idle kept-alive connection: once more at once
                if isinstance(exc, http.client.HTTPException):
                    raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc
                raise
            except http.client.HTTPException as exc:
                self._drop(conn)
                raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc
            except BaseException:
                self._drop(conn)
                raise
            if response.will_close:
                self._drop(conn)
            return Response(response.status, response.msg, content)
        raise AssertionError("unreachable")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        import http.client

        host, port = (self._proxy[0], self._proxy[1]) if self._proxy else (self._host, self._port)
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout)
            if self._proxy is not None:
                conn.set_tunnel(self._host, self._port, headers=self._proxy_headers)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        """Close this thread's connection; its next post opens a new one."""
        self._local.conn = None
        with self._lock:
            self._open.discard(conn)
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._open = self._open, set()
        for conn in conns:
            conn.close()


def _proxy_for(url: str) -> tuple[str, int, str] | None:
    """(host, port, Proxy-Authorization value or "") of the proxy the environment
    names for ``url``, or None."""
    if not any(name.lower().endswith("_proxy") for name in os.environ):
        return None  # the common case, without importing urllib.request
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    p = urlsplit(proxy)
    if p.scheme != "http" or not p.hostname:
        raise ValueError(f"unsupported proxy {p.scheme}://{p.hostname}: only http:// proxies are")
    auth = ""
    if p.username is not None:
        token = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        auth = "Basic " + base64.b64encode(token).decode("ascii")
    return p.hostname, p.port or 8080, auth
