"""Exceptions of vault-observe (stdlib only)."""

from __future__ import annotations


class VaultObserveError(Exception):
    """Base class for the daemon's own errors."""


class ConfigError(VaultObserveError):
    """A flag, variable or config file value that cannot be used."""


class SinkError(VaultObserveError):
    """A sink could not be set up."""
