"""``HOST:PORT`` settings, read the same way by the settings and the metrics server."""

from __future__ import annotations

from .errors import ConfigError


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6; an empty host means every interface) -> (host, port).

    Port 0 asks the system for a free port.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError("expected HOST:PORT, such as 127.0.0.1:9464", setting="metrics_address", value=text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(
            "write an IPv6 address in brackets, [::1]:9464", setting="metrics_address", value=text
        )
    return host, int(port_text)
