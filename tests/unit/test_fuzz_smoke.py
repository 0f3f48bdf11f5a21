"""The differential fuzzer (tests/fuzz) runs, finds nothing on a short run, and reports
what it finds: CI runs it long on a sanitized build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.c_extension  # the fuzzer compares the compiled core with the reference


def test_a_short_run_finds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fuzz import differential

    assert differential.main(["--lines", "1500", "--seed", "11", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "no finding" in out and "thread misuse" in out


def test_a_difference_is_a_finding_with_its_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fuzz import differential
    from vault_observe import _core_py

    real = _core_py.Core.counters

    def skewed(self: Any) -> dict[str, int]:
        counts = real(self)
        counts["lines"] += 1  # the reference now disagrees with the compiled core
        return counts

    monkeypatch.setattr(_core_py.Core, "counters", skewed)
    assert differential.main(["--lines", "50", "--seed", "3", "--out", str(tmp_path)]) == 1
    assert "FINDING" in capsys.readouterr().err
    assert list(tmp_path.glob("finding-seed3-*.jsonl"))
