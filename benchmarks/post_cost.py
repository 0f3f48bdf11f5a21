"""CPU a POST costs the sender: the HTTP path under every network sink, per request.

Run: ``python -m benchmarks.post_cost`` (``--help`` for the options). The receiver is
``counting_receiver.CountingReceiver`` in its own process, so the sender's CPU
(``time.process_time``, every thread of this process) is the client's alone. A run is
``--posts`` requests on one kept-alive connection; ``--runs`` runs of each path,
interleaved, and the median and best CPU per request are printed (microseconds).

Paths:

* ``client``: ``HttpClient.post`` of one Zipkin protobuf body (``--spans`` spans of the
  shared corpus, as the compiled core packs them), what ``Exporter.post`` costs but
  for the retry loop and the counters;
* ``export``: ``ZipkinSink.send`` of those spans: encode, post, retry, count;
* ``http.client`` (``--compare-http-client``): the same body on a raw
  ``http.client.HTTPConnection``, the floor any client on top of it can reach.

``--profile PATH`` profiles the runs of one path (cProfile, CPU time) and prints the
Python calls per request and the top entries.

The machine's noise is often larger than a change to the path; instructions are not
noisy. Per request, user space: run ``valgrind --tool=callgrind
--callgrind-out-file=/dev/null python -m benchmarks.post_cost --runs 1 --paths client
--posts N`` with N = 100 and 300 (``PYTHONHASHSEED=0``); the difference of the two
"Collected" counts over 200.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import os
import pstats
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.counting_receiver import CountingReceiver
from vault_observe.core import Core
from vault_observe.model import SpanRecord
from vault_observe.sinks.exporter import HttpClient
from vault_observe.sinks.zipkin import ZipkinSink

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(
    os.environ.get("VAULT_OBSERVE_CORPUS") or REPO.parent / "shared" / "corpus" / "openbao-mixed.jsonl"
)
FALLBACK_INPUT = Path("/work/ab/small2k.jsonl")


def corpus_spans(count: int) -> Sequence[SpanRecord]:
    """The first ``count`` spans of the corpus, as the daemon queues them."""
    source = CORPUS if CORPUS.exists() else FALLBACK_INPUT
    core = Core()
    core.feed(source.read_bytes())
    core.flush()
    spans = core.drain_spans() if hasattr(core, "drain_spans") else core.drain()
    if len(spans) < count:
        raise SystemExit(f"{source} gives {len(spans)} spans, fewer than --spans {count}")
    return spans[:count]


def cpu_per_request(post: Callable[[], object], posts: int) -> float:
    """Microseconds of this process's CPU per call of ``post``."""
    started = time.process_time()
    for _ in range(posts):
        post()
    return (time.process_time() - started) / posts * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.post_cost", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--posts", type=int, default=1000, help="requests per run (default 1000)")
    parser.add_argument("--runs", type=int, default=20, help="runs of each path (default 20)")
    parser.add_argument("--spans", type=int, default=50, help="spans in a body (default 50)")
    parser.add_argument("--paths", default="client,export", help="comma-separated: client, export")
    parser.add_argument(
        "--compare-http-client", action="store_true", help="also post on a raw http.client.HTTPConnection"
    )
    parser.add_argument(
        "--profile", metavar="PATH", help="profile the runs of one path instead of timing them"
    )
    args = parser.parse_args(argv)

    spans = corpus_spans(args.spans)
    with CountingReceiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/api/v2/spans"
        sink = ZipkinSink(url)
        sink.start()
        body = sink._encode(spans)
        client = HttpClient(url, {"Content-Type": "application/x-protobuf"})
        raw = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10.0)
        raw_headers = {"Content-Type": "application/x-protobuf", "User-Agent": "bench"}

        def post_raw() -> bytes:
            raw.request("POST", "/api/v2/spans", body=body, headers=raw_headers)
            return raw.getresponse().read()

        def post_client() -> object:
            return client.post(body, 10.0)

        def export() -> int:
            return sink.send(spans, time.monotonic() + 60.0)

        paths: dict[str, Callable[[], object]] = {"client": post_client, "export": export}
        chosen = {name: paths[name] for name in args.paths.split(",") if name}
        if args.compare_http_client:
            chosen["http.client"] = post_raw
        for post in chosen.values():  # connections open, first-call imports done
            post()

        if args.profile:
            name, post = next(iter(chosen.items()))
            profiler = cProfile.Profile(time.process_time)  # CPU, not the wait for the answer
            profiler.enable()
            for _ in range(args.runs * args.posts):
                post()
            profiler.disable()
            profiler.dump_stats(args.profile)
            stats = pstats.Stats(args.profile)
            calls = stats.total_calls / (args.runs * args.posts)  # type: ignore[attr-defined]
            print(
                f"{name}: {args.runs * args.posts} posts profiled into {args.profile}, {calls:.1f} calls each"
            )
            stats.sort_stats("tottime").print_stats(25)
            return

        figures: dict[str, list[float]] = {name: [] for name in chosen}
        for _ in range(args.runs):
            for name, post in chosen.items():
                figures[name].append(cpu_per_request(post, args.posts))
        counts = receiver.counts()
        sink.close()
        client.close()
        raw.close()

    expected = 1 + args.runs * args.posts
    print(
        f"{args.runs} runs x {args.posts} POSTs of {args.spans} spans ({len(body)} bytes), "
        f"receiver: {counts['requests']} requests, {counts['errors']} errors"
    )
    for name, values in figures.items():
        print(
            f"{name:12s} CPU per request: median {statistics.median(values):7.1f} us, "
            f"best {min(values):7.1f} us, worst {max(values):7.1f} us"
        )
    if counts["errors"] or counts["requests"] != expected * len(chosen):
        raise SystemExit("the receiver did not count every request")


if __name__ == "__main__":
    main()
