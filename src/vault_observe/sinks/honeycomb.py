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
  for byte, and the fallback). ``time`` keeps nanoseconds. The ``Exporter`` posts it
  synchronously inside ``send`` (gzip or zstd bodies of at most 5 MB);
  ``read_statuses`` reads the per-event status array, and the events that may be
  retried are posted again until the deadline.
* ``libhoney`` hands events to libhoney's ``Client`` (``honeycomb_libhoney``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

import orjson

from ..errors import ConfigError
from ..model import SpanRecord
from ..ratelog import RateLimitedLog
from .encoding.honeycomb import BatchEncoder, event_fields
from .encoding.wire import JoinedBody
from .exporter import Exporter, RetryPolicy, Verdict, is_retryable

if TYPE_CHECKING:
    from .honeycomb_libhoney import LibhoneySender
    from .tls import TlsOptions

log = logging.getLogger(__name__)

DEFAULT_API_HOST = "https://api.honeycomb.io"
DEFAULT_DATASET = "vault"
DEFAULT_SERVICE_NAME = "vault"
# Honeycomb refuses batch bodies over 5 MB (uncompressed).
MAX_BATCH_BYTES = 5_000_000
MAX_BATCH_EVENTS = 1000
ENCODERS = ("native", "libhoney")


@functools.lru_cache(maxsize=4)
def _all_accepted(count: int) -> bytes:
    """The batch API's answer when it accepts each of ``count`` events."""
    return b"[" + b",".join([b'{"status":202}'] * count) + b"]"


def read_statuses(body: bytes, count: int) -> Verdict:
    """The batch API's per-event statuses: 429/5xx events worth posting again, the
    other failures refused for good (statuses 0 are events the answer leaves out)."""
    if len(body) == 15 * count + 1 and body == _all_accepted(count):
        # The usual answer, compared instead of parsed: a thousand events' statuses
        # cost ~0.2 ms of CPU to decode and walk, on every request.
        return Verdict(retry=[])
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        items = None
    if not isinstance(items, list):
        # The request was accepted; only its per-event report is unreadable.
        return Verdict(
            detail="batch accepted with an unexpected reply: " + body[:200].decode("utf-8", "replace")
        )
    retry: list[int] = []
    refused: list[int] = []
    for i, item in enumerate(items[:count]):
        status = item.get("status") if isinstance(item, dict) else None
        if not isinstance(status, int) or status == 0 or 200 <= status <= 299:
            continue
        (retry if is_retryable(status) else refused).append(i)
    if not refused:
        return Verdict(retry=retry)
    first = items[refused[0]]
    detail = f"event refused ({first['status']}): {first.get('error') or ''}"
    return Verdict(len(refused), retry, detail)


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
        tls: TlsOptions | None = None,
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
        self.implementation = "libhoney"
        self.load_error: str | None = None
        self._exporter: Exporter | None = None
        self._libhoney: LibhoneySender | None = None
        if encoder == "native":
            self.body_encoder = BatchEncoder(service_name)
            self._exporter = Exporter(
                self.name,
                self.url,
                logger=log,
                content_type="application/json",
                encode=self._encode,
                merge=JoinedBody.concat,
                read_reply=read_statuses,
                headers={"X-Honeycomb-Team": api_key},
                compression=compression,
                timeout=timeout,
                retry=retry,
                tls=tls,
                max_bytes=max_batch_bytes,
                max_items=max_batch_events,
                secrets=(api_key,),
                noun="events",
            )
            self.implementation = self.body_encoder.implementation
            # Two senders: one compresses and encodes while the other's POST is in flight.
            self.concurrency = 2
            self.load_error = self.body_encoder.load_error
        else:
            from .honeycomb_libhoney import LibhoneySender

            if compression.lower() != "gzip":
                log.warning("honeycomb: the libhoney encoder always sends gzip (asked for %s)", compression)
            self._libhoney = LibhoneySender(
                api_key,
                dataset,
                self.api_host,
                functools.partial(event_fields, service_name=service_name),
                timeout,
                retry,
                libhoney_batch_size,
                libhoney_send_frequency,
                libhoney_max_pending,
                libhoney_concurrency,
                RateLimitedLog(log, 60.0, secrets=(api_key,)),
                tls,
            )

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        """Native: post now and return the spans not delivered. libhoney: queue and
        return the spans that could not be queued (outcomes show in ``stats``)."""
        if not spans:
            return 0
        if self._exporter is not None:
            return self._exporter.export(spans, deadline)
        assert self._libhoney is not None
        return self._libhoney.send(spans, deadline)

    def start(self) -> None:
        if self._libhoney is not None:
            self._libhoney.start()

    def flush(self, timeout: float) -> None:
        """Native: nothing is buffered (``send`` posts before it returns)."""
        if self._libhoney is not None:
            self._libhoney.flush(timeout)

    def close(self) -> None:
        if self._exporter is not None:
            self._exporter.close()
        if self._libhoney is not None:
            self._libhoney.close()

    def stats(self) -> dict[str, int]:
        if self._exporter is not None:
            return self._exporter.stats()
        assert self._libhoney is not None
        return self._libhoney.stats()

    def _encode(self, spans: Sequence[SpanRecord]) -> JoinedBody:
        return self.body_encoder.encode(spans)

    def __repr__(self) -> str:  # no key in any repr
        return f"HoneycombSink(url={self.url!r}, encoder={self.encoder!r})"
