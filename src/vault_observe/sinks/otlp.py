"""OTLP/HTTP JSON sink: ``ExportTraceServiceRequest`` written by hand.

The OpenTelemetry protobuf exporter cannot be installed next to the Zipkin exporter
(it needs protobuf 4+, the Zipkin one pins protobuf 3), and the JSON mapping is
small: one resource (``service.name``), one scope (``vault-observe``), one span
per record with kind SERVER, times as decimal strings, ids as hex, and each
flattened attribute as an ``AnyValue`` that keeps its JSON type: strings, 64-bit
integers (as decimal strings, per the mapping), doubles, booleans, arrays as
``arrayValue`` and objects inside arrays as ``kvlistValue``. A JSON null inside an
array becomes an empty ``AnyValue``; an integer outside int64 (JSON allows up to
uint64 here) a ``stringValue`` with its exact decimal text. Values nest as AnyValues
``MAX_VALUE_DEPTH`` (32) levels deep at most: an array or object deeper than that
becomes a ``stringValue`` holding its JSON text (a client sets the nesting of the
request body it sends to Vault, up to the cores' limit of about 1,000 levels).
Spans with an error get ``status {code: 2 (ERROR), message}``. The body is written
by the compiled ``_batch_json`` when it is built; ``encoding.otlp`` is the
reference it matches byte for byte, and its fallback.

Settings follow the exporter variables: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (as
is) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/traces``), ``..._HEADERS``
(``k=v,...``, URL-decoded), ``..._TIMEOUT`` (milliseconds) and ``..._COMPRESSION``
(``gzip`` or ``none``), and the TLS files ``..._CERTIFICATE`` (CA bundle),
``..._CLIENT_CERTIFICATE`` and ``..._CLIENT_KEY``, trace-specific ones first;
arguments override them all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

import orjson

from ..errors import ConfigError
from ..model import SpanRecord
from .encoding.otlp import BodyEncoder
from .encoding.wire import JoinedBody
from .exporter import Exporter, RetryPolicy, Verdict
from .tls import TlsOptions

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "vault"
# Collectors commonly refuse bodies over a few MiB; split well below.
MAX_BATCH_BYTES = 4_000_000
MAX_BATCH_SPANS = 512


def _env_named(environ: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """(the variable that gives ``name``, its value or None): the traces one first."""
    for variable in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = environ.get(variable)
        if value is not None and value.strip():
            return variable, value.strip()
    return f"OTEL_EXPORTER_OTLP_{name}", None


# What this sink speaks (OTLP/HTTP with JSON bodies) and exporter settings it cannot
# honour: a variable set to anything else is an error, never silently ignored.
SUPPORTED_PROTOCOL = "http/json"
UNSUPPORTED_SETTINGS = ("INSECURE",)  # for gRPC exporters only
# TlsOptions field -> the exporter variable that gives it (after OTEL_EXPORTER_OTLP_[TRACES_])
TLS_VARIABLES = {"ca_file": "CERTIFICATE", "cert_file": "CLIENT_CERTIFICATE", "key_file": "CLIENT_KEY"}


def resolve_tls(tls: TlsOptions | None, environ: Mapping[str, str]) -> TlsOptions:
    """``tls`` (the flags) with each file it leaves out taken from the exporter variables."""
    given = tls or TlsOptions()
    files: dict[str, str | None] = {}
    settings: dict[str, str] = {}
    for name, variable in TLS_VARIABLES.items():
        files[name] = getattr(given, name)
        settings[name] = given.settings.get(name, name)
        if not files[name]:
            from_env, files[name] = _env_named(environ, variable)
            if files[name]:
                settings[name] = from_env
    return TlsOptions(**files, settings=settings)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse exporter variables whose value this sink cannot honour."""
    variable, protocol = _env_named(environ, "PROTOCOL")
    if protocol is not None and protocol.lower() != SUPPORTED_PROTOCOL:
        raise ConfigError(
            f"vault-observe sends OTLP/HTTP with JSON bodies only: unset it or set it to "
            f"{SUPPORTED_PROTOCOL} (a collector's OTLP/HTTP receiver, port 4318, takes both)",
            setting=variable,
            value=protocol,
        )
    for name in UNSUPPORTED_SETTINGS:
        variable, value = _env_named(environ, name)
        if value is not None:
            raise ConfigError(
                "applies to OTLP/gRPC only, and vault-observe sends OTLP/HTTP: unset it (for TLS to "
                "the collector use an https:// endpoint; OTEL_EXPORTER_OTLP_CERTIFICATE names its CA)",
                setting=variable,
                value=value,
            )


