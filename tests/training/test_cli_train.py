"""`spex train` / `spex eval`: bad input gets one error line naming the fix, status 2,
and no output; `spex eval` scores given weights on a real scene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEX = Path(sys.executable).with_name("spex")


def _spex(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [str(SPEX), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--config", "no-such-recipe.yaml"], "check --config"),
        (["train", "--config", "smoke", "--spie", "nowhere"], "is not a SPIE store"),
        (["train", "--config", "smoke", "--ship"], "--ship needs --loso"),
        (["train", "--config", "smoke", "--loso", "--target", "water"], "do not combine"),
        (["eval", "--spex", "nowhere"], "check --spex"),
        (["eval", "--loso", "--config", "smoke", "--spie", "nowhere"], "is not a SPIE store"),
        (["train", "--config", "smoke", "--target", "glacier"], "unknown target"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = _spex(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_eval_scores_given_weights_on_a_scene(two_scenes: dict[str, Path], tmp_path: Path) -> None:
    result = _spex(
        "eval",
        "--dataset",
        str(two_scenes["crop-gewata"]),
        "--method",
        "index-otsu",
        "--out",
        str(tmp_path / "eval"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    rows = json.loads(Path(summary["paths"]["json"]).read_text())["rows"]
    assert [(r["set"], r["target"], r["method"]) for r in rows] == [
        ("crop-gewata", "vegetation", "index-otsu")
    ]
    assert "| vegetation | crop-gewata |" in result.stdout
