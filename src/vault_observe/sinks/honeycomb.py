"""Honeycomb sink: one event per span through the batch API (``/1/batch/<dataset>``).

Each event's ``time`` is the span's start (the request time) and its ``data`` holds
every flattened attribute with its JSON type plus the trace fields Honeycomb reads:
``trace.trace_id`` (the request id as Vault wrote it, else the hex trace id),
``trace.span_id``, ``trace.parent_id`` (non-root spans only), ``service_name`` and
``service.name``, ``name``, ``duration_ms`` (float, microsecond precision) and
``error`` (when the span has one). On a clash between an attribute and a trace
field the trace field wins.

Two encoders give the same events:

* ``native`` (default) writes the batch body from bytes: each record's canonical
  ``attrs_json`` is spliced in undecoded, by the compiled ``_batch_json`` when it
  is built (``encoding.honeycomb.EventEncoder`` is the reference it matches byte
  for byte, and the fallback). ``time`` keeps nanoseconds. It posts
  synchronously inside ``send`` (keep-alive connections, gzip or zstd bodies of at most
  5 MB), reads the per-event status array and retries what can be retried until
  the deadline.
* ``libhoney`` hands events to libhoney's ``Client`` (``time`` has microseconds
  only: libhoney formats ``datetime``). Delivery is asynchronous: ``send`` queues,
  a thread drains libhoney's responses to count outcomes and re-queue transient
  failures until each span's deadline, ``flush`` waits for every answer.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import orjson

from .. import __version__
from ..errors import ConfigError
from ..model import SpanRecord
from .compression import Compressor
from .encoding.honeycomb import BatchEncoder, event_fields
from .encoding.wire import JoinedBody
from .http import (
    PostResult,
    RetryingPoster,
    RetryPolicy,
    SafeLog,
    describe,
    is_retryable,
)
from .isolate import EncodeGuard

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "https://api.honeycomb.io"
DEFAULT_DATASET = "vault"
DEFAULT_SERVICE_NAME = "vault"
# Honeycomb refuses batch bodies over 5 MB (uncompressed).
MAX_BATCH_BYTES = 5_000_000
MAX_BATCH_EVENTS = 1000
ENCODERS = ("native", "libhoney")

_EPOCH = datetime.datetime(1970, 1, 1)


def _statuses(body: bytes, count: int) -> list[int] | None:
    """Per-event statuses of a batch answer; None when the answer is not the usual array."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    out = []
    for item in items[:count]:
        status = item.get("status") if isinstance(item, dict) else None
        out.append(status if isinstance(status, int) else 0)
    return out


def _errors_of(body: bytes) -> list[str]:
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [str(item.get("error") or "") if isinstance(item, dict) else "" for item in items]


class _NativeSender:
    """Synchronous batch posts built from bytes."""

    def __init__(
        self,
        api_key: str,
        url: str,
        service_name: str,
        timeout: float,
        compression: str,
        max_batch_bytes: int,
        max_batch_events: int,
        retry: RetryPolicy | None,
        safelog: SafeLog,
    ) -> None:
        self._url = url
        self.encoder = BatchEncoder(service_name)
        self._compressor = Compressor(compression, logger=log)
        self._poster = RetryingPoster(timeout=timeout, retry=retry)
        self._log = safelog
        self._max_bytes = max_batch_bytes
        self._max_events = max_batch_events
        self.guard = EncodeGuard("honeycomb", safelog)
        self._headers = {"X-Honeycomb-Team": api_key, "Content-Type": "application/json"}
        if self._compressor.header:
            self._headers["Content-Encoding"] = self._compressor.header
        self._count_lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.batches = 0

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        outcome = self.guard.encode(self.encoder.encode, spans, JoinedBody.concat)
        encoded, failed = outcome
        if encoded is None:
            with self._count_lock:
                self.failed += failed
            return failed
        batch = encoded
        for run in batch.runs(self._max_bytes, self._max_events):
            if len(run) == 1 and batch.ends[run[0]] - batch.start(run[0]) + 2 > self._max_bytes:
                failed += 1
                self._log(
                    "too-large",
                    logging.WARNING,
                    "honeycomb: dropped an event of %d bytes: a batch body may not exceed %d bytes",
                    batch.ends[run[0]] - batch.start(run[0]),
                    self._max_bytes,
                )
                continue
            failed += self._post(batch, run, deadline)
        with self._count_lock:  # two senders may finish at once
            self.sent += len(spans) - failed
            self.failed += failed
        return failed

    def _post(self, batch: JoinedBody, run: list[int], deadline: float) -> int:
        """Post one batch; re-post the events answered 429/5xx. Returns the failures."""
        failed = 0
        attempt = 0
        body = batch.run_body(run)
        while True:
            with self._count_lock:
                self.batches += 1
            result = self._poster.post(self._url, self._compressor.compress(body), self._headers, deadline)
            if not result.ok:
                self._log_failure(result, len(run))
                return failed + len(run)
            statuses = _statuses(result.body, len(run))
            if statuses is None:
                # The request was accepted; only its per-event report is unreadable.
                self._log(
                    "odd-reply",
                    logging.WARNING,
                    "honeycomb: batch accepted with an unexpected reply: %s",
                    result.body[:200].decode("utf-8", "replace"),
                )
                return failed
            again: list[int] = []
            errors: list[str] | None = None
            for i, status in enumerate(statuses):
                if 200 <= status <= 299 or status == 0:
                    continue
                if is_retryable(status):
                    again.append(run[i])
                    continue
                failed += 1
                if errors is None:
                    errors = _errors_of(result.body)
                self._log(
                    f"event-{status}",
                    logging.WARNING,
                    "honeycomb: event refused (%d): %s",
                    status,
                    errors[i] if i < len(errors) else "",
                )
            if not again:
                return failed
            if not self._poster.backoff(attempt, deadline):
                self._log(
                    "event-gave-up",
                    logging.WARNING,
                    "honeycomb: %d events still refused (429/5xx) at the deadline",
                    len(again),
                )
                return failed + len(again)
            attempt += 1
            run = again
            body = b"[" + b",".join([batch.item(i) for i in again]) + b"]"

    def _log_failure(self, result: PostResult, count: int) -> None:
        if result.retryable:
            self._log(
                "gave-up",
                logging.WARNING,
                "honeycomb: %d events not delivered to %s by the deadline: %s",
                count,
                self._url,
                describe(result),
            )
        else:
            self._log(
                f"refused-{result.status}",
                logging.ERROR,
                "honeycomb: %d events refused by %s: %s",
                count,
                self._url,
                describe(result),
            )

    def flush(self, timeout: float) -> None:
        pass  # nothing is buffered: ``send`` posts before it returns

    def close(self) -> None:
        self._poster.close()

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "unencodable": self.guard.unencodable,
            "retries": self._poster.retries,
            "batches": self.batches,
            "bytes": self._poster.bytes,
        }


