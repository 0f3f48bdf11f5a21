"""Command line entry point: ``vault-observe [flags]`` and ``vault-observe demo``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from . import core
from .config import Config, describe, load_config, version_text
from .errors import ConfigError, SinkError

log = logging.getLogger("vault_observe")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    demo = bool(argv) and argv[0] == "demo"
    if demo:
        argv = argv[1:]
    try:
        config, args = load_config(argv)
    except ConfigError as exc:
        sys.stderr.write(f"vault-observe: error: {exc}\n")
        return 2
    if args.version:
        print(version_text(core.IMPLEMENTATION, core.LOAD_ERROR))
        return 0
    if args.check_config:
        return check_config(config)
    setup_logging(config.log_level)
    if core.IMPLEMENTATION != "c":
        log.warning("running on the pure-Python core (%s): expect far lower throughput", core.LOAD_ERROR)
    if demo:
        from .demo import run_demo

        code: int = run_demo(config)
        return code
    from .pipeline import Daemon

    try:
        daemon = Daemon(config)
    except ConfigError as exc:
        sys.stderr.write(f"vault-observe: error: {exc}\n")
        return 2
    try:
        return daemon.run()
    except OSError as exc:
        log.error("%s", exc)
        return 1


def check_config(config: Config) -> int:
    """Validate everything that can be checked without starting: settings and sinks."""
    from .sinks.factory import build_sinks

    try:
        sinks = build_sinks(config)
    except (ConfigError, SinkError) as exc:
        sys.stderr.write(f"vault-observe: error: {exc}\n")
        return 2
    for sink in sinks:
        sink.close()
    print(describe(config))
    print(f"sinks = {', '.join(config.sink_names()) or '(none)'}")
    print("configuration is valid")
    return 0
