"""Retraining on new data: the no-regression rule, and a data change that triggers
retraining end to end through a real Prefect server, event, automation and worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
import yaml

from model.promotion import decide
from model.registry import ModelRegistry
from pipeline.spie.watch import detect_changes

REPO = Path(__file__).resolve().parents[2]


def test_no_regression_rule() -> None:
    incumbent = {("berlin", "water"): 0.40, ("berlin", "building"): 0.20, ("all", "water"): 0.4}
    better = {("berlin", "water"): 0.55, ("berlin", "building"): 0.20, ("all", "water"): 0.55}
    worse = {("berlin", "water"): 0.60, ("berlin", "building"): 0.15, ("all", "water"): 0.6}
    missing = {("berlin", "water"): 0.60, ("all", "water"): 0.6}
    ok = decide(incumbent, better, incumbent_name="index", candidate_name="v2")
    assert ok.promote and "promoted" in ok.reason
    no = decide(incumbent, worse, incumbent_name="index", candidate_name="v2")
    assert not no.promote
    assert [(c.dataset, c.target) for c in no.regressions] == [("berlin", "building")]
    assert "berlin/building 0.200 -> 0.150" in no.reason
    assert not decide(incumbent, missing, incumbent_name="index", candidate_name="v2").promote
    assert decide(
        incumbent, worse, incumbent_name="index", candidate_name="v2", tolerance=0.1
    ).promote
    assert "| berlin | building | 0.200 | 0.150 | -0.050 (regression) |" in no.markdown()


def _catalog(tmp_path: Path) -> Path:
    """A user's own labelled data set: a copy of the bundled sample's catalog and files."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("s2_l1c_berlin_20170216.tif", "s2_l1c_berlin_20170216_osm_labels.tif"):
        shutil.copy(REPO / "samples" / name, data / name)
    entry = yaml.safe_load((REPO / "catalogs" / "datasets" / "sample-berlin.yaml").read_text())
    catalog = tmp_path / "berlin-user.yaml"
    catalog.write_text(yaml.safe_dump({**entry, "name": "berlin-user", "default_root": str(data)}))
    return catalog


@pytest.mark.slow
def test_data_change_triggers_retraining(tmp_path: Path, prefect_server) -> None:
    catalog = _catalog(tmp_path)
    state, registry = tmp_path / "watch", tmp_path / "registry"
    detect_changes([str(catalog)], state)  # the data set as it was at the last check
    prefect = prefect_server.cli
    prefect_server.env["SPEX_MODEL_REGISTRY"] = str(registry)
    prefect("work-pool", "create", "spex-cpu", "--type", "process", "--overwrite")
    prefect(
        "--no-prompt",
        "deploy",
        "--name",
        "retrain-on-new-data",
        "--param",
        f"spie_dir={tmp_path / 'spie'}",
        "--param",
        "train_config=model/training/configs/smoke.yaml",
        "--param",
        f"out_dir={tmp_path / 'retrain'}",
        "--param",
        f"registry={registry}",
    )

    # New labelled data lands: residential land use mapped where it was unlabelled.
    labels = tmp_path / "data" / "s2_l1c_berlin_20170216_osm_labels.tif"
    with rasterio.open(labels, "r+") as dst:
        block = dst.read(1)
        block[:64, :64][block[:64, :64] == 0] = 8
        dst.write(block, 1)
    watcher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from flows.watch_datasets import watch_datasets; "
            "print(json.dumps(watch_datasets(datasets=[sys.argv[1]], state_dir=sys.argv[2])))",
            str(catalog),
            str(state),
        ],
        env=prefect_server.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert watcher.returncode == 0, watcher.stderr
    changes = json.loads(watcher.stdout.strip().splitlines()[-1])
    assert [c["dataset"] for c in changes] == [str(catalog)]

    # The automation turns the event into a flow run of the deployment; a worker runs it.
    deadline = time.monotonic() + 120
    while "retrain-on-new-data" not in prefect("flow-run", "ls", "--limit", "5"):
        assert time.monotonic() < deadline, "no flow run was triggered by the event"
        time.sleep(2)
    log = prefect("worker", "start", "--pool", "spex-cpu", "--run-once", timeout=900)
    assert "Finished in state Completed()" in log, log[-3000:]

    entries = ModelRegistry(registry).entries()
    assert len(entries) == 1
    entry = entries[0]
    assert entry.training_data and str(catalog) in entry.training_data
    assert entry.evaluation["rows"], "the candidate's evaluation table is recorded"
    promoted = ModelRegistry(registry).default_version() == entry.version
    assert ("promoted" in entry.notes) == promoted
    assert os.environ.get("SPEX_MODEL_REGISTRY") != str(registry)
