"""Exceptions of vault-observe (stdlib only)."""

from __future__ import annotations

_NO_VALUE = object()


class VaultObserveError(Exception):
    """Base class for the daemon's own errors."""


class LeftToPython(Exception):
    """A compiled encoder cannot write this batch as its Python twin would (a lone
    surrogate, a number beyond 64 bits, JSON that is not canonical...): the Python
    encoder writes it, and only its exceptions mean that a span cannot be encoded."""


class ConfigError(VaultObserveError, ValueError):
    """A flag, variable or config file value that cannot be used: the one error type of
    every setting check, the sinks' included (a ValueError too, for callers that
    constructed sinks before there was one type).

    ``setting`` names the setting: a Config field (``zipkin``, written ``--zipkin``) or
    an environment variable (``OTEL_EXPORTER_OTLP_HEADERS``, all capitals). The
    command line rewrites it into the user's own spelling (the config file's key, the
    variable) with ``located``. ``value`` is echoed in the message unless it is left
    out (a header or a key may be a credential).
    """

    def __init__(self, reason: str, *, setting: str | None = None, value: object = _NO_VALUE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.setting = setting
        self.value = value

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def located(self, where: str) -> str:
        """The message with ``where`` (how the user wrote the setting) in front."""
        if self.has_value:
            return f"{where} {self.value!r}: {self.reason}"
        return f"{where}: {self.reason}"

    def __str__(self) -> str:
        if self.setting is None:
            return self.reason
        label = self.setting if self.setting.isupper() else "--" + self.setting.replace("_", "-")
        return self.located(label)


class StartError(VaultObserveError, OSError):
    """The daemon could not start: a socket, file or port it needs. The message names
    the path or address and, where it is plain, what to do."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message


def listen_error(listener: str, kind: str, port: int, path: str, exc: OSError) -> StartError:
    """Why binding ``listener`` failed, and the obvious remedy.

    ``kind`` is unix, tcp or udp; ``path`` the unix socket's path ("" otherwise).
    """
    import errno as errnos
    import os

    code = exc.errno
    reason = exc.strerror or str(exc)
    advice = ""
    if kind == "unix":
        folder = os.path.dirname(os.path.abspath(path))
        if code == errnos.ENOENT:
            advice = (
                f"the folder {folder} does not exist; create it (owned by the user vault-observe runs as)"
            )
        elif code in (errnos.EACCES, errnos.EPERM, errnos.EROFS):
            advice = (
                f"this user cannot create files in {folder}; run vault-observe as a user that can "
                "(such as the Vault user), or pick a folder it owns; --socket-mode 0660 then lets "
                "the socket's group connect"
            )
        elif code == errnos.EADDRINUSE:
            advice = "stop that process or pick another --socket-path"
    elif code == errnos.EADDRINUSE:
        advice = f"another process is listening on port {port} (see: ss -lntup); stop it or pick another port"
    elif code in (errnos.EACCES, errnos.EPERM):
        advice = (
            "ports below 1024 need root or CAP_NET_BIND_SERVICE; pick a port above 1023"
            if port < 1024
            else "permission denied"
        )
    elif code == errnos.EADDRNOTAVAIL:
        advice = "no interface of this host has that address; use 127.0.0.1 or one of this host's addresses"
    message = f"cannot listen on {listener}: {reason}"
    return StartError(f"{message}: {advice}" if advice else message, code)


def file_error(setting: str, path: str, exc: OSError) -> StartError:
    """An OSError of a file the daemon opens, naming the setting and the path."""
    import errno as errnos
    import os

    reason = exc.strerror or str(exc)
    advice = ""
    if exc.errno == errnos.ENOENT:
        folder = os.path.dirname(os.path.abspath(path))
        advice = "" if os.path.isdir(folder) else f"; the folder {folder} does not exist, create it"
    elif exc.errno in (errnos.EACCES, errnos.EPERM):
        advice = "; run vault-observe as a user that may open it, or pick another path"
    return StartError(f"{setting} {path}: {reason}{advice}", exc.errno)
