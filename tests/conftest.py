"""Shared fixtures: paths to the bundled sample and to the shared corpus."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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
