"""Leave-one-scene-out end to end on two small real scenes, and the promotion rule on
real evaluation tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.promotion import decide_per_target, decide_target
from model.training.config import load_config
from model.training.data import SpieIndex
from model.training.evaluate import MARGINS, evaluate_scenes, index_factory
from model.training.loso import loso_folds, run_loso
from pipeline.extractor import TileResult
from pipeline.index_extractor import IndexExtractor
from pipeline.spie.scenes import labelled_images


def test_loso_on_two_small_scenes_end_to_end(two_scene_spie: Path, tmp_path: Path) -> None:
    """Each place is held out whole (its samples never reach the fold's training), the
    three methods are scored on it, the rule decides per target, the recipe on every
    place carries the decision; a rerun resumes instead of retraining."""
    out = tmp_path / "loso"
    cfg = load_config("smoke", spie=str(two_scene_spie), out=str(out))
    folds = loso_folds(two_scene_spie)
    assert [f.place for f in folds] == ["crop-berlin", "crop-gewata"]

    record = run_loso(cfg, out, final=True, config_name="smoke")
    rows = record["rows"]
    keys = {(r["set"], r["target"], r["method"]) for r in rows}
    methods = {"index-otsu", "mvpnet", "spex"}
    assert keys == {
        (s, t, m)
        for s, t in [
            ("crop-berlin", "water"),
            ("crop-berlin", "vegetation"),
            ("crop-berlin", "building"),
            ("crop-gewata", "vegetation"),
        ]
        for m in methods
    }
    for place in ("crop-berlin", "crop-gewata"):
        train_cfg = json.loads((out / "folds" / place / "train" / "train_config.json").read_text())
        assert train_cfg["exclude_places"] == [place]
        held_in = SpieIndex(two_scene_spie, exclude_places=[place])
        assert held_in.rows and all(r["subset"] != place for r in held_in.rows)

    # The index row is index + one scene-level Otsu threshold, counted by hand.
    from pipeline.apg import otsu_threshold
    from pipeline.spie.index_stats import index_values

    image = next(labelled_images(folds[1].datasets[0]))
    ndvi = index_values(image.pixels, image.bands, "NDVI")
    pred = ndvi > otsu_threshold(ndvi[image.valid])
    truth = image.truth("vegetation")
    use = truth != 255
    tp = int((pred & (truth == 1))[use].sum())
    fp = int((pred & (truth == 0))[use].sum())
    fn = int((~pred & (truth == 1))[use].sum())
    row = next(r for r in rows if r["set"] == "crop-gewata" and r["method"] == "index-otsu")
    assert (row["tp"], row["fp"], row["fn"]) == (tp, fp, fn)
    assert row["iou"] == round(tp / (tp + fp + fn), 4)

    assert set(record["decisions"]) == {"water", "vegetation", "building"}
    final = Path(record["meta"]["final"]["spex"])
    default_for = json.loads((final / "default_for.json").read_text())
    served = sorted(t for t, d in record["decisions"].items() if d["serve"])
    assert default_for["targets"] == served
    assert set(default_for["evidence"]) == {"water", "vegetation", "building"}
    assert (Path(record["meta"]["final"]["mvpnet"]) / "mvpnet.json").is_file()
    report = (out / "loso.md").read_text()
    assert "| vegetation | crop-gewata |" in report and "Promotion rule per target" in report

    again = run_loso(cfg, out, config_name="smoke")  # folds are scored: nothing reruns
    assert again["rows"] == rows


class EmptyMask:
    """An extractor that finds nothing (a real extractor, the weakest there is)."""

    name = "empty"

    def required_bands(self, target: str) -> tuple[str, ...]:
        return ()

    def fit_scene(self, scene, target: str) -> None:
        return None

    def predict(self, batch) -> TileResult:
        return TileResult(np.zeros(batch.valid.shape, np.float32), (None,) * len(batch.valid))

    def provenance(self) -> dict:
        return {"extractor": self.name}


class FixedNdvi(IndexExtractor):
    """NDVI above a fixed 0.3: a physical threshold instead of the scene's Otsu one."""

    def fit_scene(self, scene, target: str) -> None:
        super().fit_scene(scene, target)
        self.threshold = 0.3


def test_promotion_rule_on_real_evaluation_tables(two_scenes: dict[str, Path]) -> None:
    """On the two real scenes: a candidate that beats index + Otsu everywhere is served;
    one that loses on a held-out scene (a fixed NDVI threshold on a leaf-off winter
    scene) is refused; the index itself never beats itself."""
    rows = evaluate_scenes(
        [two_scenes["crop-berlin"], two_scenes["crop-gewata"]],
        {
            "index-otsu": index_factory(),
            "empty": lambda target: EmptyMask(),
            "ndvi-0.3": lambda target: FixedNdvi(threshold_mode="scene"),
        },
        targets=["vegetation"],
    )
    iou = {(r["method"], r["set"]): r["iou"] for r in rows}
    assert iou[("empty", "crop-berlin")] == 0.0

    wins = decide_target(rows, "vegetation", candidate="index-otsu", baseline="empty")
    assert wins.serve and "is the default" in wins.reason
    assert all(c.delta > 0 for c in wins.scenes)

    loses = decide_target(rows, "vegetation", candidate="ndvi-0.3", baseline="index-otsu")
    lost = [c for c in loses.scenes if c.delta < -loses.max_scene_loss]
    assert [c.scene for c in lost] == ["crop-berlin"]  # winter: NDVI stays low
    assert not loses.serve and "index + Otsu stays the default" in loses.reason

    same = decide_per_target(rows, candidate="index-otsu", baseline="index-otsu")
    assert not same["vegetation"].serve  # equal is not better

    # The loss clause on its own, still on real figures: index + Otsu as the candidate
    # against the fixed threshold wins the mean (Berlin) but loses Gewata by > 0.05.
    mixed = decide_target(rows, "vegetation", candidate="index-otsu", baseline="ndvi-0.3")
    assert mixed.candidate_mean > mixed.baseline_mean and not mixed.serve
    assert [c.scene for c in mixed.scenes if c.delta < -0.05] == ["crop-gewata"]
    assert "lose more than 0.05" in mixed.reason

    # The margin clause: a win by less than the required mean gain is refused.
    small = decide_target(rows, "vegetation", candidate="index-otsu", baseline="empty",
                          min_mean_gain=wins.candidate_mean + 0.01)  # fmt: skip
    assert not small.serve and "less than the" in small.reason
    # The peer clause: a candidate below the peer network's mean is refused even where it
    # clears the baseline (here the fixed threshold against an empty mask, with index +
    # Otsu, whose mean is higher, in the peer's place).
    below = decide_target(rows, "vegetation", candidate="ndvi-0.3", baseline="empty",
                          min_mean_gain=0.0, peer="index-otsu")  # fmt: skip
    assert not below.serve and "is below index-otsu's" in below.reason


def test_rule_without_a_baseline_scene_serves_nothing() -> None:
    rows = [{"method": "spex", "set": "naip", "target": "building", "iou": 0.3}]
    d = decide_target(rows, "building")
    assert not d.serve and "no held-out scene where both" in d.reason
    with pytest.raises(ValueError, match="two places"):
        run_loso(load_config("smoke", spie="/nonexistent"), "/tmp/never")


@pytest.mark.slow
def test_evaluate_spex_flow_runs_leave_one_scene_out(two_scene_spie: Path, tmp_path: Path) -> None:
    """The evaluate-spex flow, through a real (test-harness) Prefect server, runs the
    protocol with loso=true and returns the report and the margin over the baselines."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.evaluate_spex import evaluate_spex

    out = tmp_path / "flow-loso"
    with prefect_test_harness(server_startup_timeout=180):
        result = evaluate_spex(
            spie=str(two_scene_spie),
            out_dir=str(out),
            loso=True,
            config="smoke",
            places=["crop-gewata"],
        )
    assert Path(result["report"]).is_file() and "vegetation" in result[MARGINS]
    rows = json.loads((out / "loso.json").read_text())["rows"]
    assert {(r["set"], r["method"]) for r in rows} == {
        ("crop-gewata", m) for m in ("index-otsu", "mvpnet", "spex")
    }
