"""The Zipkin sink's reference path (``--zipkin-encoder sdk``): ReadableSpans handed to
the stock ``opentelemetry-exporter-zipkin-proto-http`` exporter.

ReadableSpans are built directly rather than through a tracer: that keeps the ids,
times and every attribute (no 128-attribute limit), and skips a per-span
``Resource.create``. The exporter posts through ``requests``; the retries, counters
and log are the sink's ``Exporter``'s, as on the native path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..model import SpanRecord
from ..ratelog import RateLimitFilter
from .compression import gzip_compress
from .encoding.zipkin_proto import loads_attrs
from .exporter import Exporter, Reply

if TYPE_CHECKING:
    from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
    from opentelemetry.sdk.trace import ReadableSpan

    from .tls import TlsOptions

EXPORTER_LOGGER = "opentelemetry.exporter.zipkin.proto.http"
# The exporter logs every failed POST at ERROR, retries included, and the sink logs
# failures itself: one of its records a minute, for every sink of the process.
_exporter_log_filter = RateLimitFilter(60.0)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Unencodable(Exception):
    """The SDK exporter failed on a span before sending anything."""


class SdkPath:
    """ReadableSpans for the stock exporter, and its POST."""

    def __init__(
        self,
        url: str,
        service_name: str,
        timeout: float,
        *,
        scope_name: str,
        gzip: bool,
        headers: Mapping[str, str] | None,
        tls: TlsOptions | None = None,
    ) -> None:
        import opentelemetry.exporter.zipkin.proto.http  # noqa: F401 - when missing: a config error
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self._SpanContext = SpanContext
        self._Status = Status
        self._ERROR = StatusCode.ERROR
        self._unset = Status(StatusCode.UNSET)
        self._server = SpanKind.SERVER
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self.tls = tls
        self.resource = Resource({"service.name": service_name})  # one for all spans
        self.scope = InstrumentationScope(scope_name, __version__)
        self._settings = (url, timeout, gzip, dict(headers or {}))
        self._lock = threading.Lock()
        self._closed = False
        self.http: Any = None  # the RecordingClient session
        self.exporter: ZipkinExporter | None = None

    def start(self) -> None:
        """Make the exporter and its ``requests`` session (its connection pool)."""
        with self._lock:
            if self.exporter is None and not self._closed:
                self._start()

    def _start(self) -> None:
        import requests
        from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        url, timeout, gzip, headers = self._settings
        tls_kwargs = self.tls.requests_kwargs() if self.tls is not None else {}
        self._SSLError = requests.exceptions.SSLError

        class RecordingClient(requests.Session):
            """Keeps the status and size of the last POST (the exporter only says
            SUCCESS or FAILURE); gzips the body when asked; gives each POST the sink's
            CA bundle and client certificate."""

            last_status: int | None = None
            last_size = 0

            def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
                data = kwargs.get("data")
                if gzip and isinstance(data, bytes):
                    kwargs["data"] = data = gzip_compress(data)
                    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Content-Encoding": "gzip"}
                kwargs.update(tls_kwargs)
                self.last_status = None
                self.last_size = len(data) if isinstance(data, bytes) else 0
                response = super().request(method, url, *args, **kwargs)
                self.last_status = response.status_code
                return response

        self.http = RecordingClient()
        self.http.headers.update(headers)
        self._success = SpanExportResult.SUCCESS
        self.exporter = ZipkinExporter(endpoint=url, timeout=max(1, round(timeout)), session=self.http)
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
        """The answer's status; raises an OSError (requests' errors are) when none came,
        ``Unencodable`` when the exporter failed on a span."""
        assert self.exporter is not None, "start() makes the exporter"
        self.exporter.timeout = timeout  # type: ignore[assignment]  # requests takes a float
        try:
            # The exporter's hints say trace.Span; a ReadableSpan has all it reads.
            result = self.exporter.export(spans)  # type: ignore[arg-type]
        except OSError as exc:
            # in the log: OpenSSL's reason and the settings to look at
            described = self.tls.describe_failure(exc) if self.tls is not None else None
            if described is None:
                raise
            raise self._SSLError(described) from exc
        except Exception as exc:
            raise Unencodable(str(exc)) from exc
        status: int | None = self.http.last_status
        if status is None:  # nothing was sent (exporter shut down)
            return 200 if result is self._success else 400
        return status

    def encodable(self, span: ReadableSpan) -> bool:
        assert self.exporter is not None, "start() makes the exporter"
        try:
            self.exporter.encoder.serialize([span], self.exporter.local_node)  # type: ignore[list-item]
        except Exception:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:  # the exporter warns when shut down twice
                return
            self._closed = True
            exporter = self.exporter
        if exporter is not None:
            exporter.shutdown()


class SdkSender:
    """``send`` through ``SdkPath`` with the retries, counters and log of ``exporter``."""

    def __init__(self, path: SdkPath, exporter: Exporter) -> None:
        self.path = path
        self._exporter = exporter

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        """How many of ``spans`` were not delivered."""
        exporter, path = self._exporter, self.path
        if path.exporter is None:
            path.start()  # the worker starts it first; a caller of its own may not have
            if path.exporter is None:  # closed
                exporter.counts.add(failed=len(spans))
                return len(spans)
        readables = []
        for span in spans:
            try:
                readables.append(path.readable(span))
            except Exception as exc:
                exporter.guard.drop(span, exc)
        failed = len(spans) - len(readables)
        while readables:
            try:
                failed += self._deliver(readables, deadline)
                break
            except Unencodable as exc:
                good = []
                for readable in readables:
                    if path.encodable(readable):
                        good.append(readable)
                    else:
                        failed += 1
                        exporter.guard.drop(
                            None, exc, f"{readable.name!r}, trace id {readable.context.trace_id:032x}"
                        )
                readables = good
        exporter.counts.add(sent=len(spans) - failed, failed=failed)
        return failed

    def _deliver(self, readables: list[ReadableSpan], deadline: float) -> int:
        exporter, path = self._exporter, self.path

        def attempt(timeout: float) -> Reply:
            status = path.post(readables, timeout)
            exporter.counts.add(bytes=path.http.last_size)
            return Reply(status)

        exporter.counts.add(batches=1)
        reply = exporter.retrying(attempt, deadline)
        if not reply.ok:
            exporter.log_failure(reply, len(readables))
            return len(readables)
        return 0

    def start(self) -> None:
        self.path.start()

    def close(self) -> None:
        self.path.close()
