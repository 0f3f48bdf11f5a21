"""Benchmark inputs: the shared corpus, replicated with fresh request ids.

Run with ``pytest benchmarks --benchmark-enable``; without /work/shared (found as
<repo>/../shared/corpus/openbao-mixed.jsonl, or at $VAULT_OBSERVE_CORPUS) the
corpus benchmarks skip.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(
    os.environ.get("VAULT_OBSERVE_CORPUS", REPO.parent / "shared" / "corpus" / "openbao-mixed.jsonl")
)
COPIES = 20

_REQUEST_ID = re.compile(
    rb'("request":\{"id":")([0-9a-f]{8})(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")'
)

# Throughput per implementation, filled by the benchmarks, printed at the end.
RESULTS: dict[str, dict[str, float]] = {}
# End-to-end runs (test_end_to_end_bench.py): case -> lines and best wall time.
RESULTS_E2E: dict[str, dict[str, float]] = {}


def replicate(data: bytes, copies: int) -> bytes:
    """``copies`` copies of the stream; copy k rewrites every request id the same
    way (its first 8 hex digits xor k), so requests and responses still pair."""
    parts = [data]
    for k in range(1, copies):

        def fresh(m: re.Match[bytes], k: int = k) -> bytes:
            head = int(m.group(2), 16) ^ (k * 0x9E3779B1 & 0xFFFFFFFF)
            return m.group(1) + f"{head:08x}".encode() + m.group(3)

        parts.append(_REQUEST_ID.sub(fresh, data))
    return b"".join(parts)


def replicate_later(data: bytes, copies: int) -> bytes:
    """Like ``replicate``, and copy k also happens k years later, so that time never
    goes backwards across copies (a replay expires requests by the log's own clock)."""
    parts = replicate(data, copies).split(b'{"time":"2026-')
    out = [parts[0]]
    per_copy = data.count(b'{"time":"2026-')
    for i, part in enumerate(parts[1:]):
        out.append(b'{"time":"%d-' % (2026 + i // per_copy) + part)
    return b"".join(out)


@pytest.fixture(scope="session")
def corpus() -> bytes:
    if not CORPUS.exists():
        pytest.skip(f"the shared corpus is not present at {CORPUS}")
    return CORPUS.read_bytes()


@pytest.fixture(scope="session")
def replicated_corpus(corpus: bytes) -> bytes:
    return replicate(corpus, COPIES)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write = terminalreporter.write_line
    if RESULTS:
        terminalreporter.section("core throughput (feed + flush + drain_spans)")
        for impl, r in sorted(RESULTS.items()):
            write(
                f"{impl:>14}: {r['lines_per_s']:>12,.0f} lines/s {r['mb_per_s']:>9.1f} MB/s "
                f"(best round {r['best_s']:.3f} s for {int(r['lines']):,} lines)"
            )
        if "py" in RESULTS and "c" in RESULTS:
            write(f"c/py: {RESULTS['c']['lines_per_s'] / RESULTS['py']['lines_per_s']:.1f}x")
    if RESULTS_E2E:
        terminalreporter.section("vault-observe --input FILE end to end (best round, process start included)")
        rates = {case: r["lines"] / r["best_s"] for case, r in RESULTS_E2E.items()}
        naive = next((rate for case, rate in rates.items() if case.startswith("naive")), None)
        libhoney = next((rate for case, rate in rates.items() if "libhoney" in case), None)
        for case, rate in rates.items():
            ratio = f"  {rate / naive:6.1f}x the naive pipeline" if naive else ""
            if libhoney and case.startswith("honeycomb"):
                ratio += f"  {rate / libhoney:6.1f}x libhoney"
            write(f"{case:<64} {rate:>10,.0f} lines/s{ratio}")
