"""Log set-up: text lines with UTC RFC 3339 times, or one JSON object per line.

Both go to stderr through one handler on the root logger (the libraries' records
too), which ``configure`` adjusts in place, so a reload (SIGHUP) changes the level
and the format without losing a record. The JSON lines are written by
python-json-logger (with orjson); the reader never logs per line, so the formatter's
cost does not reach it.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Extra attributes of a summary record (see metrics.Summary.log).
SUMMARY_TITLE = "summary_title"
SUMMARY_FIELDS = "summary_fields"

_handler: logging.StreamHandler[Any] | None = None


def utc_timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-12-03T07:10:42.605Z."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-03T07:10:42.605Z INFO vault_observe: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return utc_timestamp(record.created)


@functools.cache
def json_formatter_class() -> type[logging.Formatter]:
    """The formatter of ``--log-format json``. Defined when first asked for: importing
    python-json-logger costs ~4 ms at start-up, which text logs need not pay."""
    from pythonjsonlogger.orjson import OrjsonFormatter

    class JsonFormatter(OrjsonFormatter):
        """``{"time": ..., "level": "info", "logger": ..., "msg": ...}``; a summary's message
        is its title, and its counters are fields of their own (``sinks`` an object of
        per-sink counters)."""

        def __init__(self) -> None:
            super().__init__(
                ["asctime", "levelname", "name", "message"],
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "message": "msg"},
            )

        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
            return utc_timestamp(record.created)

        def add_fields(
            self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
        ) -> None:
            super().add_fields(log_data, record, message_dict)
            log_data["level"] = str(log_data.get("level", "")).lower()
            title = log_data.pop(SUMMARY_TITLE, None)
            fields = log_data.pop(SUMMARY_FIELDS, None)
            if title is not None and isinstance(fields, dict):
                log_data["msg"] = title
                for key, value in fields.items():
                    log_data.setdefault(key, value)

    return JsonFormatter


def configure(level: str = "info", log_format: str = "text") -> None:
    """Set (or change) the level and the format of the daemon's log on stderr."""
    global _handler
    root = logging.getLogger()
    if _handler is None or _handler not in root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
    else:
        _handler.setStream(sys.stderr)
    _handler.setFormatter(json_formatter_class()() if log_format == "json" else TextFormatter())
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def handler() -> logging.Handler | None:
    """The handler ``configure`` installed (for the progress bar, which writes around it)."""
    return _handler
