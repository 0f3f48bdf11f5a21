"""Socket activation as systemd does it, for tests: the test holds the listening sockets
and passes them to each daemon it starts.

``python -m tests.activation FD[=NAME]... -- COMMAND...`` moves each inherited FD to
3, 4, ..., sets ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (its own pid,
which the command keeps through ``exec``) and execs COMMAND, the way systemd's service
manager sets up an activated service. ``spawn`` starts it with ``pass_fds``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def spawn(
    command: Sequence[str],
    sockets: Sequence[tuple[socket.socket, str]],
    *,
    env: Mapping[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``command`` with ``sockets`` passed as systemd passes them."""
    fds = [sock.fileno() for sock, _name in sockets]
    specs = [f"{sock.fileno()}={name}" for sock, name in sockets]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p
    )
    return subprocess.Popen(
        [sys.executable, "-m", "tests.activation", *specs, "--", *command],
        pass_fds=fds,
        env=child_env,
        **popen,
    )


def main(argv: list[str]) -> None:
    split = argv.index("--")
    specs, command = argv[:split], argv[split + 1 :]
    fds: list[int] = []
    names: list[str] = []
    for spec in specs:
        fd_text, _, name = spec.partition("=")
        fds.append(int(fd_text))
        names.append(name or "unknown")
    # Move them above the targets first: a source fd may be one of 3, 4, ...
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
    for fd in fds:
        os.close(fd)
    for i, fd in enumerate(moved):
        os.dup2(fd, 3 + i)  # inheritable
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_FDNAMES"] = ":".join(names)
    os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
