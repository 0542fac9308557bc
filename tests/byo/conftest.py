"""The bring-your-own-scene corpus, built once per test session from real pixels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from byo_corpus import Case, build_corpus

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SPEX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """Every convention by name (the NAIP one from ../shared/data when it is there)."""
    cases = build_corpus(tmp_path_factory.mktemp("byo"), SHARED if SHARED.is_dir() else None)
    return {case.name: case for case in cases}
