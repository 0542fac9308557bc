"""Fixtures of the SPIE tests: paper-layout stand-ins written from real pixels, once."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    path = REPO / "tests" / "fixtures" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("spie_make_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_fixtures() -> ModuleType:
    return _generator()


@pytest.fixture(scope="session")
def paper_roots(
    shared_data: Path, make_fixtures: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The five paper-layout fixtures under one temporary folder."""
    out = tmp_path_factory.mktemp("paper-fixtures")
    return make_fixtures.make_all(out, shared_data / "s2-l1c-berlin")
