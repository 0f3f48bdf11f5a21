"""Memory of a replay whose requests all wait to the end: the final flush hands the
spans on in chunks, and the pending table's memory is given back once it is empty.

The daemon runs in a fresh interpreter (``benchmarks/rss_replay_pending.py``, whose
full run is 990,000 requests); RSS comes from its /proc/self/status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from benchmarks.rss_replay_pending import run

from tests.implementations import core_class

MiB = 1024


def test_final_flush_of_many_pending_requests_is_bounded_and_given_back(impl: str) -> None:
    core_class(impl)  # skips (or fails, in CI) when the compiled core is not built
    count = {"c": 150_000, "py": 25_000}[impl]
    env = {"VAULT_OBSERVE_NO_EXTENSIONS": "1"} if impl == "py" else {"VAULT_OBSERVE_NO_EXTENSIONS": "0"}
    base = run(1000, env=env)
    result: dict[str, Any] = run(count, env=env)
    assert result["rc"] == 0
    assert result["pending_at_end"] == count
    assert result["counters"] == {"requests": count, "unanswered": count, "spans": count}
    table = result["rss_before_flush_kib"] - base["rss_before_flush_kib"]
    assert table > 5 * MiB, result  # the requests did wait, with their attributes
    # the flush adds at most a chunk or two of spans on top of the full table
    # (all at once, it was about 50 MB here for the compiled core, 17 MB for the other)
    assert result["peak_kib"] - result["rss_before_flush_kib"] < 12 * MiB, result
    if impl == "c":
        # the emptied table holds on to nothing: what the allocator keeps for reuse
        # aside (malloc_trim), RSS is back near where it was without the requests
        # (the reference core's ints and strings leave Python's arenas fragmented)
        if "rss_trimmed_kib" in result:
            assert result["rss_trimmed_kib"] - base["rss_trimmed_kib"] < table / 4, result
        # proportional to the 200 MB bound of 990,000 requests
        assert result["peak_kib"] < base["peak_kib"] + 200 * MiB * count / 990_000, result


@pytest.mark.c_extension
def test_the_child_reports_the_compiled_core_when_asked() -> None:
    """The measurement above runs the core it names."""
    core_class("c")
    code = "import vault_observe.core as c; print(c.IMPLEMENTATION)"
    for flag, expected in (("1", "py"), ("0", "c")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "VAULT_OBSERVE_NO_EXTENSIONS": flag},
            capture_output=True,
            check=True,
        )
        assert out.stdout.decode().strip() == expected


def test_trimmed_spans_are_counted_exported_and_logged(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from benchmarks.rss_replay_pending import request_line

    from vault_observe.config import Config
    from vault_observe.metrics_http import DaemonCollector
    from vault_observe.pipeline import Daemon

    log = tmp_path / "audit.log"
    # 30 requests that get no response, each over the cap of 150 bytes
    log.write_bytes(b"".join(request_line(i, wide=True) for i in range(30)))
    daemon = Daemon(Config(input=str(log), pending_attrs_bytes=150), [])
    with caplog.at_level("WARNING", logger="vault_observe"):
        assert daemon.run() == 0
    assert daemon.result is not None
    assert daemon.result["unanswered"] == daemon.result["attrs_trimmed"] == 30
    metrics = {m.name: m for m in DaemonCollector(daemon.snapshot).collect()}
    assert metrics["vault_observe_pending_attrs_trimmed"].samples[0].value == 30
    assert any(
        "30 unanswered or evicted span(s) carry only part" in r.getMessage() and "150" in r.getMessage()
        for r in caplog.records
    )
    daemon = Daemon(Config(input=str(log)), [])
    assert daemon.run() == 0
    assert daemon.result is not None and daemon.result["attrs_trimmed"] == 0


def test_a_reload_keeps_the_pending_tables_limits(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The core's cap is set when it is made: SIGHUP says so and keeps the running value."""
    import dataclasses

    from tests.unit.test_reload import daemon_with
    from vault_observe.config import Config
    from vault_observe.reload import reload

    config = Config(input=str(tmp_path / "in.log"))
    daemon = daemon_with(config, dataclasses.replace(config, pending_attrs_bytes=300, max_pending=7))
    with caplog.at_level("INFO", logger="vault_observe"):
        assert reload(daemon) is True
    assert daemon.config.pending_attrs_bytes == daemon.core.pending_attrs_bytes == 2048
    assert daemon.config.max_pending == daemon.core.max_pending == 40_000
    assert "SIGHUP: pending_attrs_bytes changed (2048 -> 300) but needs a restart" in caplog.text
