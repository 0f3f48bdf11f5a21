"""Build the sinks a Config asks for."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import Config
from ..errors import ConfigError
from .base import Sink
from .tls import TlsOptions

DEFAULT_TIMEOUT = 10.0


def build_checked_sinks(config: Config, environ: Mapping[str, str] | None = None) -> list[Sink]:
    """The sinks ``config`` asks for; a setting they refuse is a ConfigError that names
    it as the user wrote it. ``--check-config``, start-up and a reload come through here."""
    try:
        return build_sinks(config, environ)
    except ConfigError as exc:
        raise ConfigError(config.explain(exc)) from None


def tls_options(config: Config, sink: str) -> TlsOptions:
    """The TLS files ``config`` gives the sink named ``sink`` (zipkin, honeycomb, otlp)."""
    settings = {
        "ca_file": f"{sink}_ca_file",
        "cert_file": f"{sink}_client_cert",
        "key_file": f"{sink}_client_key",
    }
    files = {name: getattr(config, setting) for name, setting in settings.items()}
    return TlsOptions(**files, settings=settings)


def build_sinks(config: Config, environ: Mapping[str, str] | None = None) -> list[Sink]:
    env = os.environ if environ is None else environ
    sinks: list[Sink] = []
    if config.stdout:
        from .stdout import StdoutSink

        sinks.append(StdoutSink())
    if config.zipkin:
        from .zipkin import make_zipkin_sink

        zipkin_tls = tls_options(config, "zipkin")
        zipkin_tls.check()
        sinks.append(make_zipkin_sink(config, zipkin_tls))
    if config.honeycomb:
        from .honeycomb import HoneycombSink

        honeycomb_tls = tls_options(config, "honeycomb")
        honeycomb_tls.check()
        sinks.append(
            HoneycombSink(
                config.honeycomb_api_key,
                dataset=config.honeycomb_dataset,
                api_host=config.honeycomb_api_host,
                service_name=config.service_name,
                timeout=config.send_timeout or DEFAULT_TIMEOUT,
                encoder=config.honeycomb_encoder,
                compression=config.honeycomb_compression,
                tls=honeycomb_tls,
            )
        )
    if config.otlp is not None:
        from .otlp import OtlpSink

        sinks.append(
            OtlpSink(
                config.otlp or None,
                service_name=config.service_name,
                timeout=config.send_timeout,
                environ=env,
                tls=tls_options(config, "otlp"),
            )
        )
    return sinks
