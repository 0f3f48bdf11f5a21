"""Peak memory of ``vault-observe --input`` over a log of N requests that get no
response: all N wait to the end, then the final flush turns them into spans.

    PYTHONPATH=src python benchmarks/rss_replay_pending.py 990000 [--wide]

Writes the log to a temporary file (requests with canonical ids, time, type and
``request.path``: 146 bytes of attributes; with ``--wide`` also
``request.operation`` and ``request.remote_address``: 211 bytes), runs the daemon on it in a fresh interpreter with
``--max-pending N`` and no sink, and prints one JSON line: RSS (from /proc) just
before the final flush, the peak over the whole run (VmHWM) and what the final
summary counted; on glibc also RSS after ``malloc_trim(0)``, which returns the
freed memory that the allocator keeps for reuse, so what is left is still allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

# Runs in the child: the daemon as the command line starts it, with RSS read just
# before the final flush and at the end.
CHILD = r"""
import json, sys
from vault_observe import cli, pipeline

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

marks = {}
finish = pipeline.Daemon._finish

def measured_finish(self):
    marks["pending_at_end"] = self.core.pending
    marks["rss_before_flush_kib"] = status("VmRSS")
    marks["peak_before_flush_kib"] = status("VmHWM")
    finish(self)
    marks["counters"] = {k: v for k, v in self.result.items() if k in ("requests", "unanswered", "spans")}

pipeline.Daemon._finish = measured_finish
marks["rc"] = cli.main(sys.argv[1:])
marks["peak_kib"] = status("VmHWM")
marks["rss_end_kib"] = status("VmRSS")
# What is still allocated, whatever freed memory the allocator keeps for reuse
try:
    import ctypes
    ctypes.CDLL(None).malloc_trim(0)
    marks["rss_trimmed_kib"] = status("VmRSS")
except (OSError, AttributeError):  # not glibc
    pass
print("RESULT " + json.dumps(marks))
"""


def request_line(i: int, wide: bool = False) -> bytes:
    rid = f"{i:08x}-{(i * 2654435761) & 0xFFFF:04x}-4{i & 0xFFF:03x}-8{(i >> 12) & 0xFFF:03x}-{i * 48271 & 0xFFFFFFFFFFFF:012x}"
    second, nanos = divmod(i, 1000)
    more = f',"operation":"read","remote_address":"10.0.{i % 250}.{i % 199}"' if wide else ""
    return (
        f'{{"time":"2026-11-27T08:{second // 60 % 60:02d}:{second % 60:02d}.{nanos * 1000 + 7:09d}Z",'
        f'"type":"request","request":{{"id":"{rid}","path":"secret/data/app/{i % 1000:03d}"{more}}}}}\n'
    ).encode()


def attrs_bytes(line: bytes) -> int:
    """The size of the attributes an unanswered span of this request carries."""
    from vault_observe._core_py import dump_attrs, flatten

    return len(dump_attrs(flatten(json.loads(line))))


def write_log(path: str, count: int, wide: bool) -> None:
    with open(path, "wb") as f:
        for start in range(0, count, 10_000):
            f.write(b"".join(request_line(i, wide) for i in range(start, min(count, start + 10_000))))


def run(
    count: int, extra: list[str] | None = None, env: dict[str, str] | None = None, wide: bool = False
) -> dict[str, Any]:
    """Run the replay of ``count`` unanswered requests; the child's figures."""
    with tempfile.TemporaryDirectory() as folder:
        log = os.path.join(folder, "audit.log")
        write_log(log, count, wide)
        argv = ["--input", log, "--max-pending", str(count), "--ttl", "86400", *(extra or [])]
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *argv],
            capture_output=True,
            timeout=600,
            env={**os.environ, **(env or {})},
            check=False,
        )
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"replay failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    result["attrs_bytes_per_request"] = attrs_bytes(request_line(count // 2, wide))
    return result


def main() -> None:
    args = sys.argv[1:]
    wide = "--wide" in args
    args = [a for a in args if a != "--wide"]
    count = int(args[0]) if args else 990_000
    result = run(count, args[1:], wide=wide)
    mib = {k.replace("_kib", "_mib"): round(v / 1024, 1) for k, v in result.items() if k.endswith("_kib")}
    print(
        json.dumps({"requests": count, **{k: v for k, v in result.items() if not k.endswith("_kib")}, **mib})
    )


if __name__ == "__main__":
    main()
