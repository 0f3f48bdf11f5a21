"""``vault-observe --input FILE`` end to end, as a user runs it, into loopback receivers.

Each round runs the daemon as a subprocess on the shared corpus replicated 20 times
with fresh request ids (114,600 lines), and checks that the receiver (its own
process, on the same cores) got every span. Both cores; the native encoders against
the stock ones (OpenTelemetry SDK exporter, libhoney) and against a naive SDK
pipeline (tracer + BatchSpanProcessor + Zipkin JSON exporter, see
``naive_pipeline.py``). Every case reads the same file; process start-up is
included. The slow stock paths get one round, the others the best of three.

Run: ``python -m pytest benchmarks/test_end_to_end_bench.py --benchmark-enable``
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import COPIES, RESULTS_E2E, replicate_later
from benchmarks.counting_receiver import CountingReceiver

SPANS_PER_COPY = 2868  # every response once, plus the unanswered requests
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def receiver() -> Any:
    with CountingReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def corpus_file(corpus: bytes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case, the stock pipelines included, reads this same input."""
    path = tmp_path_factory.mktemp("e2e") / f"corpus-x{COPIES}.jsonl"
    path.write_bytes(replicate_later(corpus, COPIES))
    return path


HONEYCOMB = ["--honeycomb", "--honeycomb-api-host", "{base}"]
CASES = [
    # (case, core, rounds, flags): one round for the slow stock paths
    ("no sink", "c", 3, []),
    ("no sink", "py", 1, []),
    ("stdout", "c", 3, ["--stdout"]),
    ("zipkin native", "c", 3, ["--zipkin", "{zipkin}"]),
    ("zipkin native", "py", 1, ["--zipkin", "{zipkin}"]),
    # the SDK exporter needs more than the default 15 s to deliver what is queued at the end
    ("zipkin sdk exporter", "c", 1, ["--zipkin", "{zipkin}", "--zipkin-encoder", "sdk", "--shutdown-timeout", "600"]),
    ("honeycomb native, gzip", "c", 3, HONEYCOMB),
    ("honeycomb native, zstd", "c", 3, [*HONEYCOMB, "--honeycomb-compression", "zstd"]),
    ("honeycomb native, uncompressed", "c", 3, [*HONEYCOMB, "--honeycomb-compression", "none"]),
    ("honeycomb native, gzip", "py", 1, HONEYCOMB),
    ("honeycomb libhoney", "c", 1, [*HONEYCOMB, "--honeycomb-encoder", "libhoney"]),
    ("otlp", "c", 3, ["--otlp", "{otlp}"]),
]


@pytest.mark.parametrize(("case", "core", "rounds", "flags"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_input_end_to_end(
    benchmark: Any,
    receiver: Any,
    corpus_file: Path,
    case: str,
    core: str,
    rounds: int,
    flags: list[str],
) -> None:
    base = f"http://127.0.0.1:{receiver.port}"
    argv = [f.format(zipkin=f"{base}/api/v2/spans", base=base, otlp=f"{base}/v1/traces") for f in flags]
    env = {**os.environ, "HONEYCOMB_API_KEY": "bench", "VAULT_OBSERVE_LOG_LEVEL": "warning"}
    if core == "py":
        env["VAULT_OBSERVE_NO_EXTENSIONS"] = "1"
    command = [sys.executable, "-m", "vault_observe", "--input", str(corpus_file), *argv]
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
            assert counts["spans"] == SPANS_PER_COPY * COPIES, "every span must be delivered"

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    lines = corpus_file.read_bytes().count(b"\n")
    RESULTS_E2E[f"{case} ({core} core)"] = {"lines": lines, "best_s": benchmark.stats.stats.min}


def test_naive_sdk_pipeline(benchmark: Any, receiver: Any, corpus_file: Path) -> None:
    """The stock way: tracer + BatchSpanProcessor + the Zipkin JSON exporter."""
    url = f"http://127.0.0.1:{receiver.port}/api/v2/spans"
    command = [sys.executable, str(HERE / "naive_pipeline.py"), str(corpus_file), url]

    def run() -> None:
        receiver.reset()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        assert receiver.counts()["spans"] == SPANS_PER_COPY * COPIES

    benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
    lines = corpus_file.read_bytes().count(b"\n")
    RESULTS_E2E["naive SDK pipeline (tracer + BatchSpanProcessor + Zipkin JSON)"] = {
        "lines": lines,
        "best_s": benchmark.stats.stats.min,
    }
