"""Core throughput on the real corpus, both cores side by side, and memory per pending request.

PYTHONPATH=src python -m pytest benchmarks --benchmark-enable
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vault_observe import _core_py

from .conftest import COPIES, RESULTS

HERE = Path(__file__).resolve().parent

try:
    from vault_observe import _fast
except ImportError:  # not built
    _fast = None  # type: ignore[assignment]


def core_class(impl: str) -> Any:
    if impl == "py":
        return _core_py.Core
    if _fast is None:
        pytest.skip("vault_observe._fast is not built")
    return _fast.Core


def test_replicas_pair_like_the_original(corpus: bytes, replicated_corpus: bytes) -> None:
    one = core_class("c")()
    one.feed(corpus)
    one.flush()
    many = core_class("c")()
    many.feed(replicated_corpus)
    many.flush()
    for name, value in one.counters().items():
        assert many.counters()[name] == value * COPIES, name


@pytest.mark.parametrize("impl", ["py", "c"])
def test_core_throughput(benchmark: Any, impl: str, replicated_corpus: bytes) -> None:
    cls = core_class(impl)
    data = replicated_corpus
    lines = data.count(b"\n")

    def run() -> int:
        core = cls()
        core.feed(data)
        core.flush()
        return len(core.drain_spans())

    rounds = 3 if impl == "py" else 15
    spans = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1 if impl == "c" else 0)
    assert spans > 0  # counts are checked by test_replicas_pair_like_the_original
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    best = stats.stats.min
    benchmark.extra_info.update(lines=lines, lines_per_s=lines / best, mb_per_s=len(data) / best / 1e6)
    RESULTS[impl] = {
        "lines": lines,
        "best_s": best,
        "lines_per_s": lines / best,
        "mb_per_s": len(data) / best / 1e6,
    }


TRACEPARENT = b'"traceparent":["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],'
OPTIONS = {
    "filters": {
        "include": ["request.*", "response.*", "auth.*", "error"],
        "exclude": ["*.hmac*", "auth.metadata.*"],
    },
    "sample 1/4": {"sample_rate": 4},
    "traceparent": {},  # every line with request headers carries one
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_core_throughput_with_options(benchmark: Any, name: str, replicated_corpus: bytes) -> None:
    """The compiled core with key filters, sampling or trace context at work."""
    cls = core_class("c")
    data = replicated_corpus
    if name == "traceparent":
        data = data.replace(b'"headers":{', b'"headers":{' + TRACEPARENT)
    lines = data.count(b"\n")
    options = OPTIONS[name]

    def run() -> int:
        core = cls(**options)
        core.feed(data)
        core.flush()
        return len(core.drain_spans())

    assert benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1) > 0
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    best = stats.stats.min
    RESULTS[f"c {name}"] = {
        "lines": lines,
        "best_s": best,
        "lines_per_s": lines / best,
        "mb_per_s": len(data) / best / 1e6,
    }


@pytest.mark.parametrize("impl", ["py", "c"])
def test_memory_per_pending_request(impl: str) -> None:
    """RSS growth with 1,000,000 pending requests, measured in a fresh process."""
    core_class(impl)
    out = subprocess.run(
        [sys.executable, str(HERE / "rss_pending.py"), impl, "1000000"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{impl}: {result['bytes_per_pending']:.0f} bytes per pending request ({result})")
    assert result["pending"] == 1_000_000
