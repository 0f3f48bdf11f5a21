"""Shared fixtures: paths to the bundled sample and to the shared corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHARED_CORPUS = REPO.parent / "shared" / "corpus" / "openbao-mixed.jsonl"


@pytest.fixture(scope="session")
def sample_log() -> Path:
    """A slice of real OpenBao 2.7.2 socket-device output kept in the repository."""
    return DATA / "openbao-sample.jsonl"


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not SHARED_CORPUS.exists():
        pytest.skip(f"the full corpus is not present at {SHARED_CORPUS}")
    return SHARED_CORPUS
