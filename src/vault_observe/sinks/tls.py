"""TLS settings of a network sink: the CA bundle it trusts and its client certificate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TlsOptions:
    """Where a sink's HTTPS connections find their trust and identity.

    ``ca_file``: a PEM bundle of the CAs to trust instead of the system's.
    ``cert_file``/``key_file``: the client certificate and its key (mutual TLS); the key
    may be in the certificate's file.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a urllib3 pool manager (``PoolManager``/``ProxyManager``)."""
        kwargs: dict[str, Any] = {}
        if self.ca_file:
            kwargs["ca_certs"] = self.ca_file
        if self.cert_file:
            kwargs["cert_file"] = self.cert_file
        if self.key_file:
            kwargs["key_file"] = self.key_file
        return kwargs
