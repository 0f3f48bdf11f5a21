"""Follow mode under faults, against a real OpenBao file device: the scenario shared by
the integration test (short) and ``benchmarks/follow_faults.py`` (long).

Clients keep writing and reading secrets while the daemon, following the file device's
log with a checkpoint and sending to a Zipkin receiver that decodes the protobuf, is
killed with SIGKILL at random moments, stopped for a rotation done in logrotate's order
with a slow postrotate (rename, daemon restarted, OpenBao's SIGHUP seconds later), and
left with its sink down for longer than the retry window. Afterwards every response in
the log (all its parts) must have become exactly one span, beyond the re-sends each
restart announced ("may re-send up to N spans"), with every pair intact.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.implementations import PACKAGE_PATH
from tests.integration.audit import Expected, check_zipkin, expected_spans, load
from tests.receivers import ZipkinReceiver
from vault_observe.openbao import DevServer

RESEND = re.compile(rb"may re-send up to (\d+) spans")
PAIRING_TAG = "vault_observe.pairing"


class Load:
    """Client threads writing, reading and missing secrets until stopped."""

    def __init__(self, bao: DevServer, threads: int = 3, pause: float = 0.004) -> None:
        self.bao = bao
        self.pause = pause
        self.requests = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.bao.close_clients()

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                self.bao.api("POST", f"secret/data/load/{n}/{i % 50}", {"data": {"i": i}})
                self.bao.api("GET", f"secret/data/load/{n}/{i % 50}")
                self.bao.api("GET", f"secret/data/missing/{n}", expect=(404,))
                self.requests += 3
            except Exception as exc:  # counted: the scenario asserts there are none
                self.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1
            time.sleep(self.pause)


class FollowDaemon:
    """``vault-observe --follow`` as a child process, sending to ``url``."""

    def __init__(self, log: Path, checkpoint: Path, url: str, workdir: Path, extra: list[str]) -> None:
        self.args = [
            sys.executable,
            "-m",
            "vault_observe",
            "--input",
            str(log),
            "--follow",
            "--checkpoint",
            str(checkpoint),
            "--zipkin",
            url,
            "--retry-window",
            "1",
            "--flush-interval",
            "0.1",
            "--ttl",
            "30",
            *extra,
        ]
        self.workdir = workdir
        self.env = {**os.environ, "PYTHONPATH": PACKAGE_PATH}
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.stderr_path = workdir / "observe-0.err"

    def start(self, timeout: float = 30.0) -> int:
        """Start; return N of the "may re-send up to N spans" it logs once following."""
        self.runs += 1
        self.stderr_path = self.workdir / f"observe-{self.runs}.err"
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = RESEND.search(self.stderr_path.read_bytes())
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise AssertionError(f"vault-observe exited with {self.process.returncode}:\n{self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"vault-observe did not start following within {timeout} s:\n{self.stderr()}")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"vault-observe did not exit within {timeout} s:\n{self.stderr()}") from None

    def stop(self) -> None:
        """Teardown: no process left behind."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def rss_kib(self) -> int | None:
        """Resident memory of the running daemon (from /proc), or None."""
        process = self.process
        if process is None or process.poll() is not None:
            return None
        try:
            with open(f"/proc/{process.pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def final_summary(self) -> str:
        text = self.stderr_path.read_text(errors="replace")
        return next((line for line in reversed(text.splitlines()) if "final summary" in line), "")


@dataclass
class Outcome:
    responses: int = 0  # responses in every part of the log
    spans: int = 0  # spans received
    duplicates: int = 0  # spans received more than once (beyond the first)
    allowed_duplicates: int = 0  # the sum of N announced after each kill -9
    kills: int = 0
    restarts: int = 0
    requests_sent: int = 0
    outage_seconds: float = 0.0
    rss_peak_kib: int = 0  # the daemon's resident memory, sampled every 0.2 s
    rss_outage_peak_kib: int = 0  # ... while the sink was down
    summaries: list[str] = field(default_factory=list)


class RssSampler:
    """Samples the current daemon process's RSS in a thread."""

    def __init__(self, daemon: FollowDaemon, outcome: Outcome) -> None:
        self.daemon = daemon
        self.outcome = outcome
        self.outage = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rss = self.daemon.rss_kib()
            if rss is None:
                continue
            self.outcome.rss_peak_kib = max(self.outcome.rss_peak_kib, rss)
            if self.outage:
                self.outcome.rss_outage_peak_kib = max(self.outcome.rss_outage_peak_kib, rss)


def expected_from(parts: list[Path]) -> dict[str, Expected]:
    """What the spans must be: the parts of the log in the order they were written."""
    stream: list[dict[str, Any]] = []
    for part in parts:
        stream.extend(load(part))
    return expected_spans(stream)


def run(
    bao: DevServer,
    workdir: Path,
    *,
    kills: int = 3,
    kill_gap: tuple[float, float] = (1.5, 3.5),
    outage: float = 4.0,
    sighup_delay: float = 5.0,
    settle: float = 2.0,
    threads: int = 3,
    seed: int | None = None,
    extra: list[str] | None = None,
) -> Outcome:
    """The whole scenario; raises AssertionError on any loss, duplicate beyond the
    announced bound, or broken pair."""
    rng = random.Random(seed)
    log = workdir / "audit.log"
    rotated = workdir / "audit.log.1"
    checkpoint = workdir / "audit.checkpoint"
    bao.enable_file_audit(log)
    outcome = Outcome()
    with ZipkinReceiver() as receiver:
        daemon = FollowDaemon(log, checkpoint, receiver.url, workdir, extra or [])
        try:
            daemon.start()
            with Load(bao, threads) as load_, RssSampler(daemon, outcome) as rss:
                time.sleep(settle)
                for _ in range(kills):
                    time.sleep(rng.uniform(*kill_gap))
                    daemon.kill9()
                    outcome.kills += 1
                    outcome.allowed_duplicates += daemon.start()
                # The sink goes down for longer than the retry window.
                receiver.fail_with = 503
                rss.outage = True
                time.sleep(outage)
                rss.outage = False
                outcome.outage_seconds = outage
                receiver.fail_with = None
                time.sleep(settle)
                # logrotate's order with a slow postrotate: rename, the daemon restarts,
                # and OpenBao reopens its file only seconds later.
                assert daemon.terminate() == 0, daemon.stderr()
                outcome.summaries.append(daemon.final_summary())
                log.rename(rotated)
                daemon.start()
                outcome.restarts += 1
                time.sleep(sighup_delay)
                assert bao.process is not None
                os.kill(bao.process.pid, signal.SIGHUP)
                time.sleep(settle)
                load_.stop()
                outcome.requests_sent = load_.requests
                assert not load_.errors, load_.errors[:5]
            expected = expected_from([rotated, log])
            answered = {k for k, v in expected.items() if v.pairing != "unanswered"}

            def caught_up() -> bool:
                return answered <= {s["traceId"] for s in receiver.spans}

            receiver.wait_for(caught_up, timeout=60)
            time.sleep(1.0)  # anything late (a duplicate) arrives too
            assert daemon.terminate() == 0, daemon.stderr()
            outcome.summaries.append(daemon.final_summary())
        finally:
            daemon.stop()
        with receiver.lock:
            spans = list(receiver.spans)
        assert receiver.errors == [], receiver.errors[:5]
    # Requests still pending at the end are kept for the next run, not sent as unanswered.
    expected = {k: v for k, v in expected.items() if v.pairing != "unanswered"}
    outcome.responses = len(expected)
    outcome.spans = len(spans)
    counts = Counter(s["traceId"] for s in spans)
    outcome.duplicates = sum(n - 1 for n in counts.values())
    assert outcome.duplicates <= outcome.allowed_duplicates, (outcome.duplicates, outcome.allowed_duplicates)
    first: dict[str, dict[str, Any]] = {}
    for span in spans:
        first.setdefault(span["traceId"], span)
    broken = [
        (want.request_id, first[k].get("tags", {}).get(PAIRING_TAG))
        for k, want in expected.items()
        if k in first and want.pairing == "paired" and PAIRING_TAG in first[k].get("tags", {})
    ]
    assert not broken, f"{len(broken)} pairs split: {broken[:5]}"
    # Exactly one span per response (paired, or the device-enabling call's orphan), each
    # with its name, error, start and duration.
    check_zipkin(list(first.values()), expected)
    return outcome
