"""``vault-observe --input FILE`` end to end, as a user runs it, into loopback receivers.

Each round runs the daemon as a subprocess on the shared corpus replicated with fresh
request ids, and checks that the receiver (its own process) got every span. Both
cores; the native encoders against the stock ones (OpenTelemetry SDK exporter,
libhoney) and against a naive SDK pipeline (tracer + BatchSpanProcessor + Zipkin JSON
exporter, see ``naive_pipeline.py``). Process start-up is included.

Run: ``python -m pytest benchmarks/test_end_to_end_bench.py --benchmark-enable``
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import RESULTS_E2E, replicate_later
from benchmarks.counting_receiver import CountingReceiver

SPANS_PER_COPY = 2868  # every response once, plus the unanswered requests
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def receiver() -> Any:
    with CountingReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def inputs(corpus: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("e2e")
    out = {}
    for copies in (2, 20):
        path = folder / f"corpus-x{copies}.jsonl"
        path.write_bytes(replicate_later(corpus, copies))
        out[copies] = path
    return out


CASES = [
    # (case, core, copies, flags)
    ("no sink", "c", 20, []),
    ("no sink", "py", 2, []),
    ("stdout", "c", 20, ["--stdout"]),
    ("zipkin native", "c", 20, ["--zipkin", "{zipkin}"]),
    ("zipkin native", "py", 2, ["--zipkin", "{zipkin}"]),
    ("zipkin sdk exporter", "c", 2, ["--zipkin", "{zipkin}", "--zipkin-encoder", "sdk"]),
    ("honeycomb native", "c", 20, ["--honeycomb", "--honeycomb-api-host", "{base}"]),
    (
        "honeycomb native, uncompressed",
        "c",
        20,
        ["--honeycomb", "--honeycomb-api-host", "{base}", "--honeycomb-compression", "none"],
    ),
    ("honeycomb native", "py", 2, ["--honeycomb", "--honeycomb-api-host", "{base}"]),
    (
        "honeycomb libhoney",
        "c",
        2,
        ["--honeycomb", "--honeycomb-api-host", "{base}", "--honeycomb-encoder", "libhoney"],
    ),
    ("otlp", "c", 20, ["--otlp", "{otlp}"]),
]


@pytest.mark.parametrize(("case", "core", "copies", "flags"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_input_end_to_end(
    benchmark: Any,
    receiver: Any,
    inputs: dict[int, Path],
    case: str,
    core: str,
    copies: int,
    flags: list[str],
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    argv = [f.format(zipkin=f"{base}/api/v2/spans", base=base, otlp=f"{base}/v1/traces") for f in flags]
    env = {**os.environ, "HONEYCOMB_API_KEY": "bench", "VAULT_OBSERVE_LOG_LEVEL": "warning"}
    if core == "py":
        env["VAULT_OBSERVE_NO_EXTENSIONS"] = "1"
    command = [sys.executable, "-m", "vault_observe", "--input", str(inputs[copies]), *argv]
    expect_sink = bool(flags) and flags != ["--stdout"]

    def run() -> None:
        receiver.reset()
        result = subprocess.run(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900
        )
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        if expect_sink:
            counts = receiver.counts()
            assert counts["errors"] == 0
            assert counts["spans"] == SPANS_PER_COPY * copies, "every span must be delivered"

    benchmark.pedantic(run, rounds=3, warmup_rounds=0, iterations=1)
    lines = inputs[copies].read_bytes().count(b"\n")
    RESULTS_E2E[f"{case} ({core} core)"] = {"lines": lines, "best_s": benchmark.stats.stats.min}


def test_naive_sdk_pipeline(benchmark: Any, receiver: Any, inputs: dict[int, Path]) -> None:
    """The stock way: tracer + BatchSpanProcessor + the Zipkin JSON exporter."""
    url = f"http://127.0.0.1:{receiver.port}/api/v2/spans"
    command = [sys.executable, str(HERE / "naive_pipeline.py"), str(inputs[2]), url]

    def run() -> None:
        receiver.reset()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert receiver.counts()["spans"] == SPANS_PER_COPY * 2

    benchmark.pedantic(run, rounds=3, warmup_rounds=0, iterations=1)
    lines = inputs[2].read_bytes().count(b"\n")
    RESULTS_E2E["naive SDK pipeline (tracer + BatchSpanProcessor + Zipkin JSON)"] = {
        "lines": lines,
        "best_s": benchmark.stats.stats.min,
    }
