"""An in-memory sink for pipeline tests: a real Sink that keeps what it is given."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from vault_observe.model import SpanRecord


class CollectingSink:
    """Keeps every span; can be made slow (``delay`` per batch) or failing."""

    concurrency = 1

    def __init__(self, name: str = "collect", delay: float = 0.0, fail: bool = False) -> None:
        self.name = name
        self.delay = delay
        self.fail = fail
        self.spans: list[SpanRecord] = []
        self.batches = 0
        self.flushed = False
        self.closed = False
        self.lock = threading.Lock()

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if self.delay:
            time.sleep(min(self.delay, max(0.0, deadline - time.monotonic())))
        if self.fail:
            return len(spans)
        with self.lock:
            self.spans.extend(spans)
            self.batches += 1
        return 0

    def start(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        self.flushed = True

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, int]:
        return {"sent": len(self.spans)}
