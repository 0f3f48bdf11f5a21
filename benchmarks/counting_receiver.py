"""A loopback receiver for benchmarks, in its own process: it counts what arrives.

Zipkin (protobuf ``ListOfSpans`` or JSON v2 on ``/api/v2/spans``), Honeycomb
(``/1/batch/<dataset>``, answered with the per-event status array) and OTLP/HTTP
JSON (``/v1/traces``). Bodies may be gzip or zstd. Counting instead of keeping keeps the receiver from being
the bottleneck (JSON bodies are validated by simdjson, without building Python
objects); the tests check the content, the benchmarks check the count.
"""

from __future__ import annotations

import gzip
import multiprocessing
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection
from typing import Any

import orjson

try:  # validates the whole document without one Python object per value
    import simdjson
except ImportError:  # pragma: no cover - pysimdjson is a build dependency
    simdjson = None

try:  # ISA-L inflates several times faster than zlib: the receiver shares the cores
    from isal.isal_zlib import decompress as _inflate
except ImportError:  # pragma: no cover - platforms without an isal wheel
    _inflate = None

try:
    import zstandard
except ImportError:  # pragma: no cover - a dependency of vault-observe
    zstandard = None


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """The request body with its Content-Encoding (gzip, zstd) undone."""
    if encoding == "gzip":
        return _inflate(body, wbits=31) if _inflate is not None else gzip.decompress(body)
    if encoding == "zstd":
        if zstandard is None:
            raise ValueError("zstd body and no zstandard module")
        return zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 30)
    if encoding:
        raise ValueError(f"unknown Content-Encoding {encoding!r}")
    return body

_parsers = threading.local()


def count_json_array(body: bytes) -> int:
    """The length of a JSON array body (the whole body is validated)."""
    if simdjson is None:
        return len(orjson.loads(body))
    parser = _parsers.__dict__.setdefault("parser", simdjson.Parser())
    doc = parser.parse(body)
    try:
        return len(doc)
    finally:
        del doc  # the parser is reused: no proxy may outlive the call


def count_otlp_spans(body: bytes) -> int:
    """The spans of an OTLP/HTTP JSON request (the whole body is validated)."""
    if simdjson is None:
        message = orjson.loads(body)
        return sum(len(scope["spans"]) for rs in message["resourceSpans"] for scope in rs["scopeSpans"])
    parser = _parsers.__dict__.setdefault("parser", simdjson.Parser())
    doc = parser.parse(body)
    try:
        return sum(len(scope["spans"]) for rs in doc["resourceSpans"] for scope in rs["scopeSpans"])
    finally:
        del doc


def count_proto_spans(body: bytes) -> int:
    """Top-level field 1 (``spans``) entries of a ListOfSpans, without decoding them."""
    count = 0
    pos = 0
    end = len(body)
    while pos < end:
        tag = body[pos]
        pos += 1
        if tag != 0x0A:
            raise ValueError(f"unexpected field tag {tag:#x}")
        length = 0
        shift = 0
        while True:
            byte = body[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        pos += length
        count += 1
    if pos != end:
        raise ValueError("truncated ListOfSpans")
    return count


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0
        self.errors = 0


def _serve(conn: Connection) -> None:
    counts = _Counts()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The reply goes out as two writes (headers, then body): with Nagle's
        # algorithm the body waits for the client's delayed ACK, about 40 ms a request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            reply = b""
            try:
                body = decode_body(body, self.headers.get("Content-Encoding"))
                if self.path == "/api/v2/spans":
                    if self.headers.get("Content-Type", "").startswith("application/x-protobuf"):
                        n = count_proto_spans(body)
                    else:
                        n = count_json_array(body)
                elif self.path.startswith("/1/batch/"):
                    n = count_json_array(body)
                    reply = b"[" + b",".join([b'{"status":202}'] * n) + b"]"
                elif self.path == "/v1/traces":
                    n = count_otlp_spans(body)
                    reply = b"{}"
                else:
                    raise ValueError(self.path)
            except Exception:
                with counts.lock:
                    counts.errors += 1
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with counts.lock:
                counts.spans += n
                counts.requests += 1
            self.send_response(202 if reply else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn.send(server.server_address[1])
    while True:
        command = conn.recv()
        if command == "stop":
            break
        with counts.lock:
            conn.send({"spans": counts.spans, "requests": counts.requests, "errors": counts.errors})
            if command == "reset":
                counts.spans = counts.requests = counts.errors = 0
    server.shutdown()


class CountingReceiver:
    """Context manager: ``port``, ``counts()``, ``reset()`` (returns the counts before)."""

    def __enter__(self) -> CountingReceiver:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()
        self.port: int = self._conn.recv()
        return self

    def counts(self) -> dict[str, int]:
        self._conn.send("count")
        result: dict[str, int] = self._conn.recv()
        return result

    def reset(self) -> dict[str, int]:
        self._conn.send("reset")
        result: dict[str, int] = self._conn.recv()
        return result

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
