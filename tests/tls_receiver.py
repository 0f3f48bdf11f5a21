"""TLS for the loopback receivers: certificates made on the spot, receivers that serve
HTTPS and require a client certificate, and an https proxy that tunnels (CONNECT).

``Pki`` makes a CA, a server certificate for 127.0.0.1 and localhost, and a client
certificate, and writes them as PEM files a sink's settings can name. ``serve_tls``
turns a ``receivers.Receiver`` into an HTTPS one; a handshake it refuses (no client
certificate, an unknown CA) is kept in ``handshake_errors`` instead of a traceback.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from socketserver import BaseRequestHandler, ThreadingTCPServer
from typing import Any, Self, TypeVar

import trustme

from .receivers import Receiver

AnyReceiver = TypeVar("AnyReceiver", bound=Receiver)


@dataclass
class Pki:
    """PEM files under ``folder``: ``ca`` (the CA bundle), ``client_cert`` and
    ``client_key`` (apart), ``client_combined`` (certificate and key in one file), and
    ``other_ca``, a CA that signed nothing here."""

    authority: trustme.CA
    server: trustme.LeafCert
    ca: Path
    client_cert: Path
    client_key: Path
    client_combined: Path
    other_ca: Path

    @classmethod
    def make(cls, folder: Path) -> Pki:
        authority = trustme.CA()
        server = authority.issue_cert("127.0.0.1", "localhost")
        client = authority.issue_cert("vault-observe.client.test")
        paths = {
            "ca": folder / "ca.pem",
            "client_cert": folder / "client.crt",
            "client_key": folder / "client.key",
            "client_combined": folder / "client-with-key.pem",
            "other_ca": folder / "other-ca.pem",
        }
        authority.cert_pem.write_to_path(str(paths["ca"]))
        client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
        client.private_key_pem.write_to_path(str(paths["client_key"]))
        client.private_key_and_cert_chain_pem.write_to_path(str(paths["client_combined"]))
        trustme.CA().cert_pem.write_to_path(str(paths["other_ca"]))
        return cls(authority, server, **paths)

    def server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self.authority.configure_trust(context)
        return context


def serve_tls(receiver: AnyReceiver, context: ssl.SSLContext) -> AnyReceiver:
    """``receiver`` answering HTTPS with ``context`` (call before entering it). The
    handshake runs in the connection's own thread, so a client that stalls in it holds
    up no other."""
    server = receiver.server
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    receiver.scheme = "https"

    def handle_error(request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        with receiver.lock:
            receiver.handshake_errors.append(f"{type(exc).__name__}: {exc}")

    server.handle_error = handle_error  # type: ignore[method-assign]
    return receiver


class TlsConnectProxy:
    """An https proxy on 127.0.0.1: TLS to the proxy, then ``CONNECT host:port`` opens
    a tunnel (to loopback addresses only) through which the client speaks to the
    target, TLS inside TLS. ``tunnels`` lists the ``host:port`` of each CONNECT."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.tunnels: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseRequestHandler):
            def handle(self) -> None:
                proxy._tunnel(self.request)

        self.server = ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _tunnel(self, client: ssl.SSLSocket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > 65536:
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in ("127.0.0.1", "localhost"):
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        with self.lock:
            self.tunnels.append(target)
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            _pump(client, upstream)


def _pump(client: ssl.SSLSocket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    while True:
        # bytes already decrypted and buffered in the TLS layer are not seen by select
        readable = [client] if client.pending() else select.select([client, upstream], [], [], 30)[0]
        if not readable:
            return
        try:
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
        except OSError:
            return
