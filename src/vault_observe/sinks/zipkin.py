"""Zipkin sink: spans to a Zipkin collector (``POST /api/v2/spans``).

Three encoders behind one sink:

* ``native`` (default): the Zipkin protobuf ``ListOfSpans`` encoded straight from
  the SpanRecords (``_zipkin_proto``, compiled; ``encoding.zipkin_proto`` where it is
  not built), POSTed on a keep-alive connection. Its bytes are what the SDK path below
  gives for the same spans.
* ``sdk``: ``opentelemetry.sdk.trace.ReadableSpan`` objects handed to the stock
  ``opentelemetry-exporter-zipkin-proto-http`` exporter. ReadableSpans are built
  directly rather than through a tracer: that keeps the ids, times and every
  attribute (no 128-attribute limit), and skips a per-span ``Resource.create``.
* ``json``: Zipkin JSON v2, the same content as the protobuf.

Every span is a SERVER span of the sink's service with the attributes as tags;
arrays are tagged with their compact JSON text (the exporter would turn an array
of objects into ``[]``). Connection errors, 408, 429 and 5xx are retried with
capped exponential backoff until the ``deadline`` given to ``send``; other 4xx are
permanent. Failures are counted, never raised.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from .. import __version__
from ..errors import ConfigError
from ..model import SpanRecord
from ..ratelog import RateLimitedLog
from .compression import gzip_compress
from .encoding.zipkin import EncoderFactory, JsonEncoder, ZipkinBodyEncoder, merge_bodies, proto_encoder_class
from .encoding.zipkin_proto import loads_attrs
from .isolate import EncodeGuard
from .transport import TRANSIENT_ERRORS, Transport

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("vault_observe.zipkin")

ENCODERS = ("native", "sdk", "json")
DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"
SCOPE_NAME = "vault-observe"
SUCCESS_STATUSES = range(200, 300)
RETRY_STATUSES = frozenset((408, 429))  # and every 5xx

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class HttpPoster:
    """POSTs bodies to one URL (see ``transport.Transport``), gzipped when asked."""

    def __init__(
        self, url: str, content_type: str, *, gzip: bool = False, headers: Mapping[str, str] | None = None
    ) -> None:
        fixed = {"Content-Type": content_type}
        if gzip:
            fixed["Content-Encoding"] = "gzip"
        self._gzip = gzip
        self.transport = Transport(url, {**fixed, **(headers or {})})

    def body(self, payload: bytes) -> bytes:
        """What goes on the wire for ``payload``."""
        if not self._gzip:
            return payload
        return gzip_compress(payload)

    def post(self, body: bytes, timeout: float) -> int:
        """The response status; raises one of TRANSIENT_ERRORS when there is none."""
        return self.transport.post(body, timeout).status

    def close(self) -> None:
        self.transport.close()


class _Unencodable(Exception):
    """The SDK exporter failed on a span before sending anything."""


class _OncePerInterval(logging.Filter):
    """Lets one record through per ``interval`` seconds: the exporter logs every
    failed POST at ERROR, retries included, and the sink logs failures itself."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._interval = interval
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        return True


EXPORTER_LOGGER = "opentelemetry.exporter.zipkin.proto.http"
_exporter_log_filter = _OncePerInterval()  # one for every sink of the process


