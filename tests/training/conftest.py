"""Fixtures of the training tests: a small SPIE store built from the bundled Berlin
sample (real pixels and real OSM labels) in a temporary folder, so the tests need
neither ../shared/data nor a prebuilt store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from model.training.config import StageConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def _load_two_scenes():
    import importlib.util

    path = REPO / "tests" / "fixtures" / "two_scenes.py"
    spec = importlib.util.spec_from_file_location("spex_two_scenes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


write_two_scenes = _load_two_scenes().write_two_scenes

# The Berlin set's catalog, pointed at the 768x768 bundled crop and its label crop.
SAMPLE_CATALOG = {
    "name": "sample-berlin",
    "title": "Bundled Sentinel-2 L1C Berlin crop with OSM land-use labels (tests)",
    "sensor": "sentinel2-l1c",
    "georeferenced": True,
    "layout": {
        "images": "s2_l1c_berlin_20170216.tif",
        "labels": "s2_l1c_berlin_20170216_osm_labels.tif",
    },
    "classes": {
        0: "unlabelled",
        1: "farm",
        2: "meadow",
        3: "grass",
        4: "scrub",
        5: "forest",
        6: "wetland",
        7: "water",
        8: "residential",
    },
    "ignore": [0],
    "targets": {"vegetation": [1, 2, 3, 4, 5], "water": [7], "building": [8]},
    "patch": {"size": 128, "min_valid": 0.1},
    "split": {
        "method": "blocks",
        "fractions": {"train": 0.7, "val": 0.1, "test": 0.2},
        "buffer_px": 8,
        "seed": 0,
    },
}


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
    """A SPIE store of the bundled sample (three targets, train/val/test blocks)."""
    from pipeline.spie.build import build

    tmp = tmp_path_factory.mktemp("sample-spie")
    catalog = tmp / "sample-berlin.yaml"
    catalog.write_text(yaml.safe_dump(SAMPLE_CATALOG))
    store = tmp / "spie"
    build(str(catalog), store, root=REPO / "samples")
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


# -- two small real scenes at two places: the bundled Berlin and Gewata samples ---------


@pytest.fixture(scope="session")
def two_scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Catalog files of two small real scenes at two places (tests/fixtures/two_scenes.py)."""
    return write_two_scenes(tmp_path_factory.mktemp("two-scenes"))


@pytest.fixture(scope="session")
def two_scene_spie(two_scenes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SPIE store of the two small scenes."""
    from pipeline.spie.build import build

    store = tmp_path_factory.mktemp("two-scene-spie") / "spie"
    for catalog in two_scenes.values():
        build(str(catalog), store)
    return store
