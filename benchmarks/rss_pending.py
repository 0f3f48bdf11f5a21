"""Resident memory of a core holding N pending requests.

    PYTHONPATH=src python benchmarks/rss_pending.py c 1000000
    PYTHONPATH=src python benchmarks/rss_pending.py py 1000000

Prints one JSON line: RSS before and after (from /proc/self/status), the growth per
pending request, and the peak. Requests carry canonical UUID ids and no error, as
almost all real ones do.
"""

from __future__ import annotations

import gc
import json
import sys
import time


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def request_line(i: int) -> bytes:
    rid = f"{i:08x}-{(i * 2654435761) & 0xFFFF:04x}-4{i & 0xFFF:03x}-8{(i >> 12) & 0xFFF:03x}-{i * 48271 & 0xFFFFFFFFFFFF:012x}"
    return (
        f'{{"time":"2026-11-27T08:04:45.{i % 1_000_000_000:09d}Z","type":"request",'
        '"auth":{"token_type":"service","policies":["default"]},'
        f'"request":{{"id":"{rid}","operation":"read","mount_point":"secret/","mount_type":"kv",'
        f'"namespace":{{"id":"root"}},"path":"secret/data/app/{i % 1000}",'
        '"remote_address":"127.0.0.1","remote_port":51360}}\n'
    ).encode()


def main() -> None:
    impl, count = sys.argv[1], int(sys.argv[2])
    if impl == "c":
        from vault_observe._fast import Core
    else:
        from vault_observe._core_py import Core
    core = Core(max_pending=count, ttl_s=3600)
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    chunk = 20_000
    for start in range(0, count, chunk):
        core.feed(b"".join(request_line(i) for i in range(start, min(count, start + chunk))))
    elapsed = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    assert not core.drain()
    print(
        json.dumps(
            {
                "impl": impl,
                "pending": core.pending,
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
