"""The two systemd protocols the daemon speaks: readiness notification and socket activation.

``notify`` sends a state (``READY=1``, ``STOPPING=1``) as one datagram to
``$NOTIFY_SOCKET`` (a path, or an abstract-namespace address written with a leading
``@``), as sd_notify(3) does. ``listen_fds`` takes the sockets systemd passed
(``LISTEN_FDS``, ``LISTEN_PID``, ``LISTEN_FDNAMES``; sd_listen_fds(3)): fds 3, 4, ...
Both are no-ops outside systemd. Standard library only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

# ``socket`` is imported where a socket is made: outside systemd neither function makes
# one, and a replay without a network sink would pay ~3 ms of start-up for the import.

log = logging.getLogger("vault_observe")

LISTEN_FDS_START = 3


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` to the service manager; False when there is none or it failed.

    A failure is logged, never raised: a missed notification must not stop the daemon
    (systemd then reports a start timeout, which names the cause).
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address[0] == "@":
        target = "\0" + address[1:]  # abstract namespace
    elif address[0] == "/":
        target = address
    else:
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract address; not notifying", address)
        return False
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(target)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("cannot notify the service manager (%s): %s", state.split("\n", 1)[0], exc)
        return False
    return True


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[tuple[socket.socket, str]]:
    """The sockets passed by systemd, each with its name (``LISTEN_FDNAMES``, else "").

    Only when ``LISTEN_PID`` is this process: the variables may have been inherited
    from a parent that was the one activated. With ``unset`` the variables are removed
    so children of the daemon do not take the sockets for theirs.
    """
    env = os.environ if environ is None else environ
    count_text = env.get("LISTEN_FDS", "")
    pid_text = env.get("LISTEN_PID", "")
    names_text = env.get("LISTEN_FDNAMES", "")
    if unset:
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(key, None)
    if not count_text:
        return []
    try:
        count = int(count_text)
        pid = int(pid_text)
    except ValueError:
        log.warning("ignoring LISTEN_FDS=%r LISTEN_PID=%r: not numbers", count_text, pid_text)
        return []
    if pid != os.getpid():
        log.info("LISTEN_PID=%d is not this process (%d): no sockets passed", pid, os.getpid())
        return []
    import socket

    names = names_text.split(":") if names_text else []
    out: list[tuple[socket.socket, str]] = []
    for i in range(max(0, count)):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)  # family and type read from the fd
        except OSError as exc:
            log.error("passed fd %d is not a usable socket: %s", fd, exc)
            for sock, _name in out:
                sock.detach()
            raise
        out.append((sock, names[i] if i < len(names) else ""))
    return out
