"""Listen on unix/tcp/udp sockets and read audit lines as fast as they come.

Vault waits for its audit devices: a reader that stops reading stalls every Vault
request for the device's ``write_timeout``, and a socket-only set-up fails them.
So this source accepts every connection at once, never blocks on one, and reads
each readable socket until it would block. Each stream connection has its own
LineFramer; UDP takes one entry per datagram.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
from collections.abc import Iterable

from ..config import Listener
from ..framing import FramingCounters, LineFramer

log = logging.getLogger("vault_observe.sources")

RECV_BYTES = 1 << 20
MAX_DATAGRAMS_PER_WAKEUP = 1024


class _Connection:
    __slots__ = ("framer", "label", "sock")

    def __init__(self, sock: socket.socket, label: str, framer: LineFramer) -> None:
        self.sock = sock
        self.label = label
        self.framer = framer


class SocketSource:
    """All listeners of the daemon behind one selector."""

    def __init__(
        self,
        listeners: Iterable[Listener],
        *,
        socket_mode: int = 0o600,
        max_line_bytes: int,
        counters: FramingCounters,
    ) -> None:
        self.listeners = list(listeners)
        self.socket_mode = socket_mode
        self.max_line_bytes = max_line_bytes
        self.counters = counters
        self.connections_accepted = 0
        self._selector = selectors.DefaultSelector()
        self._servers: list[tuple[socket.socket, Listener]] = []
        self._connections: dict[int, _Connection] = {}
        self._unix_paths: list[str] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def bound_addresses(self) -> list[str]:
        """Where each listener ended up (tcp/udp port 0 picks a free port)."""
        out = []
        for server, listener in self._servers:
            if listener.kind == "unix":
                out.append(f"unix://{listener.address}")
            else:
                host, port = server.getsockname()[:2]
                out.append(f"{listener.kind}://{host}:{port}")
        return out

    # -- set-up and tear-down

    def open(self) -> None:
        try:
            for listener in self.listeners:
                server = self._bind(listener)
                server.setblocking(False)
                kind = "udp" if listener.kind == "udp" else "listen"
                self._selector.register(server, selectors.EVENT_READ, kind)
                self._servers.append((server, listener))
                log.info("listening on %s", listener)
        except BaseException:
            self.close()
            raise

    def _bind(self, listener: Listener) -> socket.socket:
        if listener.kind == "unix":
            path = listener.address
            _remove_stale_socket(path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Create the file with the right mode from the start: no window with a wider one.
            old_umask = os.umask(0o777 & ~self.socket_mode)
            try:
                server.bind(path)
            finally:
                os.umask(old_umask)
            os.chmod(path, self.socket_mode)
            self._unix_paths.append(path)
            server.listen(socket.SOMAXCONN)
            return server
        family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
        if listener.kind == "tcp":
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((listener.address, listener.port))
            server.listen(socket.SOMAXCONN)
            return server
        server = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        server.bind((listener.address, listener.port))
        return server

    def wake(self) -> None:
        """Interrupt a ``poll`` in progress (from a signal handler or another thread)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop_accepting(self) -> None:
        """Close the listeners and remove the unix socket files; connections stay open."""
        for server, _listener in self._servers:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(server)
            server.close()
        self._servers = []
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths = []

    def drain(self) -> list[bytes]:
        """Read what every open connection holds right now, then close them all."""
        chunks: list[bytes] = []
        for fd in list(self._connections):
            conn = self._connections[fd]
            self._read_stream(conn, chunks, until_eof=False)
            self._close(fd)
        return chunks

    def close(self) -> None:
        self.stop_accepting()
        for fd in list(self._connections):
            self._close(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    # -- the loop's one call

    def poll(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` seconds; return chunks of whole lines read."""
        chunks: list[bytes] = []
        for key, _mask in self._selector.select(timeout):
            what = key.data
            if what == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif what == "listen":
                self._accept(key.fileobj)  # type: ignore[arg-type]
            elif what == "udp":
                self._read_datagrams(key.fileobj, chunks)  # type: ignore[arg-type]
            else:
                conn = self._connections.get(key.fd)
                if conn is not None:
                    self._read_stream(conn, chunks, until_eof=True)
        return chunks

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, peer = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: say so and keep serving the others.
                log.error("cannot accept a connection: %s", exc)
                return
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self.connections_accepted += 1
            label = f"conn {self.connections_accepted} ({peer or 'unix'})"
            conn = _Connection(sock, label, LineFramer(self.max_line_bytes, self.counters))
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, "conn")
            log.debug("%s: accepted", label)

    def _read_stream(self, conn: _Connection, chunks: list[bytes], until_eof: bool) -> None:
        fd = conn.sock.fileno()
        while True:
            try:
                data = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE):
                    log.warning("%s: read failed: %s", conn.label, exc)
                data = b""
            if not data:
                if until_eof:
                    self._close(fd)
                return
            lines = conn.framer.feed(data)
            if lines:
                chunks.append(lines)
            if len(data) < RECV_BYTES:
                return  # drained for now; the selector says when there is more

    def _read_datagrams(self, server: socket.socket, chunks: list[bytes]) -> None:
        for _ in range(MAX_DATAGRAMS_PER_WAKEUP):
            try:
                data = server.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("udp read failed: %s", exc)
                return
            self.counters.bytes += len(data)
            if not data:
                continue
            if len(data) > self.max_line_bytes + 1:
                self.counters.oversize += 1
                continue
            chunks.append(data if data.endswith(b"\n") else data + b"\n")

    def _close(self, fd: int) -> None:
        conn = self._connections.pop(fd, None)
        if conn is None:
            return
        conn.framer.close()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        log.debug("%s: closed", conn.label)


def _remove_stale_socket(path: str) -> None:
    """Replace a socket file left by a previous run; refuse to remove anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")
