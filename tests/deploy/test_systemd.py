"""The shipped systemd units: verified, hardened, and their ExecStart run as systemd would.

Needs ``systemd-analyze`` (Debian's ``systemd`` package) and, for the ExecStart runs,
root with mount and network namespaces (``unshare``); without them the tests skip,
unless VAULT_OBSERVE_REQUIRE_SYSTEMD=1 (set in CI), where they fail. systemd itself
does not run here (not PID 1): the sandboxing directives are checked by
``systemd-analyze security`` only, except MemoryDenyWriteExecute= (applied with prctl).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERVICES = ["vault-observe.service", "vault-observe-follow.service"]
MAX_EXPOSURE = 2.0


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        reason = f"{tool} is not installed (Debian package systemd / util-linux)"
        if os.environ.get("VAULT_OBSERVE_REQUIRE_SYSTEMD") == "1":
            pytest.fail(reason + " and VAULT_OBSERVE_REQUIRE_SYSTEMD=1")
        pytest.skip(reason)
    return path


def entry_point() -> str:
    script = Path(sys.executable).parent / "vault-observe"
    if not script.exists():
        pytest.skip("no installed vault-observe entry point next to the interpreter")
    return str(script)


@pytest.mark.parametrize("unit", [*SERVICES, "vault-observe.socket"])
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    # verify wants ExecStart's binary to exist: the installed entry point stands in.
    for name in [*SERVICES, "vault-observe.socket"]:
        text = (DEPLOY / name).read_text().replace("/usr/local/bin/vault-observe", entry_point())
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("unit", SERVICES)
def test_service_exposure_is_ok(unit: str) -> None:
    analyze = need("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={int(MAX_EXPOSURE * 10)}", str(DEPLOY / unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE and match.group(2) == "OK", result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def run_unit(*args: str) -> dict[str, Any]:
    need("systemd-sysusers")
    unshare = need("unshare")
    if os.geteuid() != 0:
        pytest.skip("running a unit as its User= needs root")
    probe = subprocess.run([unshare, "--mount", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = f"no mount/network namespaces here: {probe.stderr.strip()}"
        if os.environ.get("VAULT_OBSERVE_REQUIRE_SYSTEMD") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    result = subprocess.run(
        [unshare, "--mount", "--net", "--propagation", "private",
         sys.executable, "-m", "tests.systemd_exec", *args, "--entry-point", entry_point()],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    facts: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if "skip" in facts:
        pytest.skip(facts["skip"])
    return facts


def check_common(facts: dict[str, Any], config: str) -> None:
    observe_uid, observe_gid = facts["names"]["vault-observe"]
    vault_gid = facts["names"]["vault"][1]
    # The install comments ran: sysusers made the user, the config is root:vault-observe 0640.
    assert any(line.startswith("install -m 0640") and config in line for line in facts["installed"])
    assert facts["config_mode"] == "0o640" and facts["config_readable_by_vault"] == "EACCES"
    # User=, Group=, SupplementaryGroups=, no capabilities, no new privileges.
    assert facts["Uid"] == [str(observe_uid)] * 4 and facts["Gid"] == [str(vault_gid)] * 4
    assert sorted(facts["Groups"]) == sorted([str(observe_gid), str(vault_gid)])
    assert facts["CapBnd"] == ["0000000000000000"] and facts["NoNewPrivs"] == ["1"]
    # It read its config (or it would have exited 2 before READY=1) and shut down cleanly.
    assert facts["ready"], facts["stderr"]
    assert facts["notifications"][0].split("\n")[0] == "READY=1"
    assert facts["notifications"][-1] == "STOPPING=1"
    assert facts["exit"] == 0, facts["stderr"]
    assert facts["spans_received"] == 718, facts["stderr"]  # every span of the sample, at the config's Zipkin


def test_service_exec_start_as_systemd_would_run_it() -> None:
    facts = run_unit("vault-observe.service")
    check_common(facts, "vault-observe.toml")
    assert facts["notifications"][0] == "READY=1\nSTATUS=listening on unix:///run/vault-observe/audit.sock"
    observe_uid = facts["names"]["vault-observe"][0]
    vault_gid = facts["names"]["vault"][1]
    assert facts["socket"] == {"uid": observe_uid, "gid": vault_gid, "mode": "0o660"}
    assert facts["connect_as_vault"] == "yes" and facts["connect_as_other"] == "EACCES"
    assert facts["socket_left"] is False  # its own socket: removed at exit


def test_service_with_its_socket_unit_as_systemd_would_run_them() -> None:
    facts = run_unit("vault-observe.service", "--socket", "vault-observe.socket")
    check_common(facts, "vault-observe.toml")
    assert "passed by the service manager" in facts["stderr"]
    observe_uid = facts["names"]["vault-observe"][0]
    vault_gid = facts["names"]["vault"][1]
    assert facts["socket"] == {"uid": observe_uid, "gid": vault_gid, "mode": "0o660"}
    assert facts["connect_as_vault"] == "yes" and facts["connect_as_other"] == "EACCES"
    assert facts["socket_left"] is True  # systemd's socket outlives the daemon


def test_follow_service_exec_start_as_systemd_would_run_it() -> None:
    facts = run_unit("vault-observe-follow.service")
    check_common(facts, "follow.toml")
    # the checkpoint, in StateDirectory=, private to the service (UMask=0077)
    assert facts["checkpoint"] == {"uid": facts["names"]["vault-observe"][0], "mode": "0o600"}