class SdkPath:
    """ReadableSpans for the stock ``opentelemetry-exporter-zipkin-proto-http``."""

    def __init__(
        self, url: str, service_name: str, timeout: float, *, gzip: bool, headers: Mapping[str, str] | None
    ) -> None:
        import requests
        from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._SpanContext = SpanContext
        self._Status = Status
        self._ERROR = StatusCode.ERROR
        self._unset = Status(StatusCode.UNSET)
        self._server = SpanKind.SERVER
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self.resource = Resource({"service.name": service_name})  # one for all spans
        self.scope = InstrumentationScope(SCOPE_NAME, __version__)

        class RecordingClient(requests.Session):
            """Keeps the status and size of the last POST (the exporter only says
            SUCCESS or FAILURE); gzips the body when asked."""

            last_status: int | None = None
            last_size = 0

            def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
                data = kwargs.get("data")
                if gzip and isinstance(data, bytes):
                    kwargs["data"] = data = gzip_compress(data)
                    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Content-Encoding": "gzip"}
                self.last_status = None
                self.last_size = len(data) if isinstance(data, bytes) else 0
                response = super().request(method, url, *args, **kwargs)
                self.last_status = response.status_code
                return response

        self.http = RecordingClient()
        self.http.headers.update(headers or {})
        self.exporter = ZipkinExporter(endpoint=url, timeout=max(1, round(timeout)), session=self.http)
        self._success = SpanExportResult.SUCCESS
        self._closed = False
        logging.getLogger(EXPORTER_LOGGER).addFilter(_exporter_log_filter)  # added once

    def readable(self, record: SpanRecord) -> ReadableSpan:
        from opentelemetry.sdk.trace import ReadableSpan

        if len(record.trace_id) != 16:
            raise ValueError("trace_id must be 16 bytes")
        trace_id = int.from_bytes(record.trace_id, "big")
        context = self._SpanContext(trace_id, record.span_id, is_remote=False, trace_flags=self._sampled)
        parent = None
        if record.parent_span_id:
            parent = self._SpanContext(
                trace_id, record.parent_span_id, is_remote=False, trace_flags=self._sampled
            )
        # loads_attrs reads any nesting the cores accept (json.loads stops near 990 levels)
        attributes = {
            key: _dumps(value) if isinstance(value, list) else value
            for key, value in loads_attrs(record.attrs_json).items()
            if value is not None
        }
        status = self._Status(self._ERROR, record.error) if record.error else self._unset
        return ReadableSpan(
            record.name,
            context,
            parent,
            self.resource,
            attributes,
            kind=self._server,
            status=status,
            start_time=record.start_ns,
            end_time=record.end_ns,
            instrumentation_scope=self.scope,
        )

    def post(self, spans: Sequence[ReadableSpan], timeout: float) -> int:
        self.exporter.timeout = timeout  # type: ignore[assignment]  # requests takes a float
        try:
            # The exporter's hints say trace.Span; a ReadableSpan has all it reads.
            result = self.exporter.export(spans)  # type: ignore[arg-type]
        except OSError:  # requests' errors are OSErrors
            raise
        except Exception as exc:
            raise _Unencodable(str(exc)) from exc
        status = self.http.last_status
        if status is None:  # nothing was sent (exporter shut down)
            return 200 if result is self._success else 400
        return status

    def encodable(self, span: ReadableSpan) -> bool:
        try:
            self.exporter.encoder.serialize([span], self.exporter.local_node)  # type: ignore[list-item]
        except Exception:
            return False
        return True

    def close(self) -> None:
        if self._closed:  # the exporter warns when shut down twice
            return
        self._closed = True
        self.exporter.shutdown()


