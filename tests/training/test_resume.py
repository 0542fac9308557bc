"""An interrupted run resumes from its last epoch checkpoint with the same step and
optimizer state, and ends where the uninterrupted run ends."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.training.loop import load_state
from model.training.stages import stage0, stage2, stage_dir


class Interrupted(Exception):
    pass


def _crash_after_first(epoch: int, record: dict) -> None:
    if epoch == 1:
        raise Interrupted


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("stage", [0, 2])
def test_resume_continues_from_checkpoint(quick_config, tmp_path: Path, stage: int):
    run = {0: stage0, 2: stage2}[stage]
    full = replace(quick_config, out=str(tmp_path / "full"))
    cut = replace(quick_config, out=str(tmp_path / "cut"))
    run(full)

    with pytest.raises(Interrupted):
        run(cut, None, _crash_after_first)
    saved = load_state(stage_dir(cut, stage))
    assert saved is not None and saved["epoch"] == 1 and saved["step"] == 3

    seen: list[int] = []
    steps: list[int] = []
    run(cut, lambda s, t, losses: steps.append(s), lambda e, r: seen.append(e))
    assert seen == [2]  # epoch 1 is not redone
    assert steps[0] == saved["step"] + 1  # the step counter continues

    a, b = load_state(stage_dir(full, stage)), load_state(stage_dir(cut, stage))
    assert a["step"] == b["step"] == 6
    assert _same(a["optimizer"], b["optimizer"])
    assert _same(a["scheduler"], b["scheduler"])
    assert _same(a["model"], b["model"])
