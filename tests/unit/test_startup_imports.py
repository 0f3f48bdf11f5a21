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

import pytest

from tests.implementations import PACKAGE_PATH
from tests.receivers import ZipkinReceiver

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
        env={**os.environ, "PYTHONPATH": PACKAGE_PATH, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(listing.read_text()))


def test_text_logs_do_not_import_the_json_log_formatter(tmp_path: Path, sample_log: Path) -> None:
    assert "pythonjsonlogger" not in modules_of_replay(tmp_path, sample_log)
    # the probe sees it when it is used
    assert "pythonjsonlogger" in modules_of_replay(tmp_path, sample_log, "--log-format", "json")


def test_a_replay_without_a_network_sink_imports_no_network_module(tmp_path: Path, sample_log: Path) -> None:
    # the systemd protocols make their sockets only under systemd, and only --listen
    # parses a URL
    network = {"socket", "urllib.parse"}
    assert not network & modules_of_replay(tmp_path, sample_log)
    assert not network & modules_of_replay(tmp_path, sample_log, "--stdout")
    assert network <= modules_of_replay(tmp_path, sample_log, "--metrics-address", "127.0.0.1:0")


@pytest.mark.c_extension("_fast", "_zipkin_proto")
def test_orjson_is_imported_by_the_first_line_or_body_that_needs_it(tmp_path: Path, sample_log: Path) -> None:
    # With the uuid and platform modules it imports, orjson costs ~4 ms of start-up: the
    # compiled core reads well-formed lines without it, and the protobuf Zipkin body
    # does not use it.
    with ZipkinReceiver() as receiver:
        loaded = modules_of_replay(tmp_path, sample_log, "--zipkin", receiver.url)
        assert len(receiver.spans) == 718
    assert "orjson" not in loaded and "uuid" not in loaded
    assert "orjson" not in modules_of_replay(tmp_path, sample_log)
    # a line with a repeated key goes to the reference reader, on orjson
    odd = tmp_path / "odd.jsonl"
    repeated_key = b'{"type": "request", "type": "request", "time": "2026-01-01T00:00:00Z"}\n'
    odd.write_bytes(sample_log.read_bytes() + repeated_key)
    assert "orjson" in modules_of_replay(tmp_path, odd)