class ZipkinSink:
    """A Sink (see ``base.Sink``) for a Zipkin collector.

    ``stats()``: ``sent``/``failed`` spans, ``retries`` (requests repeated after a
    retryable failure), ``batches`` and ``bytes`` (body bytes on the wire, gzipped
    when ``gzip``) of the requests the collector accepted.
    """

    name = "zipkin"
    concurrency = 1  # senders the daemon may run at once (2 for the body encoders)

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        encoder: str = "native",
        service_name: str = "vault",
        timeout: float = 10.0,
        gzip: bool = False,
        headers: Mapping[str, str] | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        rate_log: RateLimitedLog | None = None,
    ) -> None:
        if encoder not in ENCODERS:
            raise ConfigError(
                f"unknown Zipkin encoder; expected one of {', '.join(ENCODERS)}",
                setting="zipkin_encoder",
                value=encoder,
            )
        if not service_name:
            raise ConfigError("the service name must not be empty", setting="service_name", value=service_name)
        if not timeout > 0:
            raise ConfigError("must be greater than 0", setting="send_timeout", value=timeout)
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "not an http(s) URL; expected e.g. http://localhost:9411/api/v2/spans",
                setting="zipkin",
                value=endpoint,
            )
        self.endpoint = endpoint
        self.encoder = encoder
        self.service_name = service_name
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._log = rate_log or RateLimitedLog(log, 60.0)
        self._guard = EncodeGuard(self.name, self._log)
        self._closing = threading.Event()
        self._counts = {"sent": 0, "failed": 0, "retries": 0, "batches": 0, "bytes": 0}
        self._lock = threading.Lock()  # senders may run in several threads at once
        self._local = threading.local()  # what the current send has counted failed
        self._sdk: SdkPath | None = None
        self._body: ZipkinBodyEncoder | None = None
        self._poster: HttpPoster | None = None
        self.load_error: str | None = None
        if encoder == "sdk":
            self._sdk = SdkPath(endpoint, service_name, timeout, gzip=gzip, headers=headers)
            self.implementation = "sdk"
        else:
            factory: EncoderFactory = JsonEncoder
            if encoder == "native":
                factory, self.load_error = proto_encoder_class()
            self._body = factory(service_name, SCOPE_NAME, __version__)
            self._poster = HttpPoster(endpoint, self._body.content_type, gzip=gzip, headers=headers)
            # Two senders: one encodes the next batch while the other's POST is in flight.
            self.concurrency = 2
            self.implementation = str(getattr(self._body, "implementation", "py"))

    # -- the Sink protocol

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if not spans:
            return 0
        self._local.failed = 0
        try:
            if self._sdk is not None:
                delivered = self._send_sdk(spans, deadline)
            else:
                delivered = self._send_body(spans, deadline)
        except Exception:  # a bug must not take the worker down: count and log it
            log.exception("zipkin: unexpected error; %d spans dropped", len(spans))
            delivered = 0
            self._count(failed=len(spans) - self._local.failed)
        return len(spans) - delivered

    def start(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        """Nothing is buffered here: ``send`` delivers or gives up before it returns."""

    def close(self) -> None:
        self._closing.set()  # ends a backoff wait at once
        if self._poster is not None:
            self._poster.close()
        if self._sdk is not None:
            self._sdk.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "unencodable": self._guard.unencodable}

    # -- internals

    def _send_body(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        assert self._body is not None and self._poster is not None
        body_encoder, poster = self._body, self._poster
        payload, dropped = self._guard.encode(
            body_encoder.encode, spans, functools.partial(merge_bodies, body_encoder.content_type)
        )
        if dropped:
            self._count(failed=dropped)
        count = len(spans) - dropped
        if payload is None or not count:
            return 0
        body = poster.body(payload)
        return self._deliver(lambda timeout: poster.post(body, timeout), len(body), count, deadline)

    def _send_sdk(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        sdk = self._sdk
        assert sdk is not None
        readables = []
        for span in spans:
            try:
                readables.append(sdk.readable(span))
            except Exception as exc:
                self._unencodable(span, exc)
        while readables:
            post = functools.partial(sdk.post, readables)
            try:
                return self._deliver(post, lambda: sdk.http.last_size, len(readables), deadline)
            except _Unencodable as exc:
                good = []
                for readable in readables:
                    if sdk.encodable(readable):
                        good.append(readable)
                    else:
                        self._unencodable(
                            None, exc, f"{readable.name!r}, trace id {readable.context.trace_id:032x}"
                        )
                readables = good
        return 0

    def _count(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount
        if "failed" in amounts:
            self._local.failed = getattr(self._local, "failed", 0) + amounts["failed"]

    def _unencodable(self, span: SpanRecord | None, exc: BaseException, what: str | None = None) -> None:
        self._count(failed=1)
        self._guard.drop(span, exc, what)

    def _deliver(
        self, post: Callable[[float], int], size: int | Callable[[], int], count: int, deadline: float
    ) -> int:
        """POST until accepted, refused, or out of time; how many spans went through."""
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.is_set():
                return self._give_up(count, attempt, "out of time" if remaining <= 0 else "closing")
            try:
                status = post(min(self.timeout, remaining))
            except TRANSIENT_ERRORS as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                if status in SUCCESS_STATUSES:
                    self._count(sent=count, batches=1, bytes=size if isinstance(size, int) else size())
                    return count
                if status not in RETRY_STATUSES and status < 500:
                    self._count(failed=count)
                    self._log(
                        f"status-{status}",
                        logging.ERROR,
                        "zipkin: %s refused %d spans with HTTP %d; not retrying",
                        self.endpoint,
                        count,
                        status,
                    )
                    return 0
                reason = f"HTTP {status}"
            # Capped exponential backoff, shortened by up to a fifth at random so that
            # senders (and daemons) that failed together do not retry in step.
            delay = min(self.backoff_max, self.backoff_initial * (2 ** min(attempt, 32)))
            delay *= 1.0 - 0.2 * random.random()
            if time.monotonic() + delay >= deadline:
                return self._give_up(count, attempt + 1, reason)
            if self._closing.wait(delay):
                return self._give_up(count, attempt + 1, "closing")
            attempt += 1
            self._count(retries=1)

    def _give_up(self, count: int, attempts: int, reason: str) -> int:
        self._count(failed=count)
        self._log(
            "give-up",
            logging.WARNING,
            "zipkin: %d spans not delivered to %s after %d attempts (%s)",
            count,
            self.endpoint,
            attempts,
            reason,
        )
        return 0


class ZipkinSettings(Protocol):
    """The part of the daemon's Config that the Zipkin sink reads."""

    zipkin: str | None
    zipkin_encoder: str
    zipkin_compression: str
    service_name: str
    send_timeout: float | None


def make_zipkin_sink(config: ZipkinSettings) -> ZipkinSink:
    return ZipkinSink(
        config.zipkin or DEFAULT_ENDPOINT,
        encoder=config.zipkin_encoder,
        service_name=config.service_name,
        timeout=config.send_timeout or 10.0,
        gzip=config.zipkin_compression == "gzip",
    )