def resolve_endpoint_named(endpoint: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """(the endpoint, the setting that gave it: ``otlp`` or a variable)."""
    if endpoint:
        return endpoint, "otlp"
    variable, value = _env_named(environ, "ENDPOINT")
    if value is None:
        return DEFAULT_ENDPOINT, "otlp"
    if variable == "OTEL_EXPORTER_OTLP_ENDPOINT":  # the base URL: the traces path goes after it
        value += "v1/traces" if value.endswith("/") else "/v1/traces"
    return value, variable


class OtlpSink:
    """Posts spans as OTLP/HTTP JSON; see the module docstring."""

    name = "otlp"

    concurrency = 1

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        compression: str | None = None,
        service_name: str = DEFAULT_SERVICE_NAME,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_batch_spans: int = MAX_BATCH_SPANS,
        retry: RetryPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        tls: TlsOptions | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        check_environment(env)
        self.tls = resolve_tls(tls, env)
        self.tls.check()
        self.endpoint, endpoint_setting = resolve_endpoint_named(endpoint, env)
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                "not an http(s) URL; expected e.g. http://localhost:4318/v1/traces",
                setting=endpoint_setting,
                value=env[endpoint_setting].strip() if endpoint_setting.isupper() else self.endpoint,
            )
        headers_variable, header_text = _env_named(env, "HEADERS")
        try:
            merged = parse_headers(header_text or "")
        except ConfigError as exc:
            raise ConfigError(exc.reason, setting=headers_variable) from None
        merged.update({k.lower(): v for k, v in (headers or {}).items()})
        if timeout is None:
            timeout_variable, text = _env_named(env, "TIMEOUT")
            try:
                timeout = float(text) / 1000 if text else 10.0
            except ValueError:
                raise ConfigError(
                    "expected milliseconds, such as 10000", setting=timeout_variable, value=text
                ) from None
            if not timeout > 0:
                raise ConfigError("must be greater than 0", setting=timeout_variable, value=text)
        if timeout <= 0:
            raise ConfigError("must be greater than 0", setting="send_timeout", value=timeout)
        compression_variable, compression_text = _env_named(env, "COMPRESSION")
        compression = compression or compression_text or "none"
        if compression.lower() not in ("gzip", "none"):
            raise ConfigError("expected gzip or none", setting=compression_variable, value=compression)
        if max_batch_bytes < 1024 or max_batch_spans < 1:
            raise ConfigError("otlp: batch limits too small")
        self.encoder = BodyEncoder(service_name)
        self.implementation = self.encoder.implementation
        self.load_error = self.encoder.load_error
        for fixed in ("content-type", "content-encoding"):  # the exporter's own
            merged.pop(fixed, None)
        self._exporter = Exporter(
            self.name,
            self.endpoint,
            logger=log,
            content_type="application/json",
            encode=self._encode,
            merge=JoinedBody.concat,
            read_reply=read_partial_success,
            headers=merged,
            compression=compression.lower(),
            timeout=timeout,
            retry=retry,
            tls=self.tls,
            max_bytes=max_batch_bytes,
            max_items=max_batch_spans,
            # Header values often carry credentials: mask them all in the log.
            secrets=[v for v in merged.values() if len(v) >= 4],
        )

    def send(self, spans: Sequence[SpanRecord], deadline: float) -> int:
        return self._exporter.export(spans, deadline)

    def start(self) -> None:
        self._exporter.start()

    def flush(self, timeout: float) -> None:
        pass  # nothing is buffered: ``send`` posts before it returns

    def close(self) -> None:
        self._exporter.close()

    def stats(self) -> dict[str, int]:
        return self._exporter.stats()

    def _encode(self, spans: Sequence[SpanRecord]) -> JoinedBody:
        return self.encoder.encode(spans)

    def __repr__(self) -> str:  # headers may hold credentials: not shown
        return f"OtlpSink(endpoint={self.endpoint!r})"


def read_partial_success(body: bytes, count: int) -> Verdict:
    """``ExportTraceServiceResponse.partialSuccess``: the spans rejected, and why."""
    if not body.strip():
        return Verdict()
    try:
        reply = orjson.loads(body)
        partial = reply.get("partialSuccess") or {}
        rejected = int(partial.get("rejectedSpans") or 0)  # int64: a string in JSON
        message = str(partial.get("errorMessage") or "")
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return Verdict()  # not JSON (a proxy's text): the export itself succeeded
    if rejected <= 0:
        return Verdict()
    return Verdict(refused=min(rejected, count), detail=message or "partialSuccess")


def parse_headers(text: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` with URL-encoded keys and values (the OTLP header variables)."""
    out: dict[str, str] = {}
    for number, item in enumerate(text.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key).strip().lower()
        if not sep or not key:
            # The entry itself is not echoed: it may well be a credential.
            raise ConfigError(f"header entry {number} is not of the form name=value")
        out[key] = unquote(value).strip()
    return out