# ---------------------------------------------------------------- libhoney


class _Pending:
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


class _LibhoneySender:
    """libhoney's Client and Transmission; a thread drains the responses queue."""

    def __init__(
        self,
        api_key: str,
        dataset: str,
        api_host: str,
        service_name: str,
        timeout: float,
        retry: RetryPolicy | None,
        batch_size: int,
        send_frequency: float,
        max_pending: int,
        concurrency: int,
        safelog: SafeLog,
    ) -> None:
        import libhoney
        from libhoney.transmission import Transmission

        owner = self

        class CountingTransmission(Transmission):  # type: ignore[misc]
            """Counts batches and bytes and gives each POST the sink's timeout,
            shortened to the earliest deadline of the batch's spans."""

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
                    owner._count(bytes_=len(data))
                    return post(url, data=data, **kw)

                self.session.post = timed_post

            def _send_batch(self, destination: Any, events: list[Any]) -> None:
                deadlines = [ev.metadata.deadline for ev in events if isinstance(ev.metadata, _Pending)]
                self._local.deadline = min(deadlines) if deadlines else None
                owner._count(batches=1)
                super()._send_batch(destination, events)

        self._service_name = service_name
        self._retry = retry or RetryPolicy()
        self._log = safelog
        self.guard = EncodeGuard("honeycomb", safelog)
        self._limit = max_pending
        self._xmit = CountingTransmission(
            max_concurrent_batches=concurrency,
            max_batch_size=batch_size,
            send_frequency=send_frequency,
            max_pending=max_pending,
            # Every queued event gives one response: room for all, so none is dropped.
            max_responses=max_pending + 16,
            block_on_send=False,
            block_on_response=False,
            user_agent_addition=f"vault-observe/{__version__}",
        )
        self._client = libhoney.Client(
            writekey=api_key, dataset=dataset, api_host=api_host, transmission_impl=self._xmit
        )
        self._cond = threading.Condition()
        self._outstanding = 0  # queued in libhoney or waiting for a retry
        self._retries: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()
        self._closing = False
        self._closed = False
        self.sent = 0
        self.failed = 0
        self.retries = 0
        self.batches = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._drain, name="honeycomb-responses", daemon=True)
        self._thread.start()

    def _count(self, batches: int = 0, bytes_: int = 0) -> None:
        with self._cond:
            self.batches += batches
            self.bytes += bytes_

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        refused = 0
        for record in spans:
            try:
                fields = event_fields(record, self._service_name)
            except Exception as exc:  # a value json cannot decode (nested about 990 deep)
                self.guard.drop(record, exc)
                with self._cond:
                    self.failed += 1
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
                    self.failed += 1
                    continue
                self._outstanding += 1
            created_at = _EPOCH + datetime.timedelta(microseconds=record.start_ns // 1000)
            self._queue(_Pending(fields, created_at, deadline, record.sample_rate))
        if refused:
            self._log(
                "full",
                logging.WARNING,
                "honeycomb: %d events not queued: libhoney queue full until the deadline",
                refused,
            )
        return refused

    def _queue(self, pending: _Pending) -> None:
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
        if not isinstance(pending, _Pending):
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
                    self.retries += 1
                    heapq.heappush(self._retries, (time.monotonic() + delay, next(self._seq), pending))
                    return
                self._finish(failed=1)
            self._log(
                "gave-up",
                logging.WARNING,
                "honeycomb: event not delivered by the deadline: %s",
                _describe_response(status, error),
            )
            return
        with self._cond:
            self._finish(failed=1)
        self._log(
            f"refused-{status}",
            logging.ERROR,
            "honeycomb: event refused: %s",
            _describe_response(status, error),
        )

    def _start_due_retries(self) -> None:
        now = time.monotonic()
        due: list[_Pending] = []
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
        self.sent += sent
        self.failed += failed
        self._outstanding -= sent + failed
        self._cond.notify_all()

    def flush(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._outstanding <= 0, timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._closing = True
        self._client.close()  # sends what is queued, then ends the responses queue
        self._thread.join(timeout=30)
        self._xmit.session.close()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "unencodable": self.guard.unencodable,
                "retries": self.retries,
                "batches": self.batches,
                "bytes": self.bytes,
            }


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


# ---------------------------------------------------------------- the sink


class HoneycombSink:
    """Spans as Honeycomb events; see the module docstring."""

    name = "honeycomb"
    concurrency = 1  # senders the daemon may run at once (set per encoder)

    def __init__(
        self,
        api_key: str,
        *,
        dataset: str = DEFAULT_DATASET,
        api_host: str = DEFAULT_API_HOST,
        service_name: str = DEFAULT_SERVICE_NAME,
        timeout: float = 10.0,
        encoder: str = "native",
        compression: str = "gzip",
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_events: int = MAX_BATCH_EVENTS,
        retry: RetryPolicy | None = None,
        libhoney_batch_size: int = 100,
        libhoney_send_frequency: float = 0.25,
        libhoney_max_pending: int = 10_000,
        libhoney_concurrency: int = 10,
    ) -> None:
        if not api_key:
            raise ConfigError("the Honeycomb sink needs an API key", setting="HONEYCOMB_API_KEY")
        if not dataset:
            raise ConfigError("the dataset name is empty", setting="honeycomb_dataset", value=dataset)
        if encoder not in ENCODERS:
            raise ConfigError("expected native or libhoney", setting="honeycomb_encoder", value=encoder)
        if timeout <= 0:
            raise ConfigError("must be greater than 0", setting="send_timeout", value=timeout)
        if max_batch_bytes < 1024 or max_batch_events < 1:
            raise ConfigError("honeycomb: batch limits too small")
        if not api_host.startswith(("http://", "https://")):
            raise ConfigError(
                "not an http(s) URL; expected e.g. https://api.honeycomb.io",
                setting="honeycomb_api_host",
                value=api_host,
            )
        self.encoder = encoder
        self.dataset = dataset
        self.api_host = api_host.rstrip("/")
        self.url = f"{self.api_host}/1/batch/{quote(dataset, safe='')}"
        safelog = SafeLog(log, secrets=(api_key,))
        self._impl: _NativeSender | _LibhoneySender
        # which encoder writes the bodies ("c", "py" or "libhoney") and why not "c"
        self.implementation = "libhoney"
        self.load_error: str | None = None
        if encoder == "native":
            self._impl = _NativeSender(
                api_key,
                self.url,
                service_name,
                timeout,
                compression,
                max_batch_bytes,
                max_batch_events,
                retry,
                safelog,
            )
            self.implementation = self._impl.encoder.implementation
            # Two senders: one compresses and encodes while the other's POST is in flight.
            self.concurrency = 2
            self.load_error = self._impl.encoder.load_error
        else:
            if compression.lower() != "gzip":
                log.warning("honeycomb: the libhoney encoder always sends gzip (asked for %s)", compression)
            self._impl = _LibhoneySender(
                api_key,
                dataset,
                self.api_host,
                service_name,
                timeout,
                retry,
                libhoney_batch_size,
                libhoney_send_frequency,
                libhoney_max_pending,
                libhoney_concurrency,
                safelog,
            )

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        """Native: post now and return the spans not delivered. libhoney: queue and
        return the spans that could not be queued (outcomes show in ``stats``)."""
        if not spans:
            return 0
        return self._impl.send(spans, deadline)

    def start(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        self._impl.flush(timeout)

    def close(self) -> None:
        self._impl.close()

    def stats(self) -> dict[str, int]:
        return self._impl.stats()

    def __repr__(self) -> str:  # no key in any repr
        return f"HoneycombSink(url={self.url!r}, encoder={self.encoder!r})"
