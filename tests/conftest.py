"""Shared fixtures: paths to the bundled sample and to the shared corpus, and the
implementation ("py" or "c") a differential test runs on (tests/implementations.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.implementations import IMPLEMENTATIONS, check_marked, core_class

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
_CORPUS_NAME = Path("shared") / "corpus" / "openbao-mixed.jsonl"
# The full corpus sits beside the checkout; VAULT_OBSERVE_CORPUS points elsewhere.
SHARED_CORPUS = next(
    (
        p
        for p in (
            Path(os.environ.get("VAULT_OBSERVE_CORPUS", "/nonexistent")),
            REPO.parent / _CORPUS_NAME,
            REPO.parent.parent / _CORPUS_NAME,
        )
        if p.is_file()
    ),
    REPO.parent / _CORPUS_NAME,
)


@pytest.fixture(scope="session")
def sample_log() -> Path:
    """A slice of real OpenBao 2.7.2 socket-device output kept in the repository."""
    return DATA / "openbao-sample.jsonl"


@pytest.fixture
def short_socket() -> Iterator[Path]:
    """A unix socket path short enough for the ~107-byte limit."""
    folder = Path(tempfile.mkdtemp(prefix="vo-"))
    try:
        yield folder / "audit.sock"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.exists():
        pytest.skip(f"the full corpus is not present at {SHARED_CORPUS}")
    return SHARED_CORPUS


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    check_marked(item)


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """ "py" (the reference) or "c" (the compiled parts, marked ``c_extension``)."""
    return str(request.param)


@pytest.fixture
def make_core(impl: str) -> Callable[..., Any]:
    """A factory of cores of ``impl``, taking Core's keyword options."""
    cls = core_class(impl)

    def make(**options: Any) -> Any:
        return cls(**options)

    return make


@pytest.fixture
def core(make_core: Callable[..., Any]) -> Any:
    """A core of ``impl`` with the default options."""
    return make_core()
