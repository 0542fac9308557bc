"""Should a newly trained model replace the default? The no-regression rule.

Retraining on new data must never make the maps of any place worse without someone
deciding so. A candidate is promoted only if, on the same evaluation split, its IoU is
not below the incumbent's (minus a tolerance) for every data set and target the
incumbent covers, pooled rows included; a (set, target) the candidate cannot run on at
all counts as a regression. Everything else is kept as evidence: the comparison table
goes to the run's artifact and to the registry entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (data set, target); "all" is the pooled row


@dataclass(frozen=True)
class Comparison:
    """Incumbent versus candidate IoU on one (data set, target)."""

    dataset: str
    target: str
    incumbent: float | None
    candidate: float | None

    @property
    def delta(self) -> float | None:
        if self.incumbent is None or self.candidate is None:
            return None
        return self.candidate - self.incumbent


@dataclass(frozen=True)
class PromotionDecision:
    """The verdict, the comparisons behind it and the regressions that blocked it."""

    promote: bool
    incumbent: str
    candidate: str
    tolerance: float
    comparisons: tuple[Comparison, ...]
    regressions: tuple[Comparison, ...]

    @property
    def reason(self) -> str:
        if self.promote:
            return (
                f"{self.candidate} does not regress on any of {len(self.comparisons)} "
                f"(set, target) pairs against {self.incumbent}: promoted"
            )
        worst = ", ".join(
            f"{c.dataset}/{c.target} {_fmt(c.incumbent)} -> {_fmt(c.candidate)}"
            for c in self.regressions
        )
        return f"kept {self.incumbent}: {self.candidate} regresses on {worst}"

    def markdown(self) -> str:
        lines = [
            f"**Decision:** {self.reason}.",
            "",
            f"IoU, tolerance {self.tolerance}:",
            "",
            "| set | target | incumbent | candidate | delta |",
            "|---|---|---|---|---|",
        ]
        for c in self.comparisons:
            mark = " (regression)" if c in self.regressions else ""
            lines.append(
                f"| {c.dataset} | {c.target} | {_fmt(c.incumbent)} | "
                f"{_fmt(c.candidate)} | {_fmt(c.delta)}{mark} |"
            )
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def iou_by_key(rows: Iterable[Mapping[str, Any]], method: str) -> dict[Key, float | None]:
    """IoU per (set, target) of one method's evaluation rows (model.training.evaluate)."""
    return {
        (str(r["set"]), str(r["target"])): r.get("iou") for r in rows if r.get("method") == method
    }


def decide(
    incumbent: Mapping[Key, float | None],
    candidate: Mapping[Key, float | None],
    *,
    incumbent_name: str,
    candidate_name: str,
    tolerance: float = 0.0,
) -> PromotionDecision:
    """Apply the no-regression rule (see the module docstring)."""
    if not incumbent:
        raise ValueError("the incumbent has no evaluation rows: nothing to compare against")
    comparisons = tuple(
        Comparison(s, t, incumbent[(s, t)], candidate.get((s, t)))
        for s, t in sorted(incumbent, key=lambda k: (k[0] == "all", k))
    )
    regressions = tuple(
        c
        for c in comparisons
        if c.incumbent is not None
        and (c.candidate is None or c.candidate < c.incumbent - tolerance)
    )
    return PromotionDecision(
        promote=not regressions,
        incumbent=incumbent_name,
        candidate=candidate_name,
        tolerance=tolerance,
        comparisons=comparisons,
        regressions=regressions,
    )
