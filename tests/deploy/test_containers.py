"""Dockerfile and docker-compose.yml, checked without a Docker engine (none here).

The compose file is validated against the Compose specification's JSON schema
(check-jsonschema's vendored copy). The Dockerfile is parsed, and what the two files rely
on is checked against each other and against the daemon itself: the user and the
folder it owns, the socket path Vault is told to write to, the metrics port, the stop
grace period against --shutdown-timeout, the commands' flags (the daemon's own
--check-config), and the HEALTHCHECK command, run against a real daemon process.
Building the image and starting the services is not possible here; hadolint is not
available either.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.deploy.prometheus import REQUIRE, import_yaml, metrics_url
from tests.implementations import PACKAGE_PATH
from tests.integration.harness import ObserveProcess
from tests.receivers import ZipkinReceiver
from vault_observe.config import build_parser

yaml = import_yaml()

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DOCKERIGNORE = REPO / ".dockerignore"


# ---------------------------------------------------------------- reading the files


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), one list per stage."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, arguments = logical.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        stages[-1].append((instruction, arguments.strip()))
        logical = ""
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def instruction(name: str) -> list[str]:
    return [arguments for inst, arguments in final_stage() if inst == name]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name`` in an argument list (``--name=value`` or ``--name value``)."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def duration_seconds(text: str) -> float:
    """A Compose duration (``1m30s``, ``45s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def image_uid_and_group() -> tuple[int, int]:
    user = instruction("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric, so Kubernetes' runAsNonRoot can check it"
    return int(uid), int(gid or uid)


# ---------------------------------------------------------------- compose schema


def test_compose_file_matches_the_compose_specification() -> None:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"check-jsonschema is not installed and {REQUIRE}=1")
        pytest.skip("check-jsonschema is not installed (test extras)")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_are_pinned() -> None:
    images = [arguments.split()[0] for stage in dockerfile_stages() for inst, arguments in stage if inst == "FROM"]
    images += [svc["image"] for svc in compose()["services"].values() if "image" in svc and "build" not in svc]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{image}: pin a version"
        assert re.search(r"\d", tag), f"{image}: the tag names no version"


# ---------------------------------------------------------------- the daemon's container


def test_daemon_runs_as_the_image_user_and_owns_its_socket_folder() -> None:
    uid, gid = image_uid_and_group()
    run = " ".join(instruction("RUN"))
    assert re.search(rf"groupadd [^&]*--gid {gid}\b[^&]* vault-observe\b", run), run
    assert re.search(rf"useradd [^&]*--uid {uid}\b[^&]*--gid vault-observe\b[^&]* vault-observe\b", run), run
    daemon = service("vault-observe")
    compose_uid = int(str(daemon["user"]).split(":")[0])
    assert compose_uid == uid, "the compose user must be the image's, who owns its folders"
    socket_path = flag(daemon["command"], "--socket-path")
    assert socket_path
    folder = os.path.dirname(socket_path)
    # The socket's folder is a volume, mounted where the image prepared a folder for its user
    # (an empty named volume takes the owner and mode of the folder it is mounted on).
    mounts = {target: source for source, target in (v.split(":")[:2] for v in daemon["volumes"])}
    assert folder in mounts, f"{folder} is not a volume of vault-observe"
    assert re.search(rf"install -d -o vault-observe -g vault-observe -m 07[57]5 {re.escape(folder)}\b", run), run


def test_vault_writes_to_the_daemon_socket_and_to_a_file_device() -> None:
    daemon = service("vault-observe")
    socket_path = flag(daemon["command"], "--socket-path")
    assert socket_path
    folder = os.path.dirname(socket_path)
    volume = next(v.split(":")[0] for v in daemon["volumes"] if v.split(":")[1] == folder)
    vault_mounts = service("vault")["volumes"]
    shared = [m for m in vault_mounts if isinstance(m, dict) and m["source"] == volume]
    assert shared and shared[0]["target"] == folder and shared[0]["volume"]["nocopy"] is True
    # Vault (uid 100, gid 1000 in its image) reaches the socket through its group.
    assert flag(daemon["command"], "--socket-mode") == "0660"
    assert str(daemon["user"]).split(":")[1] == "1000"
    script = service("vault-audit")["command"][0]
    assert f"socket address={socket_path} socket_type=unix" in script
    assert "enable file file_path=" in script, "the socket must never be Vault's only audit device"
    assert service("vault")["depends_on"]["vault-observe"]["condition"] == "service_healthy"


def test_stop_grace_period_outlasts_the_shutdown_timeout() -> None:
    daemon = service("vault-observe")
    configured = flag(daemon["command"], "--shutdown-timeout")
    default = build_parser({}).get_default("shutdown_timeout")
    shutdown_timeout = float(configured) if configured else float(default)
    grace = duration_seconds(str(daemon["stop_grace_period"]))
    assert grace >= shutdown_timeout + 5, (grace, shutdown_timeout)


def test_metrics_port_is_exposed_published_and_health_checked() -> None:
    image_args = exec_form(instruction("CMD")[-1])
    daemon = service("vault-observe")
    for args in (image_args, daemon["command"]):
        address = flag(args, "--metrics-address")
        assert address and address.rsplit(":", 1)[0] == "0.0.0.0", "reachable from outside the container"
    port = flag(image_args, "--metrics-address").rsplit(":", 1)[1]  # type: ignore[union-attr]
    assert flag(daemon["command"], "--metrics-address").endswith(f":{port}")  # type: ignore[union-attr]
    assert port in " ".join(instruction("EXPOSE")).split()
    assert any(str(p).endswith(f":{port}") for p in daemon["ports"])
    env = " ".join(instruction("ENV"))
    assert f"VAULT_OBSERVE_HEALTH_URL=http://127.0.0.1:{port}/healthz" in env


@pytest.mark.parametrize("where", ["image CMD", "compose command"])
def test_commands_are_valid_daemon_settings(where: str) -> None:
    args = exec_form(instruction("CMD")[-1]) if where == "image CMD" else service("vault-observe")["command"]
    assert exec_form(instruction("ENTRYPOINT")[-1]) == ["vault-observe"]
    result = subprocess.run(
        [sys.executable, "-m", "vault_observe", "--check-config", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": PACKAGE_PATH},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_the_build_inputs() -> None:
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    needed = ["setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "src/vault_observe/_fast.pyx"]
    for path in needed:
        assert (REPO / path).exists(), path
        for pattern in patterns:
            assert not fnmatch.fnmatch(path, pattern.rstrip("/")), (path, pattern)
    for pattern in (".venv/", ".git/", "build/"):
        assert pattern in patterns, f"{pattern} would be sent to the Docker daemon"


# ---------------------------------------------------------------- the HEALTHCHECK, run


def healthcheck_command() -> list[str]:
    (arguments,) = instruction("HEALTHCHECK")
    options, _, command = arguments.partition("CMD ")
    for option in shlex.split(options):
        name, _, value = option.partition("=")
        assert name in ("--interval", "--timeout", "--start-period", "--retries"), option
    command_args = exec_form(command)
    assert command_args[0] == "python3", "the slim image has no curl"
    return command_args


def run_healthcheck(url: str) -> int:
    command = healthcheck_command()
    command[0] = sys.executable
    env = {**os.environ, "VAULT_OBSERVE_HEALTH_URL": url}
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_healthcheck_follows_the_daemon_health(tmp_path: Path, short_socket: Path) -> None:
    # The image's CMD, with the socket and port moved somewhere a test may use, and a Zipkin
    # sink whose backend fails: healthy at first, unhealthy once it has failed for longer
    # than --health-failure-seconds.
    args = exec_form(instruction("CMD")[-1])
    args[args.index("--socket-path") + 1] = str(short_socket)
    args[args.index("--metrics-address") + 1] = "127.0.0.1:0"
    with ZipkinReceiver() as zipkin:
        zipkin.fail_with = 503
        daemon = ObserveProcess(
            [*args, "--zipkin", zipkin.url, "--health-failure-seconds", "1", "--retry-window", "0.5",
             "--flush-interval", "0.05", "--shutdown-timeout", "1"],
            tmp_path,
        )  # fmt: skip
        try:
            daemon.start(short_socket)
            url = f"{metrics_url(daemon)}/healthz"
            assert run_healthcheck(url) == 0, daemon.stderr()
            # One span's worth of audit log, so the sink has something to fail on.
            lines = (REPO / "tests" / "data" / "openbao-sample.jsonl").read_bytes().splitlines()[:4]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(short_socket))
                conn.sendall(b"\n".join(lines) + b"\n")
            wait_for(lambda: run_healthcheck(url) != 0)
        finally:
            daemon.kill()
    assert run_healthcheck(url) != 0  # nothing listening: unhealthy
