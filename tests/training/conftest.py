"""Fixtures of the training tests: SPIE stores built from the bundled samples (real
pixels and real labels) in temporary folders, so the tests need neither
../shared/data nor a prebuilt store. ``two_scenes`` is in tests/conftest.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from model.training.config import StageConfig, TrainConfig


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread, as every training config here uses: on a shared 2-core
    machine two threads fighting other processes made steps 5-10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_spie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SPIE store of the bundled sample (catalogs/datasets/sample-berlin.yaml: three
    targets, train/val/test blocks)."""
    from pipeline.spie.build import build

    store = tmp_path_factory.mktemp("sample-spie") / "spie"
    build("sample-berlin", store)
    return store


@pytest.fixture
def quick_config(sample_spie: Path, tmp_path: Path) -> TrainConfig:
    """Seconds-long stages at 64 px input (each test overrides what it studies)."""
    quick = StageConfig(
        epochs=2,
        batch_size=2,
        warmup_steps=1,
        max_steps_per_epoch=3,
        lr_vision=2e-3,
        lr_llm=2e-3,
        llm="full",
    )
    return TrainConfig(
        spie=str(sample_spie),
        out=str(tmp_path / "run"),
        input_size=64,
        response_tokens=16,
        stage0=replace(quick, batch_size=4),
        stage1=quick,
        stage2=quick,
    )


@pytest.fixture(scope="session")
def two_scene_spie(two_scenes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SPIE store of the two small scenes."""
    from pipeline.spie.build import build

    store = tmp_path_factory.mktemp("two-scene-spie") / "spie"
    for catalog in two_scenes.values():
        build(str(catalog), store)
    return store
