"""Exceptions of vault-observe (stdlib only)."""

from __future__ import annotations

_NO_VALUE = object()


class VaultObserveError(Exception):
    """Base class for the daemon's own errors."""


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
