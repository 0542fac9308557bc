"""The newer labelled sets (sparse points and polygons, places), pseudo-labelled sets,
and the scene pixel samples the builder stores for training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.errors import CatalogError
from pipeline.spie.build import build, scene_sample
from pipeline.spie.catalog import load_dataset, load_dataset_file
from pipeline.spie.index_stats import index_values
from pipeline.spie.pseudo import load_pseudo_rule, pseudo_mask, pseudo_stats
from pipeline.spie.scenes import labelled_images
from pipeline.spie.store import SpieDataset, SpieStore

REPO = Path(__file__).resolve().parents[2]


def test_new_catalogs_match_the_shared_data_readme() -> None:
    aber = load_dataset("s2-aberystwyth")
    assert aber.targets == {"vegetation": (1, 2), "water": (4,), "building": (3,)}
    assert aber.open_kwargs == {"level": "L2A", "encoding": "reflectance-x1000"}
    rondonia = load_dataset("l8-rondonia-points")
    assert rondonia.targets == {"water": (1,), "vegetation": (3,)}
    assert rondonia.ignore_for == {"vegetation": (4,)}  # pasture: neither
    assert load_dataset("l5-teamlucc-forest").targets == {"vegetation": (1,)}
    assert load_dataset("naip-chesapeake-patches").targets == {"vegetation": (2, 3)}
    assert load_dataset("naip-chesapeake-buildings").targets == {"building": (1,)}
    assert load_dataset("hymap-berlin-urban-gradient").targets == {
        "vegetation": (3, 4),
        "building": (1,),
    }
    naip = ("naip-chesapeake-patches", "naip-chesapeake-buildings")
    assert {load_dataset(n).place for n in naip} == {"naip-chesapeake-wv"}  # same images
    assert load_dataset("sample-berlin").place == load_dataset("s2-l1c-berlin").place
    assert load_dataset("l7-raleigh").place == "l7-raleigh"  # default: its own name
    for name in ("naip-north-dakota-pseudo", "l7-stars-pseudo", "s2-xrspatial-pseudo"):
        spec = load_dataset(name)
        assert spec.pseudo and spec.classes == {} and "water" in spec.targets


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layout": {"images": "x.tif", "labels": "l.tif", "label_format": "pseudo"}}, "absent"),
        ({"classes": {1: "a"}}, "'classes' has no meaning"),
        ({"targets": {"water": [1]}}, "list of targets"),
    ],
)
def test_malformed_pseudo_entries(tmp_path: Path, changes: dict, message: str) -> None:
    raw = yaml.safe_load(Path(load_dataset("l7-stars-pseudo").path).read_text())
    raw.update(changes)
    path = tmp_path / "l7-stars-pseudo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=message):
        load_dataset_file(path)


def test_ignore_for_must_name_other_classes(tmp_path: Path) -> None:
    raw = yaml.safe_load(Path(load_dataset("l8-rondonia-points").path).read_text())
    raw["ignore_for"] = {"vegetation": [3]}  # forest is the vegetation class itself
    path = tmp_path / "l8-rondonia-points.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match="outside vegetation"):
        load_dataset_file(path)


def test_sparse_points_score_only_labelled_pixels(shared_data: Path) -> None:
    image = next(labelled_images("l8-rondonia-points"))
    veg, water = image.truth("vegetation"), image.truth("water")
    assert int((water != 255).sum()) == 92  # every point counts for water
    assert int((veg != 255).sum()) == 92 - 26  # agriculture is no vegetation negative
    assert int((veg == 1).sum()) == 30 and int((water == 1).sum()) == 9


def test_pseudo_labels_are_confident_and_bounded(shared_data: Path, tmp_path: Path) -> None:
    """The rule on a real unlabelled scene: labels only where the index is far from its
    scene threshold, a second index agrees and the published bound holds; the builder
    stores them with the rule in the part's metadata."""
    rule = load_pseudo_rule()
    image = next(labelled_images("l7-stars-pseudo"))
    valid = image.valid
    stats = pseudo_stats(image.pixels, image.bands, ["water", "vegetation"], valid)
    water = pseudo_mask(image.pixels, image.bands, valid, "water", stats)
    assert set(np.unique(water)) <= {0, 1, 255}
    assert (water == 1).mean() > 0 and (water == 255).any()
    ndwi = index_values(image.pixels, image.bands, "NDWI")
    z = (ndwi - stats["NDWI"].threshold) / stats["NDWI"].spread
    assert (z[water == 1] >= rule.margin).all() and (ndwi[water == 1] > 0).all()
    assert (z[water == 0] <= -rule.margin).all()

    report = build("l7-stars-pseudo", tmp_path / "spie")
    assert report.n_samples > 0
    part = SpieStore(tmp_path / "spie").parts("l7-stars-pseudo")[0][1]
    assert part["pseudo_labels"]["margin"] == rule.margin
    assert part["place"] == "l7-stars"
    for row in SpieDataset(tmp_path / "spie"):
        assert set(np.unique(row["mask"])) <= {0, 1, 255}


def test_scene_samples_are_stored_per_source_image(tmp_path: Path) -> None:
    """Every sample points at its source image's pixel sample: valid pixels of that
    image, drawn with a seed from its id (the same image always gives the same)."""
    import zarr

    build("sample-berlin", tmp_path / "spie")
    store = SpieStore(tmp_path / "spie")
    ((subset, part),) = store.parts("sample-berlin")
    folder = store.root / subset / part["name"]
    samples = zarr.open_array(str(folder / "scene_samples.zarr"), mode="r")
    assert samples.shape[0] == 1 and samples.shape[2] == 4096
    rows = list(SpieDataset(tmp_path / "spie", arrays=False))
    assert {r["scene_row"] for r in rows} == {0}
    image = next(labelled_images("sample-berlin"))
    sample = np.asarray(samples[0])
    assert np.isfinite(sample).all()
    flat = image.pixels.reshape(image.pixels.shape[0], -1).T
    assert (sample.T[:10, None, :] == flat[None]).all(axis=2).any(axis=1).all()
    again = scene_sample(image.pixels, "sample-berlin:s2_l1c_berlin_20170216.tif")
    np.testing.assert_array_equal(again, sample)
