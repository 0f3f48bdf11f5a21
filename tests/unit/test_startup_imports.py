"""Start-up cost: a replay imports only what its settings use.

Each case runs the daemon in a fresh interpreter and reads which modules it loaded.
A module a mode does not use costs every start of that mode its import time, so the
ones below are imported where they are needed, and these tests keep them there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Runs the command line's main() and writes the names of the loaded modules to argv[1].
_PROBE = """\
import json, sys
from vault_observe.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
raise SystemExit(code)
"""


def modules_of_replay(
    tmp_path: Path, sample: Path, *flags: str, env: dict[str, str] | None = None
) -> set[str]:
    """The modules loaded by a replay of ``sample`` with ``flags``, once it has ended."""
    listing = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(listing), "--input", str(sample), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(SRC), **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(listing.read_text()))


def test_text_logs_do_not_import_the_json_log_formatter(tmp_path: Path, sample_log: Path) -> None:
    assert "pythonjsonlogger" not in modules_of_replay(tmp_path, sample_log)
    # the probe sees it when it is used
    assert "pythonjsonlogger" in modules_of_replay(tmp_path, sample_log, "--log-format", "json")


def test_a_replay_without_a_network_sink_does_not_import_socket(tmp_path: Path, sample_log: Path) -> None:
    # the systemd protocols make their sockets only under systemd
    assert "socket" not in modules_of_replay(tmp_path, sample_log)
    assert "socket" not in modules_of_replay(tmp_path, sample_log, "--stdout")
    assert "socket" in modules_of_replay(tmp_path, sample_log, "--metrics-address", "127.0.0.1:0")
