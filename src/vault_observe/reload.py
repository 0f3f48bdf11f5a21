"""SIGHUP: re-read the settings and apply in place what can change, on the reader's
thread between two reads. Never ends the daemon and never closes a connection.

- log level and format, filters (--include/--exclude), --sample-rate, the summary
  interval, the health threshold and the shutdown timeout change at once;
- a change to the sinks or their settings starts a new sink set; the old one
  delivers what it holds (until --shutdown-timeout) on a thread of its own while
  new spans go to the new set, so the reader never waits;
- --capture is closed and opened again (logrotate's postrotate);
- settings that need a restart (listeners, the socket's mode, the input, the core's
  limits, the metrics address) are logged and keep their running values;
- settings that cannot be used (a config file that does not parse, a bad value)
  are logged, and every running setting stays.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from . import logs
from .errors import ConfigError
from .metrics import is_internal
from .sinks.factory import build_checked_sinks

if TYPE_CHECKING:
    from .config import Config
    from .core import Core
    from .metrics_http import MetricsServer
    from .sink_worker import SinkWorker
    from .sinks.base import Sink

log = logging.getLogger("vault_observe")


class Reloadable(Protocol):
    """What a reload reads and changes of the daemon (declared here, so that this
    module need not import the daemon's)."""

    config: Config
    reload_config: Callable[[], Config] | None
    core: Core
    metrics_server: MetricsServer | None
    workers: list[SinkWorker]
    retired_workers: list[SinkWorker]

    def reopen_capture(self) -> None: ...
    def make_workers(self, sinks: Sequence[Sink], config: Config) -> list[SinkWorker]: ...


# Changed by a restart only: the sockets and files read, and the core's own limits.
RESTART = (
    "listeners",
    "socket_mode",
    "input",
    "follow",
    "checkpoint",
    "prefix",
    "ttl",
    "max_pending",
    "pending_attrs_bytes",
    "max_line_bytes",
    "flatten_arrays",
    "trace_context",
    "metrics_address",
)
# What the sink set is made from: any change builds a new one.
SINK_SETTINGS = (
    "stdout",
    "zipkin",
    "zipkin_encoder",
    "zipkin_compression",
    "zipkin_ca_file",
    "zipkin_client_cert",
    "zipkin_client_key",
    "honeycomb",
    "honeycomb_api_key",
    "honeycomb_dataset",
    "honeycomb_api_host",
    "honeycomb_encoder",
    "honeycomb_compression",
    "honeycomb_ca_file",
    "honeycomb_client_cert",
    "honeycomb_client_key",
    "otlp",
    "otlp_ca_file",
    "otlp_client_cert",
    "otlp_client_key",
    "service_name",
    "send_timeout",
    "queue_size",
    "queue_bytes",
    "batch_size",
    "flush_interval",
    "retry_window",
)
_NOT_SETTINGS = {"origins"}


def reload(daemon: Reloadable) -> bool:
    """Apply a new Config from ``daemon.reload_config``; False when nothing could be."""
    log.info("SIGHUP: reloading the settings")
    daemon.reopen_capture()
    if daemon.reload_config is None:
        log.warning("SIGHUP: no settings to reload (an embedded daemon); only --capture was reopened")
        return False
    try:
        new = daemon.reload_config()
    except ConfigError as exc:
        log.error("SIGHUP: %s; the running settings stay", exc)
        return False
    except Exception:
        log.exception("SIGHUP: the settings could not be read; the running settings stay")
        return False
    old = daemon.config
    changed = {
        item.name
        for item in dataclasses.fields(old)
        if item.name not in _NOT_SETTINGS and getattr(old, item.name) != getattr(new, item.name)
    }
    for name in sorted(changed & set(RESTART)):
        log.warning(
            "SIGHUP: %s changed (%s -> %s) but needs a restart; it keeps its running value",
            name,
            _shown(name, getattr(old, name)),
            _shown(name, getattr(new, name)),
        )
    if changed & set(SINK_SETTINGS):
        if old.follow:
            # Checkpoints count what each sink of the running set was given.
            log.warning("SIGHUP: the sinks changed, but with --follow a new sink set needs a restart")
            changed -= set(SINK_SETTINGS)
        elif not _swap_sinks(daemon, new):
            return False
    if changed & {"include", "exclude", "sample_rate"}:
        daemon.core.set_filters(include=new.include, exclude=new.exclude, sample_rate=new.sample_rate)
    if changed & {"log_level", "log_format"}:
        logs.configure(new.log_level, new.log_format)
    if daemon.metrics_server is not None:
        daemon.metrics_server.failure_seconds = new.health_failure_seconds
    # What stays is what needs a restart (and the sinks when they could not change).
    keep = {name: getattr(old, name) for name in RESTART}
    if old.follow:
        keep.update({name: getattr(old, name) for name in SINK_SETTINGS})
    daemon.config = dataclasses.replace(new, **keep)
    applied = sorted(changed - set(RESTART))
    log.info("SIGHUP: applied %s", ", ".join(applied) if applied else "no change")
    return True


def _shown(name: str, value: object) -> str:
    if name == "socket_mode" and isinstance(value, int):
        return f"{value:04o}"
    if name == "listeners" and isinstance(value, list):
        return ", ".join(str(item) for item in value) or "(none)"
    return repr(value)


def _swap_sinks(daemon: Reloadable, new: Config) -> bool:
    """Start the new sink set; the old one drains on a thread of its own."""
    try:
        sinks = build_checked_sinks(new)
    except ConfigError as exc:
        log.error("SIGHUP: %s; the running settings stay", exc)
        return False
    internal = [worker for worker in daemon.workers if is_internal(worker.sink)]
    old = [worker for worker in daemon.workers if not is_internal(worker.sink)]
    workers = daemon.make_workers(sinks, new)
    for worker in workers:
        worker.start()
    # The reader offers to daemon.workers only: from here on, new spans go to the new set.
    daemon.workers = workers + internal
    daemon.retired_workers.extend(old)
    deadline = time.monotonic() + new.shutdown_timeout
    for worker in old:
        worker.stop(deadline)
    if old:
        threading.Thread(target=_drain, args=(old,), name="sink-drain", daemon=True).start()
    log.info(
        "SIGHUP: sinks now %s (before: %s; it delivers what it holds within %g s)",
        ", ".join(w.name for w in workers) or "(none)",
        ", ".join(w.name for w in old) or "(none)",
        new.shutdown_timeout,
    )
    return True


def _drain(workers: list[SinkWorker]) -> None:
    for worker in workers:
        worker.close()
