"""catalogs/targets.yaml is the one list of targets: a target added there (here to a
temporary copy) reaches every stage without a Python edit: the command line, the
extraction job and its quicklook and colour table, the APG's instruction, the stage-0
network's classes, SPEX's prompt targets and the tokenizer's corpus."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline import targets as targets_module

BERLIN = Path(__file__).resolve().parents[1] / "samples" / "s2_l1c_berlin_20170216.tif"
WETLAND = """
wetland:
  index: NDMI
  side: above
  category: wetland
  class_id: 4
  colour: [0, 128, 128]
"""


@pytest.fixture
def wetland_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The shipped targets catalog plus a fifth target, in place of the real one."""
    catalog = tmp_path / "targets.yaml"
    shipped = files("catalogs").joinpath("targets.yaml").read_text(encoding="utf-8")
    catalog.write_text(shipped + WETLAND, encoding="utf-8")
    monkeypatch.setattr(targets_module, "CATALOG", catalog)
    targets_module.load_targets.cache_clear()
    yield catalog
    monkeypatch.undo()
    targets_module.load_targets.cache_clear()


def test_a_new_target_reaches_every_stage(wetland_catalog: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from model.config import tiny
    from model.tokenizer import synthetic_corpus
    from model.training.config import stage0_classes
    from pipeline.apg import run_apg
    from pipeline.cli.main import app
    from pipeline.extract import ExtractionSettings, run_extraction
    from pipeline.outputs.quicklook import overlay_colour

    assert targets_module.target_names()[-1] == "wetland"
    # the command line lists it
    listing = CliRunner().invoke(app, ["targets"])
    assert listing.exit_code == 0 and "wetland" in listing.output and "NDMI" in listing.output
    # stage 0 gets a fifth class at its class_id; SPEX a prompt token and a prior channel
    assert stage0_classes() == ("other", "vegetation", "water", "building", "wetland")
    assert tiny().prompt_targets == ("water", "vegetation", "building", "wetland")
    # the APG thresholds its index and names its category; the tokenizer's corpus too
    with rasterio.open(BERLIN) as src:
        tile = src.read(window=((0, 256), (0, 256))).astype(np.float32) / 10000
    apg = run_apg(tile, ["B", "G", "R", "N", "S1", "S2"], "wetland")
    assert apg.index == "NDMI" and "attributes of the wetland regions" in apg.instruction
    assert any("wetland" in line for line in synthetic_corpus(n=60))
    # a whole extraction job: index extractor, mask colour table, quicklook, report
    settings = ExtractionSettings(target="wetland", model="index", tile=256, overlap=32)
    paths = run_extraction(str(BERLIN), settings, tmp_path / "out")
    colour = overlay_colour("wetland")
    assert colour[:3] == (0, 128, 128)
    with rasterio.open(paths["mask"]) as mask:
        assert mask.colormap(1)[1] == (0, 128, 128, 255)
        assert mask.tags(1)["CLASS_1"] == "wetland"
        extracted = int((mask.read(1) == 1).sum())
    assert extracted > 0
    quicklook = np.asarray(Image.open(str(paths["quicklook"])).convert("RGB"))
    legend = quicklook[-44:]  # the legend strip shows the target's swatch at full opacity
    assert (legend == np.array([0, 128, 128], np.uint8)).all(axis=-1).any()
    assert '"category": "wetland"' in Path(str(paths["report"])).read_text()


def test_a_target_without_a_class_id_is_refused(tmp_path: Path, monkeypatch) -> None:
    catalog = tmp_path / "targets.yaml"
    catalog.write_text(WETLAND.replace("  class_id: 4\n", ""), encoding="utf-8")
    monkeypatch.setattr(targets_module, "CATALOG", catalog)
    targets_module.load_targets.cache_clear()
    try:
        with pytest.raises(targets_module.CatalogError, match="class_id"):
            targets_module.load_targets()
    finally:
        monkeypatch.undo()
        targets_module.load_targets.cache_clear()
