"""SPEX through the whole-scene extraction job: pickling (what Dask workers and Prefect
task inputs need), then end to end on the bundled Sentinel-2 sample via the job
function, the ``spex`` CLI and the Prefect flow, with briefly trained weights."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from brief_training import describe_regions

from model.checkpoint import (
    WEIGHTS,
    CheckpointError,
    read_training,
    save_checkpoint,
    sha256_file,
)
from model.config import tiny
from model.inference import SpexExtractor, clear_model_cache
from model.spex import SpexModel
from pipeline.extract import ExtractionSettings, plan_extraction, run_batch, run_extraction
from pipeline.extractor import TileBatch
from pipeline.outputs.cog import validate_cog
from pipeline.scene import open_scene

REPO = Path(__file__).resolve().parents[2]
SCENE = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
STEM = "s2_l1c_berlin_20170216_water"
TILE, OVERLAP = 256, 32
N_TILES = 16  # 768 px at stride 224 -> 4 x 4 tiles


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread here and in the subprocesses: on a shared 2-core runner two
    OpenMP threads that compete with other processes were measured 5x slower per step,
    and these tests time the pipeline's plumbing, not the model's throughput."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_tiles(n: int = 2) -> TileBatch:
    """``n`` tiles of the sample along its diagonal, as the job would cut them."""
    scene = open_scene(str(SCENE))
    px = np.stack(
        [
            np.asarray(scene[:, i * TILE : (i + 1) * TILE, i * TILE : (i + 1) * TILE].values)
            for i in range(n)
        ]
    ).astype(np.float32)
    bands = tuple(str(b) for b in scene["band"].values)
    return TileBatch(px, np.isfinite(px).all(axis=1), bands, "water", scene.attrs.get("sensor"))


# -- brief training ---------------------------------------------------------------------
def test_brief_training_template_and_record(brief_checkpoint: Path) -> None:
    from pipeline.apg import RegionAttributes

    box = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))
    region = RegionAttributes("medium", (0.25, 0.25), "top-left", box)
    assert describe_regions("water", [], 0) == "There is no water in this image."
    assert describe_regions("water", [region], 3) == (
        "The image contains 3 water regions. The largest water region is medium and "
        "lies in the top-left part."
    )
    record = read_training(brief_checkpoint)
    assert record is not None and record["kind"] == "brief-smoke"
    assert record["settings"]["scene"] == SCENE.name and "seconds" not in record


# -- pickling -------------------------------------------------------------------------
def test_pickled_extractor_reloads_lazily_and_predicts_the_same(
    brief_checkpoint: Path, tmp_path: Path
) -> None:
    ex = SpexExtractor.from_checkpoint(brief_checkpoint, device="cpu")
    tiles = real_tiles(2)
    ref = ex.predict(tiles)

    blob = pickle.dumps(ex)
    assert len(blob) < 20_000  # config and settings, no tensors
    clear_model_cache()
    copy = pickle.loads(blob)
    assert copy._model is None  # nothing loaded until first use
    assert copy.provenance() == ex.provenance()  # provenance needs no model
    got = copy.predict(tiles)
    assert copy.model is not ex.model
    np.testing.assert_array_equal(got.probability, ref.probability)
    assert got.texts == ref.texts

    # A second copy in the same process shares the reloaded model.
    assert pickle.loads(blob).model is copy.model

    cloudpickle = pytest.importorskip("cloudpickle")  # what Prefect hashes inputs with
    assert len(cloudpickle.dumps(ex)) < 20_000


def test_pickled_extractor_refuses_changed_weights(brief_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(brief_checkpoint, folder)
    blob = pickle.dumps(SpexExtractor.from_checkpoint(folder, device="cpu"))
    other = SpexModel(tiny(bands=("B", "G", "R", "N", "S1", "S2")))
    save_checkpoint(other, folder)  # retrained in place after the job was planned
    clear_model_cache()
    copy = pickle.loads(blob)
    with pytest.raises(CheckpointError, match="weights changed"):
        copy.predict(real_tiles(1))


def test_in_memory_extractor_says_how_to_make_it_picklable() -> None:
    ex = SpexExtractor(SpexModel(tiny(input_size=64)), device="cpu")
    with pytest.raises(pickle.PicklingError, match=r"save_checkpoint.*from_checkpoint"):
        pickle.dumps(ex)


def test_extraction_plan_pickles_small_and_runs_a_batch(
    brief_checkpoint: Path, tmp_path: Path
) -> None:
    settings = ExtractionSettings(
        target="water", model=str(brief_checkpoint), tile=TILE, overlap=OVERLAP
    )
    plan = plan_extraction(str(SCENE), settings, tmp_path / "out")
    blob = pickle.dumps(plan)
    assert len(blob) < 100_000
    clear_model_cache()
    assert run_batch(pickle.loads(blob), [0]) == 1
    texts = list((plan.store_path / "texts").glob("*.json"))
    assert len(texts) == 1 and json.loads(texts[0].read_text())["text"]


# -- end to end -------------------------------------------------------------------------
def check_outputs(out: Path, summary: dict[str, str | None], ckpt: Path) -> np.ndarray:
    """The job's files are right for the sample and name the SPEX weights; returns the
    mask for comparisons between entry points."""
    mask_path = Path(str(summary["mask"]))
    assert mask_path == out / f"{STEM}.tif"
    ok, errors, _ = validate_cog(mask_path)
    assert ok, errors
    scene = open_scene(str(SCENE))
    with rasterio.open(mask_path) as src:
        mask = src.read(1)
        assert src.crs == scene.rio.crs
        assert src.transform.almost_equals(scene.rio.transform())
        assert (src.height, src.width) == (scene.sizes["y"], scene.sizes["x"])
    assert set(np.unique(mask).tolist()) <= {0, 1, 255}

    report = json.loads(Path(str(summary["report"])).read_text())
    descriptions = report["descriptions"]
    assert len(descriptions) == N_TILES  # every tile wrote a (non-empty) text
    assert {(d["row_off"], d["col_off"]) for d in descriptions} == {
        (r, c) for r in (0, 224, 448, 512) for c in (0, 224, 448, 512)
    }
    assert all(isinstance(d["text"], str) and d["text"] for d in descriptions)

    item = json.loads(Path(str(summary["stac"])).read_text())
    prov = item["properties"]["spex:extractor"]
    assert prov["extractor"] == "spex"
    assert prov["weights_sha256"] == sha256_file(ckpt / WEIGHTS)
    assert prov["training"]["kind"] == "brief-smoke"  # the outputs say the weights are
    return mask


@pytest.fixture(scope="module")
def job_mask(brief_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The mask of ``run_extraction`` (the CLI's in-process path), checked."""
    out = tmp_path_factory.mktemp("job")
    settings = ExtractionSettings(
        target="water", model=str(brief_checkpoint), tile=TILE, overlap=OVERLAP
    )
    summary = run_extraction(str(SCENE), settings, out)
    return check_outputs(out, summary, brief_checkpoint)


