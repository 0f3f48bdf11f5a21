"""Zipkin sink: spans to a Zipkin collector (``POST /api/v2/spans``).

Three encoders behind one sink:

* ``native`` (default): the Zipkin protobuf ``ListOfSpans`` encoded straight from
  the SpanRecords (``_zipkin_proto``, compiled; ``encoding.zipkin_proto`` where it is
  not built), POSTed on a keep-alive connection. Its bytes are what the SDK path below
  gives for the same spans.
* ``sdk``: ``opentelemetry.sdk.trace.ReadableSpan`` objects handed to the stock
  ``opentelemetry-exporter-zipkin-proto-http`` exporter (``zipkin_sdk``).
* ``json``: Zipkin JSON v2, the same content as the protobuf.

Every span is a SERVER span of the sink's service with the attributes as tags;
arrays are tagged with their compact JSON text (the exporter would turn an array
of objects into ``[]``). Delivery, retries (``exporter.RetryPolicy``, from
``backoff_initial`` up to ``backoff_max``) and counters are the ``Exporter``'s.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from .. import __version__
from ..errors import ConfigError
from ..model import SpanRecord
from .encoding.zipkin import JsonEncoder, ProtoBodyEncoder, ZipkinBodyEncoder, merge_bodies
from .exporter import Exporter, RetryPolicy

if TYPE_CHECKING:
    from .tls import TlsOptions
    from .zipkin_sdk import SdkSender

log = logging.getLogger("vault_observe.zipkin")

ENCODERS = ("native", "sdk", "json")
DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"
SCOPE_NAME = "vault-observe"


class ZipkinSink:
    """A Sink (see ``base.Sink``) for a Zipkin collector.

    ``stats()``: ``sent``/``failed`` spans, ``unencodable``, ``retries``, ``batches``
    (request bodies posted) and ``bytes`` (on the wire, gzipped when ``gzip``).
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
        tls: TlsOptions | None = None,
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
        self._body: ZipkinBodyEncoder | None = None
        self.load_error: str | None = None
        content_type = "application/x-protobuf"
        if encoder != "sdk":
            body_encoder: Callable[[str, str, str], ZipkinBodyEncoder] = (
                ProtoBodyEncoder if encoder == "native" else JsonEncoder
            )
            self._body = body_encoder(service_name, SCOPE_NAME, __version__)
            self.load_error = self._body.load_error
            content_type = self._body.content_type
            # Two senders: one encodes the next batch while the other's POST is in flight.
            self.concurrency = 2
            self.implementation = self._body.implementation
        self._exporter = Exporter(
            self.name,
            endpoint,
            logger=log,
            content_type=content_type,
            encode=self._encode,
            merge=functools.partial(merge_bodies, content_type),
            headers=headers,
            compression="gzip" if gzip else "none",
            timeout=timeout,
            retry=RetryPolicy(initial=backoff_initial, maximum=backoff_max),
            tls=tls,
            secrets=(headers or {}).values(),
        )
        self._sdk: SdkSender | None = None
        if encoder == "sdk":
            from .zipkin_sdk import SdkPath, SdkSender

            self._sdk = SdkSender(
                SdkPath(
                    endpoint, service_name, timeout, scope_name=SCOPE_NAME, gzip=gzip, headers=headers, tls=tls
                ),
                self._exporter,
            )
            self.implementation = "sdk"

    # -- the Sink protocol

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        if self._sdk is not None:
            return self._sdk.send(spans, deadline)
        return self._exporter.export(spans, deadline)

    def start(self) -> None:
        self._exporter.start()
        if self._sdk is not None:
            self._sdk.start()

    def flush(self, timeout: float) -> None:
        """Nothing is buffered here: ``send`` delivers or gives up before it returns."""

    def close(self) -> None:
        self._exporter.close()  # ends a backoff wait at once
        if self._sdk is not None:
            self._sdk.close()

    def stats(self) -> dict[str, int]:
        return self._exporter.stats()

    def _encode(self, spans: Sequence[SpanRecord]) -> bytes:
        assert self._body is not None
        return self._body.encode(spans)


class ZipkinSettings(Protocol):
    """The part of the daemon's Config that the Zipkin sink reads."""

    zipkin: str | None
    zipkin_encoder: str
    zipkin_compression: str
    service_name: str
    send_timeout: float | None


def make_zipkin_sink(config: ZipkinSettings, tls: TlsOptions | None = None) -> ZipkinSink:
    return ZipkinSink(
        config.zipkin or DEFAULT_ENDPOINT,
        encoder=config.zipkin_encoder,
        service_name=config.service_name,
        timeout=config.send_timeout or 10.0,
        gzip=config.zipkin_compression == "gzip",
        tls=tls,
    )
