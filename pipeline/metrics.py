"""Binary extraction metrics from an accumulated confusion matrix.

The SPEX paper reports recall, precision, OA, F1 and IoU at data-set level: counts are
summed over every tile (and, when asked, every data set) first and the ratios computed
once at the end. Averaging per-tile IoUs instead would weight a tile with three water
pixels like a tile full of water, so :class:`ConfusionMatrix` only ever adds counts.

Pixel convention for :meth:`ConfusionMatrix.update`: a value of 1/True is positive,
0/False is negative, and *any other value* (nodata in the uint8 masks, NaN, a
``-99999`` fill) is excluded, as are pixels where ``valid`` is False. Unlabelled truth
therefore never counts as "not the target".

Ratios with a zero denominator (e.g. recall on a set without target pixels) are
``nan``: "undefined" is not the same statement as "0 % found".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import SpexInputError

__all__ = ["ConfusionMatrix"]


def _split(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(positive, defined) boolean arrays for a 0/1 (or bool) array with other = excluded."""
    a = np.asarray(values)
    if a.dtype == bool:
        return a, np.ones(a.shape, dtype=bool)
    positive = a == 1
    return positive, positive | (a == 0)


def _ratio(num: Any, den: Any) -> float:
    return float(num) / float(den) if int(den) else float("nan")


@dataclass
class ConfusionMatrix:
    """tp/fp/fn/tn counts (int64) that add up across tiles, scenes and data sets."""

    tp: np.int64 = field(default_factory=lambda: np.int64(0))
    fp: np.int64 = field(default_factory=lambda: np.int64(0))
    fn: np.int64 = field(default_factory=lambda: np.int64(0))
    tn: np.int64 = field(default_factory=lambda: np.int64(0))

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn", "tn"):
            value = getattr(self, name)
            if int(value) < 0:
                raise SpexInputError(f"confusion count {name} must be >= 0, got {value}")
            setattr(self, name, np.int64(value))

    def update(self, pred: Any, truth: Any, valid: Any | None = None) -> ConfusionMatrix:
        """Add one prediction/truth pair (same shape); returns self for chaining."""
        p_pos, p_def = _split(pred)
        t_pos, t_def = _split(truth)
        if p_pos.shape != t_pos.shape:
            raise SpexInputError(f"prediction shape {p_pos.shape} != truth shape {t_pos.shape}")
        use = p_def & t_def
        if valid is not None:
            v = np.asarray(valid, dtype=bool)
            if v.shape != use.shape:
                raise SpexInputError(f"valid mask shape {v.shape} != truth shape {use.shape}")
            use &= v
        p, t = p_pos[use], t_pos[use]
        tp = int(np.count_nonzero(p & t))
        fp = int(np.count_nonzero(p & ~t))
        fn = int(np.count_nonzero(~p & t))
        tn = int(p.size) - tp - fp - fn
        self.tp += np.int64(tp)
        self.fp += np.int64(fp)
        self.fn += np.int64(fn)
        self.tn += np.int64(tn)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        return ConfusionMatrix(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts in place (e.g. a second data set); returns self."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.tn += other.tn
        return self

    @property
    def total(self) -> int:
        return int(self.tp + self.fp + self.fn + self.tn)

    def counts(self) -> np.ndarray:
        """``[[tn, fp], [fn, tp]]`` as int64 (rows truth, columns prediction)."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def oa(self) -> float:
        """Overall accuracy: correct pixels over all counted pixels."""
        return _ratio(self.tp + self.tn, self.total)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def as_dict(self) -> dict[str, float | int]:
        """Counts and ratios, JSON-ready (nan stays float nan)."""
        return {
            "tp": int(self.tp),
            "fp": int(self.fp),
            "fn": int(self.fn),
            "tn": int(self.tn),
            "total": self.total,
            "recall": self.recall,
            "precision": self.precision,
            "oa": self.oa,
            "f1": self.f1,
            "iou": self.iou,
        }
