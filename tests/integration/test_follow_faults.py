"""Follow mode against a real OpenBao file device: kill -9 three times at random moments
under load, a rotation with OpenBao's SIGHUP 5 s after the daemon's restart, and a sink
down longer than the retry window. Every response is traced exactly once (beyond the
re-sends each restart announces), every pair intact."""

from __future__ import annotations

from pathlib import Path

from tests.integration.follow_faults import run
from vault_observe.openbao import DevServer


def test_follow_mode_loses_nothing_and_splits_no_pair_under_faults(bao: DevServer, tmp_path: Path) -> None:
    outcome = run(bao, tmp_path, kills=3, outage=4.0, sighup_delay=5.0)
    assert outcome.kills == 3 and outcome.restarts == 1
    assert outcome.responses > 300  # the faults happened under load
    assert outcome.spans >= outcome.responses
    # The reader waits while the sink is down: the queue, and memory, stay small.
    assert 0 < outcome.rss_outage_peak_kib < 150 * 1024, outcome
