"""Build the sinks a Config asks for."""

from __future__ import annotations

from ..config import Config
from .base import Sink


def build_sinks(config: Config) -> list[Sink]:
    sinks: list[Sink] = []
    if config.stdout:
        from .stdout import StdoutSink

        sinks.append(StdoutSink())
    if config.zipkin:
        from .zipkin import make_zipkin_sink

        sinks.append(make_zipkin_sink(config))
    if config.honeycomb:
        from .honeycomb import make_honeycomb_sink

        sinks.append(make_honeycomb_sink(config))
    if config.otlp:
        from .otlp import make_otlp_sink

        sinks.append(make_otlp_sink(config))
    return sinks
