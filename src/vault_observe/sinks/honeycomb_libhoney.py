"""The Honeycomb sink's reference path (``--honeycomb-encoder libhoney``): events
handed to libhoney's ``Client``.

Delivery is asynchronous: ``send`` queues, a thread (started by ``start``) drains
libhoney's responses to count outcomes and re-queue transient failures until each
span's deadline, ``flush`` waits for every answer. ``time`` has microseconds only:
libhoney formats ``datetime``. Retries follow the exporter's policy.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..model import SpanRecord
from ..ratelog import RateLimitedLog
from .base import Counters
from .exporter import RetryPolicy, is_retryable
from .isolate import EncodeGuard

if TYPE_CHECKING:
    from .tls import TlsOptions

log = logging.getLogger("vault_observe.sinks.honeycomb")

_EPOCH = datetime.datetime(1970, 1, 1)


class Pending:
    """A span on its way through libhoney (the event's metadata)."""

    __slots__ = ("attempt", "created_at", "deadline", "fields", "sample_rate")

    def __init__(
        self, fields: dict[str, Any], created_at: datetime.datetime, deadline: float, sample_rate: int = 1
    ) -> None:
        self.sample_rate = sample_rate
        self.fields = fields
        self.created_at = created_at
        self.deadline = deadline
        self.attempt = 0


_DRAIN_POLL = 0.5  # the drainer wakes at least this often to start due retries


class LibhoneySender:
    """libhoney's Client and Transmission; a thread drains the responses queue.
    Both start in ``start`` (libhoney's Client starts its sender thread when made)."""

    def __init__(
        self,
        api_key: str,
        dataset: str,
        api_host: str,
        fields_of: Callable[[SpanRecord], dict[str, Any]],
        timeout: float,
        retry: RetryPolicy | None,
        batch_size: int,
        send_frequency: float,
        max_pending: int,
        concurrency: int,
        rate_log: RateLimitedLog,
        tls: TlsOptions | None = None,
    ) -> None:
        import libhoney  # noqa: F401 - missing is a start-up error, not a first-send one

        self._settings = (api_key, dataset, api_host, timeout, batch_size, send_frequency, concurrency)
        self._fields_of = fields_of
        self._tls = tls
        self._retry = retry or RetryPolicy()
        self._log = rate_log
        self.guard = EncodeGuard("honeycomb", rate_log)
        self._limit = max_pending
        self._cond = threading.Condition()
        self._outstanding = 0  # queued in libhoney or waiting for a retry
        self._retries: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._closing = False
        self._closed = False
        self.counts = Counters()
        self._client: Any = None
        self._xmit: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closing:
                return
            self._start()

    def _start(self) -> None:
        import libhoney
        from libhoney.transmission import Transmission

        api_key, dataset, api_host, timeout, batch_size, send_frequency, concurrency = self._settings
        counts = self.counts
        tls_kwargs = self._tls.requests_kwargs() if self._tls is not None else {}

        class CountingTransmission(Transmission):  # type: ignore[misc]
            """Counts batches and bytes and gives each POST the sink's timeout,
            shortened to the earliest deadline of the batch's spans, and its CA bundle
            and client certificate."""

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self._local = threading.local()
                post = self.session.post

                def timed_post(url: str, data: bytes = b"", **kw: Any) -> Any:
                    deadline = getattr(self._local, "deadline", None)
                    limit = (
                        timeout if deadline is None else min(timeout, max(0.05, deadline - time.monotonic()))
                    )
                    kw["timeout"] = limit
                    kw.update(tls_kwargs)
                    counts.add(bytes=len(data))
                    return post(url, data=data, **kw)

                self.session.post = timed_post

            def _send_batch(self, destination: Any, events: list[Any]) -> None:
                deadlines = [ev.metadata.deadline for ev in events if isinstance(ev.metadata, Pending)]
                self._local.deadline = min(deadlines) if deadlines else None
                counts.add(batches=1)
                super()._send_batch(destination, events)

        self._xmit = CountingTransmission(
            max_concurrent_batches=concurrency,
            max_batch_size=batch_size,
            send_frequency=send_frequency,
            max_pending=self._limit,
            # Every queued event gives one response: room for all, so none is dropped.
            max_responses=self._limit + 16,
            block_on_send=False,
            block_on_response=False,
            user_agent_addition=f"vault-observe/{__version__}",
        )
        self._client = libhoney.Client(
            writekey=api_key, dataset=dataset, api_host=api_host, transmission_impl=self._xmit
        )
        self._thread = threading.Thread(target=self._drain, name="honeycomb-responses", daemon=True)
        self._thread.start()

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if self._thread is None:
            self.start()  # the worker starts it first; a caller of its own may not have
        refused = 0
        for record in spans:
            try:
                fields = self._fields_of(record)
            except Exception as exc:  # a value json cannot decode (nested about 990 deep)
                self.guard.drop(record, exc)
                self.counts.add(failed=1)
                refused += 1
                continue
            with self._cond:
                # libhoney drops events when its queue is full: wait for room instead.
                while self._outstanding >= self._limit and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._outstanding >= self._limit or self._closing:
                    refused += 1
                    self.counts.add(failed=1)
                    continue
                self._outstanding += 1
            created_at = _EPOCH + datetime.timedelta(microseconds=record.start_ns // 1000)
            self._queue(Pending(fields, created_at, deadline, record.sample_rate))
        if refused:
            self._log(
                "full",
                logging.WARNING,
                "honeycomb: %d events not queued: libhoney queue full until the deadline",
                refused,
            )
        return refused

    def _queue(self, pending: Pending) -> None:
        event = self._client.new_event()
        event.add(pending.fields)
        event.created_at = pending.created_at  # naive UTC: libhoney appends "Z"
        event.sample_rate = pending.sample_rate
        event.add_metadata(pending)
        event.send_presampled()

    # -- responses

    def _drain(self) -> None:
        responses = self._xmit.get_response_queue()
        while True:
            with self._cond:
                due = self._retries[0][0] if self._retries else None
            wait = _DRAIN_POLL if due is None else min(_DRAIN_POLL, max(0.0, due - time.monotonic()))
            try:
                response = responses.get(timeout=wait)
            except queue.Empty:
                response = {}
            if response is None:  # libhoney closed
                break
            try:
                if response:
                    self._handle(response)
                self._start_due_retries()
            except Exception:  # keep draining: a dead drainer would stall every flush
                log.exception("honeycomb: error while reading libhoney's responses")
        with self._cond:
            # Closed: waiting retries, and anything libhoney will never answer, failed.
            self._retries.clear()
            self._finish(failed=max(self._outstanding, 0))

    def _handle(self, response: dict[str, Any]) -> None:
        pending = response.get("metadata")
        if not isinstance(pending, Pending):
            return
        status = int(response.get("status_code") or 0)
        error = response.get("error")
        if 200 <= status <= 299 or (status == 0 and error is None):
            with self._cond:
                self._finish(sent=1)
            return
        if is_retryable(status) or (status == 0 and _transient(error)):
            delay = self._retry.delay(pending.attempt)
            with self._cond:
                if not self._closing and time.monotonic() + delay < pending.deadline:
                    pending.attempt += 1
                    self.counts.add(retries=1)
                    heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), pending))
                    return
                self._finish(failed=1)
            self._log(
                "gave-up",
                logging.WARNING,
                "honeycomb: event not delivered by the deadline: %s",
                self._describe_response(status, error),
            )
            return
        with self._cond:
            self._finish(failed=1)
        self._log(
            f"refused-{status}",
            logging.ERROR,
            "honeycomb: event refused: %s",
            self._describe_response(status, error),
        )

    def _start_due_retries(self) -> None:
        now = time.monotonic()
        due: list[Pending] = []
        with self._cond:
            while self._retries and self._retries[0][0] <= now:
                due.append(heapq.heappop(self._retries)[2])
            if self._closing and due:
                self._finish(failed=len(due))
                return
        for pending in due:
            self._queue(pending)

    def _finish(self, sent: int = 0, failed: int = 0) -> None:
        """Hold ``_cond``."""
        self.counts.add(sent=sent, failed=failed)
        self._outstanding -= sent + failed
        self._cond.notify_all()

    def flush(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._outstanding <= 0, timeout)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = self._closing = True
            self._cond.notify_all()
        if self._thread is None:  # never started
            return
        self._client.close()  # sends what is queued, then ends the responses queue
        self._thread.join(timeout=30)
        self._xmit.session.close()

    def stats(self) -> dict[str, int]:
        return {**self.counts.snapshot(), "unencodable": self.guard.unencodable}

    def _describe_response(self, status: int, error: object) -> str:
        if isinstance(error, BaseException) and self._tls is not None:
            # OpenSSL's reason and the settings to look at
            described = self._tls.describe_failure(error)
            if described is not None:
                import requests  # libhoney's transport

                error = requests.exceptions.SSLError(described)
        return _describe_response(status, error)


def _transient(error: object) -> bool:
    """libhoney's status-0 errors worth another try: no answer, or urllib3 gave up on 5xx/429."""
    import requests  # libhoney's transport; loaded only with the libhoney encoder

    if isinstance(
        error,
        (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.RetryError,
            requests.exceptions.ChunkedEncodingError,
        ),
    ):
        return True
    return isinstance(error, str) and "queue overflow" in error


def _describe_response(status: int, error: object) -> str:
    if error is None:
        return f"HTTP {status}"
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return f"HTTP {status}: {text}" if status else text
