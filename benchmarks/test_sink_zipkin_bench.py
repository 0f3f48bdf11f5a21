"""Zipkin sink throughput on the shared corpus: encode + POST of every span.

Run: ``PYTHONPATH=src python -m pytest benchmarks/test_sink_zipkin_bench.py --benchmark-enable -s``
(``VAULT_OBSERVE_CORPUS`` may point at the corpus; by default ``../shared/corpus``).

The receiver runs in its own process (so it does not share the GIL with the sender),
answers 202 on a kept-alive HTTP/1.1 connection and counts the spans it got, which
must be all of them. Compared:

* the sink with each encoder (native compiled, native pure Python, SDK exporter, JSON);
* the naive SDK pipeline: tracer + BatchSpanProcessor + the stock Zipkin JSON
  exporter, its queue large enough that no span is dropped (it still applies the
  128-attribute limit, drops arrays of objects and truncates tags at 128 characters);
* encoding alone, without HTTP.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vault_observe import __version__, _compat
from vault_observe._core_py import Core
from vault_observe.model import SpanRecord
from vault_observe.sinks import zipkin as zk
from vault_observe.sinks.encoding import zipkin_proto
from vault_observe.sinks.encoding.zipkin import JsonEncoder

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(
    os.environ.get("VAULT_OBSERVE_CORPUS") or REPO.parent / "shared" / "corpus" / "openbao-mixed.jsonl"
)
BATCH = 1000  # the daemon's default batch size

RECEIVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counts = {"requests": 0, "spans": 0, "bytes": 0}

def proto_spans(body):
    # top-level fields of ListOfSpans: tag 0x0a, varint length, span
    n = i = 0
    end = len(body)
    while i < end:
        if body[i] != 0x0A:
            raise ValueError("not a ListOfSpans")
        i += 1
        size = shift = 0
        while True:
            b = body[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        i += size
        n += 1
    return n

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Type", "").startswith("application/json"):
            spans = len(json.loads(body))
        else:
            spans = proto_spans(body)
        counts["requests"] += 1
        counts["spans"] += spans
        counts["bytes"] += len(body)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        out = json.dumps(counts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class CountingReceiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}/api/v2/spans"

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as response:
            value: dict[str, int] = json.loads(response.read())
            return value

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def corpus_spans() -> list[SpanRecord]:
    if not CORPUS.exists():
        pytest.skip(f"the full corpus is not present at {CORPUS}")
    core = Core()
    core.feed(CORPUS.read_bytes())
    core.flush()
    return core.drain()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CountingReceiver]:
    r = CountingReceiver()
    yield r
    r.close()


def report(benchmark: Any, label: str, spans: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: ran once, untimed
        return
    mean = stats.stats.mean
    benchmark.extra_info["spans"] = spans
    benchmark.extra_info["spans_per_s"] = round(spans / mean)
    print(f"\n{label}: {spans} spans in {mean * 1000:.1f} ms mean = {spans / mean:,.0f} spans/s")


def run_delivery(
    benchmark: Any, receiver: CountingReceiver, spans: list[SpanRecord], label: str, go: Callable[[], None]
) -> None:
    before = receiver.counts()["spans"]
    rounds = 5 if "sdk" not in label else 3
    benchmark.pedantic(go, rounds=rounds, iterations=1, warmup_rounds=1)
    runs = rounds + 1 if getattr(benchmark, "stats", None) is not None else 1
    assert receiver.counts()["spans"] - before == len(spans) * runs  # every span arrived
    report(benchmark, label, len(spans))


@pytest.mark.parametrize("encoder", ["native", "native-py", "sdk", "json"])
def test_zipkin_sink_delivery(
    benchmark: Any,
    encoder: str,
    corpus_spans: list[SpanRecord],
    receiver: CountingReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if encoder == "native-py":
        monkeypatch.setattr(_compat, "USE_EXTENSIONS", False)
    sink = zk.ZipkinSink(receiver.url, encoder=encoder.removesuffix("-py"), service_name="vault")
    benchmark.extra_info["implementation"] = sink.implementation

    def go() -> None:
        for i in range(0, len(corpus_spans), BATCH):
            assert sink.send(corpus_spans[i : i + BATCH], time.monotonic() + 60) == 0

    run_delivery(benchmark, receiver, corpus_spans, f"sink {encoder} ({sink.implementation})", go)
    sink.close()


def test_naive_sdk_pipeline(
    benchmark: Any, corpus_spans: list[SpanRecord], receiver: CountingReceiver
) -> None:
    """Tracer + BatchSpanProcessor + the JSON Zipkin exporter, as an SDK user would."""
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    # Its per-span warnings (arrays of objects are not valid attributes) would
    # otherwise measure the log capture of the test runner.
    logging.getLogger("opentelemetry.attributes").disabled = True

    def go() -> None:
        provider = TracerProvider(resource=Resource.create({"service.name": "vault"}))
        processor = BatchSpanProcessor(
            ZipkinExporter(endpoint=receiver.url), max_queue_size=len(corpus_spans) + 1
        )
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("vault-observe", __version__)
        for record in corpus_spans:
            span = tracer.start_span(
                record.name, kind=SpanKind.SERVER, attributes=record.attributes(), start_time=record.start_ns
            )
            if record.error:
                span.set_status(Status(StatusCode.ERROR, record.error))
            span.end(end_time=record.end_ns)
        assert provider.force_flush(60_000)
        provider.shutdown()

    try:
        run_delivery(benchmark, receiver, corpus_spans, "naive SDK pipeline (tracer+BSP+JSON)", go)
    finally:
        logging.getLogger("opentelemetry.attributes").disabled = False


@pytest.mark.parametrize("encoder", ["c", "py", "sdk", "json"])
def test_zipkin_encode_only(benchmark: Any, encoder: str, corpus_spans: list[SpanRecord]) -> None:
    """Encoding the whole corpus into request bodies, no HTTP."""
    args = ("vault", "vault-observe", __version__)
    go: Callable[[], Any]
    if encoder == "c":
        compiled = pytest.importorskip("vault_observe._zipkin_proto")
        go = functools.partial(compiled.ProtoEncoder(*args).encode, corpus_spans)
    elif encoder == "py":
        go = functools.partial(zipkin_proto.ProtoEncoder(*args).encode, corpus_spans)
    elif encoder == "json":
        go = functools.partial(JsonEncoder(*args).encode, corpus_spans)
    else:
        from vault_observe.sinks.zipkin_sdk import SdkPath

        sdk = SdkPath(
            "http://127.0.0.1:9/api/v2/spans", "vault", 10.0, scope_name=zk.SCOPE_NAME, gzip=False, headers=None
        )
        sdk.start()

        def go() -> bytes:
            readables = [sdk.readable(record) for record in corpus_spans]
            return sdk.exporter.encoder.serialize(readables, sdk.exporter.local_node)  # type: ignore[arg-type]

    rounds = 3 if encoder in ("sdk", "py") else 10
    benchmark.pedantic(go, rounds=rounds, iterations=1, warmup_rounds=1)
    report(benchmark, f"encode only {encoder}", len(corpus_spans))
