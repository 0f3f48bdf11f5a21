"""Loopback receivers that decode the real wire formats: Zipkin, Honeycomb, OTLP/HTTP JSON.

Each runs a ThreadingHTTPServer on 127.0.0.1 with an ephemeral port, keeps what it
decoded, and can be told to fail (``fail_with``), to stall (``delay``), or to answer
a number of requests with an error before it recovers (``fail_next``). To refuse
connections, close it and later start another on the same ``port``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class Receiver:
    """Base: an HTTP server on 127.0.0.1 that hands each POST body to ``decode``."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # path, headers, raw size, client address
        self.fail_with: int | None = None  # answer every request with this status
        self.fail_next = 0  # answer this many requests with ``fail_status``
        self.fail_status = 503  # a transient failure: every sink retries it
        self.delay = 0.0  # seconds to wait before answering
        self.errors: list[str] = []  # decode errors (a test should assert this stays empty)
        self.connections: set[socket.socket] = set()  # open keep-alive connections
        self.busy: set[socket.socket] = set()  # ... that are in a request
        self.closed = False
        self.scheme = "http"  # https once ``tls_receiver.serve_tls`` wraps it
        self.handshake_errors: list[str] = []  # TLS handshakes refused (kept by serve_tls)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with receiver.lock:
                    receiver.connections.add(self.connection)

            def finish(self) -> None:
                with receiver.lock:
                    receiver.connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                with receiver.lock:
                    receiver.busy.add(self.connection)
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = self.rfile.read(length)
                    receiver.handle(self, body)
                finally:
                    with receiver.lock:
                        receiver.busy.discard(self.connection)
                        if receiver.closed:  # answered; now like the others
                            self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        # and the keep-alive connections, which their handler threads would go on serving
        # (one in a request is answered first, then closed)
        with self.lock:
            self.closed = True
            connections = list(self.connections - self.busy)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.requests.append(
                {
                    "path": handler.path,
                    "headers": dict(handler.headers),
                    "size": len(body),
                    "client": handler.client_address,  # one per connection
                }
            )
            status: int | None = self.fail_with
            if status is None and self.fail_next > 0:
                self.fail_next -= 1
                status = self.fail_status
        if status is not None:
            self.reply(handler, status, b'{"error":"injected failure"}')
            return
        encoding = handler.headers.get("Content-Encoding", "")
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "zstd":
                import zstandard

                body = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
            reply = self.decode(handler, body)
        except Exception as exc:  # a decode failure is a test failure: keep it
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.reply(handler, 400, b'{"error":"cannot decode"}')
            return
        self.reply(handler, 202, reply)

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        raise NotImplementedError

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        with self.lock:
            return predicate()


class ZipkinReceiver(Receiver):
    """``POST /api/v2/spans``: protobuf ListOfSpans (decoded with the exporter's own
    ``zipkin_pb2``) or JSON v2. ``spans`` holds one dict per span in JSON v2 shape
    (ids as lower-case hex)."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.spans: list[dict[str, Any]] = []
        self.content_types: list[str] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/v2/spans"

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        content_type = handler.headers.get("Content-Type", "")
        if handler.path != "/api/v2/spans":
            raise ValueError(f"unexpected path {handler.path}")
        if content_type.startswith("application/x-protobuf"):
            spans = decode_zipkin_proto(body)
        elif content_type.startswith("application/json"):
            spans = json.loads(body)
        else:
            raise ValueError(f"unexpected content type {content_type!r}")
        with self.lock:
            self.content_types.append(content_type)
            self.spans.extend(spans)
        return b""


def decode_zipkin_proto(body: bytes) -> list[dict[str, Any]]:
    from opentelemetry.exporter.zipkin.proto.http.v2.gen import zipkin_pb2

    message = zipkin_pb2.ListOfSpans()
    message.ParseFromString(body)
    kinds = {0: None, 1: "CLIENT", 2: "SERVER", 3: "PRODUCER", 4: "CONSUMER"}
    out = []
    for span in message.spans:
        item: dict[str, Any] = {
            "traceId": span.trace_id.hex(),
            "id": span.id.hex(),
            "name": span.name,
            "timestamp": span.timestamp,
            "duration": span.duration,
            "tags": dict(span.tags),
            "debug": span.debug,
        }
        if span.parent_id:
            item["parentId"] = span.parent_id.hex()
        if kinds[span.kind]:
            item["kind"] = kinds[span.kind]
        if span.HasField("local_endpoint"):
            item["localEndpoint"] = {"serviceName": span.local_endpoint.service_name}
        if span.annotations:
            item["annotations"] = [{"timestamp": a.timestamp, "value": a.value} for a in span.annotations]
        out.append(item)
    return out


class HoneycombReceiver(Receiver):
    """``POST /1/batch/<dataset>`` with ``X-Honeycomb-Team``: answers the per-event
    status array. ``events`` holds ``{"dataset", "time", "samplerate", "data"}``."""

    def __init__(self, api_key: str = "test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.events: list[dict[str, Any]] = []

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        if not handler.path.startswith("/1/batch/"):
            raise ValueError(f"unexpected path {handler.path}")
        if handler.headers.get("X-Honeycomb-Team") != self.api_key:
            raise ValueError("wrong or missing X-Honeycomb-Team")
        dataset = handler.path[len("/1/batch/") :]
        batch = json.loads(body)
        if not isinstance(batch, list):
            raise ValueError("batch body is not a JSON array")
        with self.lock:
            for event in batch:
                if not isinstance(event.get("data"), dict):
                    raise ValueError("event without data")
                self.events.append({"dataset": dataset, **event})
        return json.dumps([{"status": 202} for _ in batch]).encode()


class OtlpReceiver(Receiver):
    """``POST /v1/traces`` with OTLP/HTTP JSON (``ExportTraceServiceRequest``).
    ``spans`` holds each span dict with its resource and scope attached."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/traces"

    def decode(self, handler: BaseHTTPRequestHandler, body: bytes) -> bytes:
        if handler.path != "/v1/traces":
            raise ValueError(f"unexpected path {handler.path}")
        if not handler.headers.get("Content-Type", "").startswith("application/json"):
            raise ValueError("OTLP receiver here takes JSON only")
        message = json.loads(body)
        with self.lock:
            for resource_spans in message["resourceSpans"]:
                resource = resource_spans.get("resource", {})
                for scope_spans in resource_spans["scopeSpans"]:
                    for span in scope_spans["spans"]:
                        self.spans.append(
                            {**span, "_resource": resource, "_scope": scope_spans.get("scope", {})}
                        )
        return b"{}"
