"""End to end: ``generate-spie`` over the shared labelled sets, checked against the labels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from pipeline.cli.spie import spie_app
from pipeline.spie.catalog import load_dataset
from pipeline.spie.facts import sample_facts
from pipeline.spie.quality import DEFAULT_BAR, score_response
from pipeline.spie.store import SpieDataset

SETS = ["s2-l1c-berlin", "l7-raleigh", "landsat-gewata", "s2-l1c-slovenia"]


@pytest.fixture(scope="module")
def flow_out(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from prefect.testing.utilities import prefect_test_harness

    from flows.generate_spie import generate_spie

    out = tmp_path_factory.mktemp("spie-flow")
    with prefect_test_harness(server_startup_timeout=180):  # a real, temporary API server
        result = generate_spie(datasets=SETS, out_dir=str(out))
    return out, result


def _labels(spec, row: dict, root: Path) -> np.ndarray:
    """Independent reading of the label window: class ids -> 1/0/255 for the row's target."""
    with rasterio.open(root / row["label_source"]) as src:
        size = row["patch_size"]
        data = src.read(
            1,
            window=(
                (row["row_off"], row["row_off"] + size),
                (row["col_off"], row["col_off"] + size),
            ),
        )
        nodata = src.nodata
    out = np.where(np.isin(data, spec.targets[row["target"]]), 1, 0).astype(np.uint8)
    bad = np.isin(data, spec.ignore) | (data == nodata if nodata is not None else False)
    out[bad] = 255
    return out


def test_flow_builds_every_shared_set(flow_out) -> None:
    _, result = flow_out
    assert [r["dataset"] for r in result["reports"]] == SETS
    stats = result["stats"]
    assert set(stats["subsets"]) == set(SETS)
    for name in SETS:
        sub = stats["subsets"][name]
        assert set(sub["samples"]) == {"train", "val", "test"}, name
        assert len(sub["hash"]) == 64


def test_masks_agree_with_the_label_rasters(flow_out, shared_data: Path) -> None:
    out, _ = flow_out
    checked = 0
    for row in SpieDataset(out):
        spec = load_dataset(row["subset"])
        expected = _labels(spec, row, shared_data / row["subset"])
        stored = row["mask"]
        image_nodata = ~np.isfinite(row["image"]).all(axis=0)
        labelled = stored != 255
        assert np.array_equal(stored[labelled], expected[labelled]), row["sample_id"]
        assert np.all((expected != 255) | ~labelled)
        assert np.all(image_nodata[(stored == 255) & (expected != 255)])
        checked += 1
    assert checked > 200


def test_responses_pass_the_quality_check(flow_out) -> None:
    out, _ = flow_out
    for row in SpieDataset(out):
        facts = sample_facts(row["mask"], row["image"], row["bands"], row["target"])
        score, checks = score_response(row["response"], facts)
        assert score >= DEFAULT_BAR, (row["sample_id"], row["response"], checks)
        assert row["quality_score"] >= DEFAULT_BAR


def test_block_splits_keep_test_pixels_off_training_patches(flow_out) -> None:
    out, _ = flow_out
    for name in SETS:
        buffer = load_dataset(name).split.buffer_px
        rows = [
            r
            for r in SpieDataset(out, subsets=[name], arrays=False)
            if r["target"] == next(iter(load_dataset(name).targets))
        ]
        train = [r for r in rows if r["split"] == "train"]
        for t in (r for r in rows if r["split"] != "train"):
            for r in train:
                size = r["patch_size"]
                dr = max(t["row_off"] - (r["row_off"] + size), r["row_off"] - (t["row_off"] + size))
                dc = max(t["col_off"] - (r["col_off"] + size), r["col_off"] - (t["col_off"] + size))
                assert max(dr, dc) >= buffer, (name, t["sample_id"], r["sample_id"])


def test_cli_build_gives_the_flow_bytes_and_stats_show_it(flow_out, tmp_path: Path) -> None:
    out, _ = flow_out
    runner = CliRunner()
    args = ["build", "--out", str(tmp_path)] + [a for s in SETS for a in ("--dataset", s)]
    result = runner.invoke(spie_app, args)
    assert result.exit_code == 0, result.output

    def digest(folder: Path) -> dict[str, str]:
        return {
            p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    assert digest(tmp_path) == digest(out)
    shown = runner.invoke(spie_app, ["stats", str(tmp_path)])
    assert shown.exit_code == 0
    for name in SETS:
        assert f"subset {name}:" in shown.output
    assert "quality score: mean 1.000" in shown.output and "positive share" in shown.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        spie_app,
        ["build", "--dataset", "segmunich", "--root", str(tmp_path), "--out", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert "error: data set segmunich: no images match" in result.output
    result = runner.invoke(spie_app, ["stats", str(tmp_path)])
    assert result.exit_code == 2 and "holds no SPIE data set" in result.output
