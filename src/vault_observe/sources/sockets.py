"""Listen on unix/tcp/udp sockets and read audit lines as fast as they come.

Vault waits for its audit devices: a reader that stops reading stalls every Vault
request for the device's ``write_timeout``, and a socket-only set-up fails them.
So this source accepts every connection at once, never blocks on one, and reads
each readable socket until it would block. Each stream connection has its own
LineFramer; UDP takes one entry per datagram (the core judges its length, as it does
every whole line).

Listening sockets passed by systemd (socket activation) are used instead of binding:
they outlive the daemon, so across a restart Vault's connections and datagrams wait
in the kernel for the next instance. At shutdown, a unix connection is shut for
reading first: what Vault wrote before is still read, and its next write fails at
once, so Vault dials again (into the listening socket) and writes the entry there.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import selectors
import socket
import stat
import struct
import time
from collections.abc import Iterable

from ..config import Listener
from ..errors import ConfigError, listen_error
from ..framing import FramingCounters, LineFramer
from .base import Chunk, Read, Source

log = logging.getLogger("vault_observe.sources")

RECV_BYTES = 1 << 20
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
MAX_DATAGRAMS_PER_WAKEUP = 1024


class _Connection:
    __slots__ = ("framer", "label", "sock")

    def __init__(self, sock: socket.socket, label: str, framer: LineFramer) -> None:
        self.sock = sock
        self.label = label
        self.framer = framer


def listener_of(sock: socket.socket) -> Listener:
    """What a passed socket listens on, in the terms of ``--listen``."""
    if sock.family == socket.AF_UNIX:
        if sock.type != socket.SOCK_STREAM:
            raise ConfigError("a passed unix socket must be a stream socket (ListenStream=)")
        name = sock.getsockname()
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return Listener("unix", path)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ConfigError(f"a passed socket of family {sock.family!r} cannot carry audit entries")
    host, port = sock.getsockname()[:2]
    if sock.type == socket.SOCK_DGRAM:
        return Listener("udp", host, port)
    if sock.type == socket.SOCK_STREAM:
        return Listener("tcp", host, port)
    raise ConfigError(f"a passed socket of type {sock.type!r} cannot carry audit entries")


def _same_listener(configured: Listener, passed: Listener) -> bool:
    if configured.kind != passed.kind:
        return False
    if configured.kind == "unix":
        return os.path.abspath(configured.address) == os.path.abspath(passed.address)
    if configured.port != passed.port:
        return False
    if configured.address == passed.address:
        return True
    with contextlib.suppress(OSError):
        resolved = {info[4][0] for info in socket.getaddrinfo(configured.address, configured.port)}
        return passed.address in resolved
    return False


class SocketSource(Source):
    """The socket source: all listeners of the daemon behind one selector. Its clock is
    the monotonic clock when the lines were read."""

    def __init__(
        self,
        listeners: Iterable[Listener],
        *,
        socket_mode: int = 0o600,
        max_line_bytes: int,
        counters: FramingCounters,
        passed: Iterable[tuple[socket.socket, str]] = (),
    ) -> None:
        self.listeners = list(listeners)
        # sockets from the service manager (socket activation), with their names
        self.passed = list(passed)
        self.socket_mode = socket_mode
        self.max_line_bytes = max_line_bytes
        self.counters = counters
        self.connections_accepted = 0
        self._selector = selectors.DefaultSelector()
        self._servers: list[tuple[socket.socket, Listener]] = []
        self._passed_fds: set[int] = set()  # of self._servers: owned by the service manager
        self._leftover: list[bytes] = []  # datagrams read while closing
        self._drain_timeout: float | None = None  # stopped: read what is left within it
        self._drained = False
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

    @property
    def activated(self) -> bool:
        """True when the service manager passed (and keeps) the listening sockets."""
        return bool(self._passed_fds)

    def start(self) -> None:
        """Bind the listeners (or take the passed ones)."""
        try:
            passed: list[Listener] = []
            for server, name in self.passed:
                listener = listener_of(server)
                if listener.kind != "udp" and not server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    raise ConfigError(
                        f"passed socket {listener} is not listening: use Accept=no in the .socket unit"
                    )
                self._add_server(server, listener)
                self._passed_fds.add(server.fileno())
                passed.append(listener)
                log.info(
                    "listening on %s (passed by the service manager%s)", listener, f", {name}" if name else ""
                )
            for listener in self.listeners:
                if any(_same_listener(listener, other) for other in passed):
                    continue
                try:
                    server = self._bind(listener)
                except OSError as exc:
                    if exc.errno is None:
                        raise  # a message of this module's own: it names the path
                    path = listener.address if listener.kind == "unix" else ""
                    raise listen_error(str(listener), listener.kind, listener.port, path, exc) from None
                self._add_server(server, listener)
                log.info("listening on %s", listener)
        except BaseException:
            self.close()
            raise

    def _add_server(self, server: socket.socket, listener: Listener) -> None:
        server.setblocking(False)
        kind = "udp" if listener.kind == "udp" else "listen"
        self._selector.register(server, selectors.EVENT_READ, kind)
        self._servers.append((server, listener))

    def _bind(self, listener: Listener) -> socket.socket:
        if listener.kind == "unix":
            path = listener.address
            _remove_stale_socket(path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Bound under a temporary name and renamed once listening: a client (Vault
            # dialling again, a start-up check) that finds the path never finds it
            # refusing connections (bind comes before listen).
            temporary = os.path.join(os.path.dirname(path), f".vault-observe-{os.getpid()}.sock")
            if len(os.fsencode(temporary)) > UNIX_PATH_MAX:
                temporary = path  # no room for the longer name: bind in place
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)  # left by a killed process that had our pid
            # Create the file with the right mode from the start: no window with a wider one.
            old_umask = os.umask(0o777 & ~self.socket_mode)
            try:
                server.bind(temporary)
            finally:
                os.umask(old_umask)
            try:
                os.chmod(temporary, self.socket_mode)
                server.listen(socket.SOMAXCONN)
                if temporary != path:
                    os.rename(temporary, path)
            except BaseException:
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
            self._unix_paths.append(path)
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

    def ready(self) -> str:
        return "listening on " + ", ".join(self.bound_addresses())

    def stop(self, timeout: float) -> None:
        """Stop accepting; the next ``read`` reads each connection until Vault has
        nothing more in it (within ``timeout`` seconds), the one after says it ended."""
        self._stop_accepting()
        self._drain_timeout = timeout

    def _stop_accepting(self) -> None:
        """Close the listeners and remove the unix socket files; connections stay open.

        A passed listener stays open in the service manager, with its backlog and
        queued datagrams: they are the next instance's. One of our own is emptied
        first (connections accepted, datagrams read), since closing it would lose them.
        """
        for server, listener in self._servers:
            own = server.fileno() not in self._passed_fds
            if own and listener.kind == "udp":
                self._read_datagrams(server, self._leftover, limit=None)
            elif own:
                self._accept(server)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(server)
            server.close()
        self._servers = []
        self._passed_fds = set()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._unix_paths = []

    def _drain(self, timeout: float) -> list[bytes]:
        """Read every open connection until Vault has nothing more in it, then close it.

        A unix connection is shut for reading first: the kernel then fails Vault's next
        write on it at once (EPIPE), so Vault dials again and writes that entry on a new
        connection, while everything it wrote before is still read here, up to EOF.
        TCP has no such signal (a shut-down reader still receives): a connection is read
        until it would block and then reset, and Vault's next write on it fails the same
        way; what arrives between that last read and the reset is lost. ``timeout``
        bounds the whole drain (a writer that keeps a unix connection full).
        """
        chunks = self._leftover
        self._leftover = []
        deadline = time.monotonic() + timeout
        for conn in self._connections.values():
            if conn.sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RD)
        for fd in list(self._connections):
            conn = self._connections[fd]
            unix = conn.sock.family == socket.AF_UNIX
            while True:
                if self._read_stream(conn, chunks):
                    break  # EOF: closed
                if not unix or time.monotonic() >= deadline:
                    if not unix:
                        # Unread bytes at close make the kernel reset the connection.
                        with contextlib.suppress(OSError):
                            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    elif timeout:
                        log.warning("%s: still not drained after %.1f s; closing it", conn.label, timeout)
                    self._close(fd)
                    break
                select.select([conn.sock], [], [], max(0.0, min(0.1, deadline - time.monotonic())))
        return chunks

    def close(self) -> None:
        self._stop_accepting()
        for fd in list(self._connections):
            self._close(fd)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    # -- reading

    def read(self, timeout: float) -> Read | None:
        """Wait up to ``timeout`` seconds for chunks of whole lines; once stopped, the
        rest of each connection, then ``None``."""
        if self._drain_timeout is None:
            chunks = self._poll(timeout)
        elif self._drained:
            return None
        else:
            chunks = self._drain(self._drain_timeout)
            self._drained = True
        return Read([Chunk(lines) for lines in chunks], time.monotonic_ns())

    def _poll(self, timeout: float) -> list[bytes]:
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
                    self._read_stream(conn, chunks)
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

    def _read_stream(self, conn: _Connection, chunks: list[bytes]) -> bool:
        """Read what the connection holds now; True if it ended (and was closed)."""
        fd = conn.sock.fileno()
        while True:
            try:
                data = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE):
                    log.warning("%s: read failed: %s", conn.label, exc)
                data = b""
            if not data:
                self._close(fd)
                return True
            lines = conn.framer.feed(data)
            if lines:
                chunks.append(lines)
            if len(data) < RECV_BYTES:
                return False  # drained for now; the selector says when there is more

    def _read_datagrams(
        self, server: socket.socket, chunks: list[bytes], limit: int | None = MAX_DATAGRAMS_PER_WAKEUP
    ) -> None:
        count = 0
        while limit is None or count < limit:
            count += 1
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
