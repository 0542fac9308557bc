"""Readers over the five paper layouts (real pixels), and their errors on bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.spie.catalog import load_dataset
from pipeline.spie.errors import DatasetError
from pipeline.spie.readers import NO_CLASS, discover, open_image, read_class_ids, target_mask

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

EXPECTED = {"segmunich": 6, "chesapeake": 4, "globe230k": 4, "spacenet-v2": 4, "gid-15": 2}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_paper_layout_is_discovered_and_read(name: str, paper_roots: dict) -> None:
    spec = load_dataset(name)
    items = discover(spec, paper_roots[name])
    assert len(items) == EXPECTED[name]
    assert [i.id for i in items] == sorted(i.id for i in items)
    image = open_image(spec, items[0])
    named = spec.open_kwargs.get("bands")
    expected = [spec.sensor.band(b).code for b in named] if named else list(spec.sensor.codes)
    assert image.bands == expected
    pixels = image.read(0, 0, 32)
    assert pixels.dtype == np.float32 and pixels.shape == (len(image.bands), 32, 32)
    assert np.isfinite(pixels).all() and 0 < np.nanmedian(pixels) < 2
    ids = read_class_ids(spec, items[0], image)
    assert ids.shape == (image.height, image.width)
    assert set(np.unique(ids)) - {NO_CLASS} <= set(spec.classes)


def test_gid_bands_follow_the_nir_rgb_file_order(paper_roots: dict) -> None:
    spec = load_dataset("gid-15")
    item = discover(spec, paper_roots["gid-15"])[0]
    image = open_image(spec, item)
    assert image.bands == ["N", "R", "G", "B"]
    with rasterio.open(item.image) as src:
        raw = src.read(1).astype(np.float64)
    ratio = image.read(0, 0, image.height)[0] / raw
    assert np.nanstd(ratio[raw > 0]) < 1e-5  # one common percentile scale, NIR first


def test_gid_rgb_labels_decode_to_water_where_lake_colour(paper_roots: dict) -> None:
    spec = load_dataset("gid-15")
    item = discover(spec, paper_roots["gid-15"])[0]
    ids = read_class_ids(spec, item, open_image(spec, item))
    with rasterio.open(item.label) as src:
        rgb = src.read()
    lake = (rgb[0] == 0) & (rgb[1] == 150) & (rgb[2] == 200)
    assert lake.any()
    assert np.array_equal(target_mask(ids, spec, "water") == 1, lake)


def test_geojson_footprints_rasterise_onto_the_label_raster(
    paper_roots: dict, shared_data: Path, make_fixtures
) -> None:
    """Footprints written in lon/lat come back on the image grid where the source says so."""
    spec = load_dataset("spacenet-v2")
    berlin = make_fixtures.Berlin(shared_data / "s2-l1c-berlin")
    for item, (r, c) in zip(
        discover(spec, paper_roots["spacenet-v2"]),
        [(384, 132), (516, 264), (384, 396), (0, 1008)],
        strict=True,
    ):
        image = open_image(spec, item)
        mask = target_mask(read_class_ids(spec, item, image), spec, "building") == 1
        truth = berlin.label(r, c, image.height) == 8
        union = (mask | truth).sum()
        if union == 0:
            continue
        assert (mask & truth).sum() / union > 0.98, item.id
        assert json.loads(item.label.read_text())["type"] == "FeatureCollection"


def test_missing_label_file_is_an_error_naming_it(paper_roots: dict, tmp_path: Path) -> None:
    root = shutil.copytree(paper_roots["chesapeake"], tmp_path / "c")
    victim = next(root.rglob("*_lc.tif"))
    victim.unlink()
    with pytest.raises(DatasetError, match=f"label file .*{victim.name}.* is missing"):
        discover(load_dataset("chesapeake"), root)


def test_image_label_size_mismatch_is_an_error(paper_roots: dict, tmp_path: Path) -> None:
    root = shutil.copytree(paper_roots["segmunich"], tmp_path / "s")
    spec = load_dataset("segmunich")
    item = discover(spec, root)[0]
    with rasterio.open(item.label) as src:
        profile, data = src.profile, src.read()
    profile.update(height=64, width=64)
    with rasterio.open(item.label, "w", **profile) as dst:
        dst.write(data[:, :64, :64])
    with pytest.raises(DatasetError, match=r"size mismatch: image .* is 128x128 px but label"):
        read_class_ids(spec, item, open_image(spec, item))


def test_unmapped_class_is_an_error_listing_the_catalog(paper_roots: dict, tmp_path: Path) -> None:
    root = shutil.copytree(paper_roots["segmunich"], tmp_path / "s")
    spec = load_dataset("segmunich")
    item = discover(spec, root)[0]
    with rasterio.open(item.label, "r+") as dst:
        data = dst.read()
        data[0, 0, 0] = 42
        dst.write(data)
    with pytest.raises(DatasetError, match=r"unmapped class id\(s\) \[42\].*0 background"):
        read_class_ids(spec, item, open_image(spec, item))


def test_unknown_label_colour_is_an_error(paper_roots: dict, tmp_path: Path) -> None:
    root = shutil.copytree(paper_roots["gid-15"], tmp_path / "g")
    spec = load_dataset("gid-15")
    item = discover(spec, root)[0]
    with rasterio.open(item.label, "r+") as dst:
        data = dst.read()
        data[:, 0, 0] = (1, 2, 3)
        dst.write(data)
    with pytest.raises(DatasetError, match=r"colour\(s\) \(1, 2, 3\)"):
        read_class_ids(spec, item, open_image(spec, item))


def test_raleigh_labels_in_an_equivalent_crs_are_accepted(shared_data: Path) -> None:
    spec = load_dataset("l7-raleigh")
    item = discover(spec, shared_data / "l7-raleigh")[0]
    ids = read_class_ids(spec, item, open_image(spec, item))
    assert set(np.unique(ids)) == {NO_CLASS, 1, 2, 3, 4, 5, 6, 7}
