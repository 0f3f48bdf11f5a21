"""Build the sinks a Config asks for."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..config import Config
from ..errors import ConfigError
from .base import Sink

DEFAULT_TIMEOUT = 10.0


def build_checked_sinks(config: Config, environ: Mapping[str, str] | None = None) -> list[Sink]:
    """The sinks ``config`` asks for; a setting they refuse is a ConfigError that names
    it as the user wrote it. ``--check-config``, start-up and a reload come through here."""
    try:
        return build_sinks(config, environ)
    except ConfigError as exc:
        raise ConfigError(config.explain(exc)) from None


def build_sinks(config: Config, environ: Mapping[str, str] | None = None) -> list[Sink]:
    env = os.environ if environ is None else environ
    sinks: list[Sink] = []
    if config.stdout:
        from .stdout import StdoutSink

        sinks.append(StdoutSink())
    if config.zipkin:
        from .zipkin import make_zipkin_sink

        sinks.append(make_zipkin_sink(config))
    if config.honeycomb:
        from .honeycomb import HoneycombSink

        sinks.append(
            HoneycombSink(
                config.honeycomb_api_key,
                dataset=config.honeycomb_dataset,
                api_host=config.honeycomb_api_host,
                service_name=config.service_name,
                timeout=config.send_timeout or DEFAULT_TIMEOUT,
                encoder=config.honeycomb_encoder,
                compression=config.honeycomb_compression,
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
            )
        )
    return sinks
