"""The builder over the five paper-layout fixtures: samples, store, determinism, errors."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.spie.build import BuildConfig, build
from pipeline.spie.catalog import DatasetSpec, load_dataset
from pipeline.spie.errors import DatasetError
from pipeline.spie.store import SpieDataset, SpieStore

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

#: Patch sizes for the small stand-ins (the catalogs' defaults are the papers' sizes).
FIXTURE_PATCH = {
    "segmunich": None,
    "chesapeake": 128,
    "globe230k": 64,
    "spacenet-v2": 128,
    "gid-15": 128,
}


def _spec(name: str) -> DatasetSpec:
    spec = load_dataset(name)
    if spec.split.block_px:  # GID's 1024 px blocks do not fit the 384 px stand-in scenes
        spec = replace(spec, split=replace(spec.split, block_px=None))
    return spec


def _build(name: str, roots: dict, out: Path, **kw):
    return build(
        _spec(name), out, root=roots[name], config=BuildConfig(patch_size=FIXTURE_PATCH[name]), **kw
    )


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", sorted(FIXTURE_PATCH))
def test_builder_over_each_paper_fixture(name: str, paper_roots: dict, tmp_path: Path) -> None:
    report = _build(name, paper_roots, tmp_path)
    spec = _spec(name)
    assert report.n_samples > 0 and report.part is not None
    assert set(report.per_target) == set(spec.targets)
    rows = list(SpieDataset(tmp_path))
    assert len(rows) == report.n_samples == len(SpieDataset(tmp_path, arrays=False))
    size = report.patch_size
    for row in rows:
        assert row["image"].shape == (len(row["bands"]), size, size)
        assert row["mask"].shape == (size, size) and set(np.unique(row["mask"])) <= {0, 1, 255}
        assert row["instruction"].startswith("Based on the provided image and the attributes")
        assert row["quality_score"] >= 0.8 and row["response"]
        assert row["split"] in ("train", "val", "test")
    if name == "spacenet-v2":  # no SWIR: the APG says so, the instruction lists no regions
        assert all(r["apg_index"] is None and r["spectral_prompt"] == "[]" for r in rows)
        assert all("NDBI not computable" in r["apg_note"] for r in rows)
    if name == "globe230k":  # RGB only: NDVI comes from the NDVI modality
        assert all(r["apg_index"] == "NDVI" for r in rows)
    if name == "chesapeake":
        assert {r["split"] for r in rows} == {"train", "val", "test"}
        assert all(r["source"].split("/")[0].endswith(f"-{r['split']}_tiles") for r in rows)


def test_same_inputs_give_the_same_bytes(paper_roots: dict, tmp_path: Path) -> None:
    for out in (tmp_path / "a", tmp_path / "b"):
        for name in ("segmunich", "gid-15"):
            _build(name, paper_roots, out)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_append_new_images_without_rewriting(paper_roots: dict, tmp_path: Path) -> None:
    root = shutil.copytree(paper_roots["chesapeake"], tmp_path / "src")
    later = sorted(root.rglob("*-test_tiles"))[0]
    held = shutil.move(later, tmp_path / "held")
    out = tmp_path / "out"
    first = _build("chesapeake", {"chesapeake": root}, out)
    before = _tree_digest(out / "chesapeake" / "part-00000")
    again = _build("chesapeake", {"chesapeake": root}, out)
    assert again.n_samples == 0 and again.n_existing == first.n_samples and again.part is None
    shutil.move(held, later)
    third = _build("chesapeake", {"chesapeake": root}, out)
    assert third.n_samples > 0 and third.per_split == {"test": third.n_samples}
    assert _tree_digest(out / "chesapeake" / "part-00000") == before
    entry = SpieStore(out).manifest()["subsets"]["chesapeake"]
    assert [v["version"] for v in entry["versions"]] == [1, 2]
    assert entry["versions"][0]["hash"] != entry["versions"][1]["hash"] == entry["hash"]
    assert len(SpieDataset(out)) == first.n_samples + third.n_samples


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing_label", r"label file .* is missing"),
        ("size_mismatch", r"image/label size mismatch: image .* is 128x128 px but label"),
        ("unmapped_class", r"unmapped class id\(s\) \[77\]"),
        ("empty", r"no images match 'TUM_128/img/\*\.tif' .* nothing to build"),
    ],
)
def test_bad_inputs_fail_clearly_and_leave_no_output(
    breakage: str, message: str, paper_roots: dict, tmp_path: Path
) -> None:
    root = shutil.copytree(paper_roots["segmunich"], tmp_path / "src")
    labels = sorted((root / "TUM_128" / "label").glob("*.tif"))
    victim = labels[-1]  # the last image: earlier ones are already processed when it fails
    if breakage == "missing_label":
        victim.unlink()
    elif breakage == "empty":
        for p in (root / "TUM_128" / "img").glob("*.tif"):
            p.unlink()
    else:
        with rasterio.open(victim) as src:
            profile, data = src.profile, src.read()
        if breakage == "size_mismatch":
            profile.update(height=100)
            data = data[:, :100]
        else:
            data[0, 5, 5] = 77
        with rasterio.open(victim, "w", **profile) as dst:
            dst.write(data)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=message):
        _build("segmunich", {"segmunich": root}, out)
    assert not out.exists()


def test_failed_append_keeps_the_existing_store_intact(paper_roots: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build("gid-15", paper_roots, out)
    before = _tree_digest(out)
    root = shutil.copytree(paper_roots["segmunich"], tmp_path / "src")
    victim = sorted((root / "TUM_128" / "label").glob("*.tif"))[-1]
    with rasterio.open(victim, "r+") as dst:
        data = dst.read()
        data[0, 0, 0] = 99
        dst.write(data)
    with pytest.raises(DatasetError, match="unmapped"):
        _build("segmunich", {"segmunich": root}, out)
    assert _tree_digest(out) == before
