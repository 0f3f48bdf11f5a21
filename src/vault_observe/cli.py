"""Command line entry point: ``vault-observe [flags]`` and ``vault-observe demo``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from . import core, logs
from .config import Config, describe, load_config, version_text
from .errors import ConfigError
from .sinks.factory import build_checked_sinks

if TYPE_CHECKING:
    from .sinks.base import Sink

log = logging.getLogger("vault_observe")

# Exit codes: 0 done (a replay: every span delivered), 1 a runtime failure (or a replay
# that could not deliver every span), 2 a setting that cannot be used.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _config_error(message: object) -> int:
    sys.stderr.write(f"vault-observe: error: {message}\n")
    return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    demo = bool(argv) and argv[0] == "demo"
    if demo:
        argv = argv[1:]
    try:
        config, args = load_config(argv, demo=demo)
        if args.version:
            print(version_text(core.IMPLEMENTATION, core.LOAD_ERROR))
            return EXIT_OK
        sinks = build_checked_sinks(config)
    except ConfigError as exc:
        return _config_error(exc)
    if args.check_config:
        return check_config(config, sinks)
    # The demo's own summary says what the daemon's info lines would: they stay quiet
    # unless a log level was asked for.
    quiet = demo and "log_level" not in config.origins
    logs.configure("warning" if quiet else config.log_level, config.log_format)
    if core.IMPLEMENTATION != "c":
        log.warning("running on the pure-Python core (%s): expect far lower throughput", core.LOAD_ERROR)
    if demo:
        from .demo import run_demo

        _close(sinks)  # the demo builds its own, with stdout added
        code: int = run_demo(config)
        return code
    from .pipeline import Daemon

    try:
        daemon = Daemon(config, sinks)
    except ConfigError as exc:
        _close(sinks)
        return _config_error(config.explain(exc))
    # SIGHUP: the same flags and variables, the config file read again, the same checks.
    daemon.reload_config = lambda: load_config(argv)[0]
    try:
        return daemon.run()
    except ConfigError as exc:  # for example a socket passed by systemd that cannot be used
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


def _close(sinks: Sequence[Sink]) -> None:
    for sink in sinks:
        sink.close()


def check_config(config: Config, sinks: Sequence[Sink], env: Mapping[str, str] | None = None) -> int:
    """Print the effective settings as TOML (``--config`` reads it back) and exit 0."""
    env = os.environ if env is None else env
    resolved: dict[str, str] = {}
    notes: list[str] = []
    for sink in sinks:
        if sink.name == "otlp":
            resolved["otlp"] = str(getattr(sink, "endpoint", config.otlp))
            notes += _otlp_notes(env)
    _close(sinks)
    print(describe(config, resolved, notes))
    print(f"# sinks: {', '.join(config.sink_names()) or '(none)'}")
    print("# configuration is valid")
    return EXIT_OK


def _otlp_notes(env: Mapping[str, str]) -> list[str]:
    """The OTLP exporter variables in effect, header values redacted."""
    notes = []
    for name in sorted(env):
        value = env[name].strip()
        if not name.startswith("OTEL_EXPORTER_OTLP_") or not value or name.endswith("ENDPOINT"):
            continue
        if name.endswith("HEADERS"):
            keys = [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]
            value = ",".join(f"{key}=(redacted)" for key in keys)
        notes.append(f"{name}={value} (from the environment)")
    return notes
