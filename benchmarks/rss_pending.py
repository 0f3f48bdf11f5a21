"""Resident memory of a core holding N pending requests.

    PYTHONPATH=src python benchmarks/rss_pending.py c 1000000
    PYTHONPATH=src python benchmarks/rss_pending.py py 1000000
    PYTHONPATH=src python benchmarks/rss_pending.py c 100000 --corpus ../shared/corpus/openbao-mixed.jsonl

Prints one JSON line: RSS before and after (from /proc/self/status), the growth per
pending request, the peak, and the size of the attributes each request keeps. The
requests carry canonical UUID ids and no error, as almost all real ones do: by
default a short generated one (about 100 bytes of attributes besides time, type and
id), with ``--corpus`` the requests of a recorded log in turn, each with an id of its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def request_id(i: int) -> str:
    return f"{i:08x}-{(i * 2654435761) & 0xFFFF:04x}-4{i & 0xFFF:03x}-8{(i >> 12) & 0xFFF:03x}-{i * 48271 & 0xFFFFFFFFFFFF:012x}"


def request_line(i: int) -> bytes:
    return (
        f'{{"time":"2026-11-27T08:04:45.{i % 1_000_000_000:09d}Z","type":"request",'
        '"auth":{"token_type":"service","policies":["default"]},'
        f'"request":{{"id":"{request_id(i)}","operation":"read","mount_point":"secret/","mount_type":"kv",'
        f'"namespace":{{"id":"root"}},"path":"secret/data/app/{i % 1000}",'
        '"remote_address":"127.0.0.1","remote_port":51360}}\n'
    ).encode()


def corpus_lines(path: str) -> Callable[[int], bytes]:
    """Request lines of a recorded log in turn, each with an id of its own."""
    templates = []
    with open(path, "rb") as f:
        for raw in f:
            entry = json.loads(raw)
            if entry.get("type") != "request" or entry.get("request", {}).get("path") == "sys/audit/test":
                continue
            rid = entry["request"]["id"]
            head, _, tail = raw.rstrip(b"\n").partition(json.dumps(rid).encode())
            if tail:
                templates.append((head, tail))

    def line(i: int) -> bytes:
        head, tail = templates[i % len(templates)]
        return head + b'"' + request_id(i).encode() + b'"' + tail + b"\n"

    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["c", "py"])
    parser.add_argument("count", type=int)
    parser.add_argument("--corpus", help="take the requests of this log in turn")
    parser.add_argument("--pending-attrs-bytes", type=int, default=None)
    args = parser.parse_args()
    if args.impl == "c":
        from vault_observe._fast import Core
    else:
        from vault_observe._core_py import Core  # type: ignore[assignment]
    make_line = corpus_lines(args.corpus) if args.corpus else request_line
    options = {} if args.pending_attrs_bytes is None else {"pending_attrs_bytes": args.pending_attrs_bytes}
    count = args.count
    core = Core(max_pending=count, ttl_s=3600, **options)
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    chunk = 500  # lines per feed, about what a read gives the daemon
    for start in range(0, count, chunk):
        core.feed(b"".join(make_line(i) for i in range(start, min(count, start + chunk))))
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    assert not core.drain()
    # what the requests keep: the attributes of as many unanswered spans, marker removed
    probe = Core(max_pending=1000, ttl_s=3600, **options)
    probe.feed(b"".join(make_line(i) for i in range(1000)))
    probe.flush()
    kept = [len(s.attrs_json) - len(',"vault_observe.pairing":"unanswered"') for s in probe.drain()]
    print(
        json.dumps(
            {
                "impl": args.impl,
                "pending": core.pending,
                "pending_attrs_bytes": core.pending_attrs_bytes,
                "attrs_bytes_kept_mean": round(sum(kept) / len(kept), 1),
                "rss_before_mib": round(before / 1024, 1),
                "rss_after_mib": round(after / 1024, 1),
                "peak_mib": round(rss_kib("VmHWM") / 1024, 1),
                "bytes_per_pending": round((after - before) * 1024 / max(1, core.pending), 1),
                "feed_seconds_incl_line_generation": round(elapsed, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
