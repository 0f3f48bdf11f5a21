"""Which implementation runs. With VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 (CI) every
compiled part must be built and chosen; a missing one fails the run instead of
leaving the Python twins to run in its place unnoticed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.implementations import COMPILED_PARTS
from vault_observe import _compat, core
from vault_observe.sinks.encoding import honeycomb, otlp, zipkin

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_compiled_parts_are_known() -> None:
    assert {"_fast", "_spans", "_batch_json", "_zipkin_proto"} <= set(COMPILED_PARTS)


@pytest.mark.skipif(not _compat.REQUIRE_EXTENSIONS, reason="VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 is not set")
def test_every_compiled_part_is_built_and_chosen_when_required() -> None:
    missing: dict[str, str] = {}
    for name in COMPILED_PARTS:
        try:
            importlib.import_module(f"vault_observe.{name}")
        except ImportError as exc:
            missing[name] = str(exc)
    assert not missing, f"VAULT_OBSERVE_REQUIRE_EXTENSIONS=1 but not built: {missing}"
    expected = "c" if _compat.USE_EXTENSIONS else "py"
    assert expected == core.IMPLEMENTATION, core.LOAD_ERROR
    encoders = {
        "zipkin": zipkin.ProtoBodyEncoder("vault", "vault-observe", "0").implementation,
        "honeycomb": honeycomb.BatchEncoder("vault").implementation,
        "otlp": otlp.BodyEncoder("vault").implementation,
    }
    assert encoders == dict.fromkeys(encoders, expected)


def run_pytest_without_the_compiled_core(*, require: bool) -> str:
    """A child pytest run in which ``vault_observe._fast`` cannot be imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_OBSERVE_")}
    if require:
        env["VAULT_OBSERVE_REQUIRE_EXTENSIONS"] = "1"
    code = (
        "import sys; sys.modules['vault_observe._fast'] = None; import pytest; "
        "sys.exit(pytest.main(sys.argv[1:]))"
    )
    tests = [
        "tests/unit/test_compiled_parts.py::test_every_compiled_part_is_built_and_chosen_when_required",
        "tests/unit/test_core.py::test_implementation_name",
    ]
    result = subprocess.run(
        [sys.executable, "-c", code, "-q", "-rfEs", "-p", "no:cacheprovider", *tests],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.stdout


def test_a_missing_compiled_core_fails_when_required_and_skips_otherwise() -> None:
    required = run_pytest_without_the_compiled_core(require=True)
    # the differential test errors in its setup, the check of the build fails
    assert "1 failed, 1 passed, 1 error" in required, required
    assert "ERROR tests/unit/test_core.py::test_implementation_name[c]" in required, required
    assert "vault_observe._fast is not built" in required, required
    optional = run_pytest_without_the_compiled_core(require=False)
    assert "1 passed, 2 skipped" in optional, optional
    assert "vault_observe._fast is not built" in optional, optional