def test_run_extraction_with_spex_on_the_sample(job_mask: np.ndarray) -> None:
    assert job_mask.shape == (768, 768)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DO_NOT_TRACK="1",
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def test_cli_extracts_with_a_spex_checkpoint(
    brief_checkpoint: Path, job_mask: np.ndarray, tmp_path: Path
) -> None:
    spex = Path(sys.executable).parent / "spex"
    if not spex.is_file():
        pytest.skip(f"console script not installed at {spex}")
    out = tmp_path / "cli"
    cmd = [
        str(spex), "extract", "water", str(SCENE), "--out", str(out),
        "--model", str(brief_checkpoint), "--tile", str(TILE), "--overlap", str(OVERLAP),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    mask = check_outputs(out, summary, brief_checkpoint)
    np.testing.assert_array_equal(mask, job_mask)


@pytest.mark.slow
def test_prefect_flow_extracts_with_a_spex_checkpoint(
    brief_checkpoint: Path, job_mask: np.ndarray, tmp_path: Path
) -> None:
    """The flow maps tile batches over a thread pool; run in a subprocess so Prefect's
    ephemeral server and settings stay out of this process."""
    pytest.importorskip("prefect")
    out = tmp_path / "flow"
    code = (
        "import json, sys\n"
        "from flows.extract_scene import extract_scene\n"
        "r = extract_scene(scene=sys.argv[1], target='water', model=sys.argv[2], "
        f"tile={TILE}, overlap={OVERLAP}, out_dir=sys.argv[3])\n"
        "print('RESULT ' + json.dumps(r))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(SCENE), str(brief_checkpoint), str(out)],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    (summary,) = json.loads(line.removeprefix("RESULT "))
    mask = check_outputs(out, summary, brief_checkpoint)
    np.testing.assert_array_equal(mask, job_mask)
