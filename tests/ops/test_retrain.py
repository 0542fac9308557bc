"""Retraining on new data: a data change triggers leave-one-scene-out retraining end
to end through a real Prefect server, event, automation and worker, and the candidate
is registered with its per-target evidence (the rule itself: tests/training/test_loso.py)."""

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

from model.registry import ModelRef, ModelRegistry
from pipeline.spie.watch import detect_changes

REPO = Path(__file__).resolve().parents[2]


def _catalog(tmp_path: Path, two_scenes: dict[str, Path]) -> Path:
    """A user's own labelled data set (a copy of the Berlin window of the bundled
    sample) at a place of its own; the store already holds another place (the Gewata
    sample), so leave-one-scene-out has two folds."""
    from pipeline.spie.build import build

    build(str(two_scenes["crop-gewata"]), tmp_path / "spie")
    entry = yaml.safe_load(two_scenes["crop-berlin"].read_text())
    data = tmp_path / "data"
    shutil.copytree(entry["default_root"], data)
    catalog = tmp_path / "berlin-user.yaml"
    user = {**entry, "name": "berlin-user", "place": "berlin-user", "default_root": str(data)}
    catalog.write_text(yaml.safe_dump(user))
    return catalog


@pytest.mark.slow
def test_data_change_triggers_retraining(
    tmp_path: Path, prefect_server, two_scenes: dict[str, Path]
) -> None:
    catalog = _catalog(tmp_path, two_scenes)
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
    assert entry.evaluation["protocol"] == "leave-one-scene-out"
    assert {r["set"] for r in entry.evaluation["rows"]} == {"berlin-user", "crop-gewata"}
    decisions = entry.evaluation["decisions"]
    served = sorted(t for t, d in decisions.items() if d["serve"])
    reg = ModelRegistry(registry)
    promoted = reg.default_version() == entry.version
    assert promoted == bool(served) and ("promoted for" in entry.notes) == promoted
    for target, d in decisions.items():
        if d["serve"]:
            assert reg.resolve("default", target) == ModelRef.checkpoint(entry.path)
        elif promoted:
            assert reg.resolve("default", target) == ModelRef.index()
    assert os.environ.get("SPEX_MODEL_REGISTRY") != str(registry)
