"""Rate-limited logging: a flood of bad lines or failed sends gives a few log lines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable


class RateLimitedLog:
    """Log a message at most once per ``interval`` seconds per key, counting the rest.

    ``secrets`` (API keys, header values) are masked as ``***`` in every message.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, secrets: Iterable[str] = ()) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()
        # the longest first, so that a secret holding another is masked whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def admit(self, key: str) -> int | None:
        """None when a message of ``key`` was let through less than ``interval`` ago
        (this one is counted as suppressed); else how many were suppressed since."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def __call__(self, key: str, level: int, msg: str, *args: object) -> None:
        suppressed = self.admit(key)
        if suppressed is None:
            return
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        if self._secrets:  # formatted here: an argument may hold a secret
            self._logger.log(level, "%s", self.redact(msg % args if args else msg))
        else:
            self._logger.log(level, msg, *args)


class RateLimitFilter(logging.Filter):
    """A logging filter letting one record per logger through per ``interval``: for a
    library that logs every failed attempt of what the caller retries and logs itself."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._ratelog = RateLimitedLog(logging.getLogger(__name__), interval)

    def filter(self, record: logging.LogRecord) -> bool:
        return self._ratelog.admit(record.name) is not None
