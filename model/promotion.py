"""Should a trained model be the default for a target? The rule that protects users.

Per target, on the leave-one-scene-out table (model/training/loso.py) of the recipe that
made the model: it becomes the default for that target only if

1. its mean IoU over the held-out scenes beats index + Otsu's,
2. on no held-out scene is its IoU below index + Otsu's by more than ``max_scene_loss``
   (0.05),
3. its mean beats index + Otsu's by at least ``min_mean_gain`` (0.10): a model that is
   only a little better on a handful of held-out scenes is within what one more scene
   can change, and the index is simpler, faster and explainable; and
4. its mean is not below the peer network's (``peer``, the stage-0 MVPNet trained on the
   same data), where the table holds one: the language side must earn its cost.

Otherwise the spectral index stays the default for that target: a user who asks for
``--model default`` must never get a worse mask than the baseline on a scene like one
of the held-out scenes. Scenes where index + Otsu cannot run (no SWIR for NDBI) have no
baseline figure; they are reported beside the decision but do not enter it. A target
without any scene where both ran is not served. The comparison table per target is the
evidence written to ``default_for.json`` and the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.markdown import markdown_table

MAX_SCENE_LOSS = 0.05
MIN_MEAN_GAIN = 0.10
PEER = "mvpnet"


@dataclass(frozen=True)
class SceneComparison:
    """Candidate against index + Otsu on one held-out scene (data set) and target."""

    scene: str
    candidate: float | None
    baseline: float | None

    @property
    def delta(self) -> float | None:
        if self.candidate is None or self.baseline is None:
            return None
        return round(self.candidate - self.baseline, 4)


@dataclass(frozen=True)
class TargetDecision:
    """The verdict for one target and the held-out scenes behind it."""

    target: str
    serve: bool
    candidate_mean: float | None
    baseline_mean: float | None
    scenes: tuple[SceneComparison, ...]
    max_scene_loss: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenes"] = [{**asdict(s), "delta": s.delta} for s in self.scenes]
        return d


def _iou(rows: Sequence[Mapping[str, Any]], method: str) -> dict[tuple[str, str], float | None]:
    return {(str(r["target"]), str(r["set"])): r.get("iou") for r in rows if r["method"] == method}


def decide_target(
    rows: Sequence[Mapping[str, Any]],
    target: str,
    *,
    candidate: str = "spex",
    baseline: str = "index-otsu",
    max_scene_loss: float = MAX_SCENE_LOSS,
    min_mean_gain: float = MIN_MEAN_GAIN,
    peer: str | None = PEER,
) -> TargetDecision:
    """Apply the rule (module docstring) to one target's held-out rows."""
    cand, base = _iou(rows, candidate), _iou(rows, baseline)
    peers = _iou(rows, peer) if peer else {}
    scenes = sorted({s for t, s in (*cand, *base) if t == target})
    table = tuple(SceneComparison(s, cand.get((target, s)), base.get((target, s))) for s in scenes)
    both = [c for c in table if c.delta is not None]
    if not both:
        return TargetDecision(
            target, False, None, None, table, max_scene_loss,
            f"{target}: no held-out scene where both {candidate} and {baseline} ran",
        )  # fmt: skip
    c_mean = round(float(np.mean([c.candidate for c in both])), 4)
    b_mean = round(float(np.mean([c.baseline for c in both])), 4)
    losers = [c for c in both if c.delta is not None and c.delta < -max_scene_loss]
    if c_mean <= b_mean:
        reason = (
            f"{target}: index + Otsu stays the default; mean IoU {c_mean:.3f} does not beat "
            f"{b_mean:.3f} over {len(both)} held-out scenes"
        )
    elif losers:
        worst = min(losers, key=lambda c: c.delta or 0.0)
        reason = (
            f"{target}: index + Otsu stays the default; mean IoU {c_mean:.3f} beats "
            f"{b_mean:.3f} but {len(losers)} held-out scene(s) lose more than "
            f"{max_scene_loss}, worst {worst.scene} {worst.candidate:.3f} vs {worst.baseline:.3f}"
        )
    else:
        peer_scores = [peers.get((target, c.scene)) for c in both]
        known = [p for p in peer_scores if p is not None]
        peer_mean = (
            round(float(np.mean(known)), 4) if known and len(known) == len(peer_scores) else None
        )
        if c_mean - b_mean < min_mean_gain - 1e-9:
            reason = (
                f"{target}: index + Otsu stays the default; mean IoU {c_mean:.3f} beats "
                f"{b_mean:.3f} by {c_mean - b_mean:.3f}, less than the {min_mean_gain} "
                f"required over {len(both)} held-out scenes"
            )
        elif peer_mean is not None and c_mean < peer_mean:
            reason = (
                f"{target}: index + Otsu stays the default; mean IoU {c_mean:.3f} is below "
                f"{peer}'s {peer_mean:.3f} on the same held-out scenes"
            )
        else:
            reason = (
                f"{target}: the model is the default; mean IoU {c_mean:.3f} vs {b_mean:.3f} "
                f"over {len(both)} held-out scenes (gain >= {min_mean_gain}), none worse by "
                f"more than {max_scene_loss}"
            )
            return TargetDecision(target, True, c_mean, b_mean, table, max_scene_loss, reason)
    return TargetDecision(target, False, c_mean, b_mean, table, max_scene_loss, reason)


def decide_per_target(
    rows: Sequence[Mapping[str, Any]],
    *,
    candidate: str = "spex",
    baseline: str = "index-otsu",
    max_scene_loss: float = MAX_SCENE_LOSS,
    min_mean_gain: float = MIN_MEAN_GAIN,
    peer: str | None = PEER,
) -> dict[str, TargetDecision]:
    """:func:`decide_target` for every target in ``rows``."""
    targets = sorted({str(r["target"]) for r in rows})
    return {
        t: decide_target(
            rows,
            t,
            candidate=candidate,
            baseline=baseline,
            max_scene_loss=max_scene_loss,
            min_mean_gain=min_mean_gain,
            peer=peer,
        )
        for t in targets
    }


def served_targets(decisions: Mapping[str, TargetDecision]) -> list[str]:
    """The targets the model is the default for."""
    return sorted(t for t, d in decisions.items() if d.serve)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def decisions_markdown(decisions: Mapping[str, TargetDecision]) -> str:
    """The decision and its per-scene table, per target."""
    lines: list[str] = []
    for t, d in decisions.items():
        rows = []
        for c in d.scenes:
            mark = ""
            if c.delta is not None and c.delta < -d.max_scene_loss:
                mark = " (loses)"
            elif c.delta is None:
                mark = " (not in the rule)"
            rows.append([c.scene, _f(c.baseline), _f(c.candidate), f"{_f(c.delta)}{mark}"])
        rows.append(["**mean**", _f(d.baseline_mean), _f(d.candidate_mean), ""])
        header = ["held-out scene", "index + Otsu IoU", "model IoU", "delta"]
        lines += [
            f"**{t}: {'model' if d.serve else 'index + Otsu'}.** {d.reason}.",
            "",
            *markdown_table(header, rows),
            "",
        ]
    return "\n".join(lines)
