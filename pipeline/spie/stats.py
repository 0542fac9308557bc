"""Summary statistics of an SPIE data set, from its Parquet index alone (no arrays read).

Samples per subset / split / target, the positive-pixel share (how much of each mask
is the target), response length, and the quality-score distribution the paper's quality
loop produces, plus each subset's bands, patch size and current version hash, so a
training run can cite exactly which data it saw.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.spie.catalog import SPLITS
from pipeline.spie.errors import DatasetError
from pipeline.spie.store import SpieStore

__all__ = ["QUALITY_BINS", "compute_stats", "format_stats"]

QUALITY_BINS = (0.0, 0.5, 0.8, 0.9, 1.0)
_COLUMNS = [
    "subset",
    "split",
    "target",
    "positive_share",
    "response",
    "quality_score",
    "quality_attempts",
    "apg_index",
]


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"n": 0}
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def _histogram(scores: np.ndarray) -> dict[str, int]:
    out = {}
    edges = list(QUALITY_BINS)
    for lo, hi in itertools.pairwise(edges):
        last = hi == edges[-1]
        n = int(((scores >= lo) & ((scores <= hi) if last else (scores < hi))).sum())
        out[f"[{lo:.1f}, {hi:.1f}{']' if last else ')'}"] = n
    return out


def compute_stats(root: str | Path) -> dict[str, Any]:
    """Statistics of the SPIE data set at ``root`` as JSON-ready data."""
    store = SpieStore(root)
    if not store.manifest_path.is_file():
        raise DatasetError(f"{root} holds no SPIE data set (no {store.manifest_path.name})")
    manifest = store.manifest()
    tables = [
        pq.read_table(store.root / subset / part["name"] / "index.parquet", columns=_COLUMNS)
        for subset, part in store.parts()
    ]
    table = pa.concat_tables(tables) if tables else None
    rows = table.to_pydict() if table is not None else {c: [] for c in _COLUMNS}
    counts: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, (s, sp, t) in enumerate(zip(rows["subset"], rows["split"], rows["target"], strict=True)):
        counts[s][sp][t] = counts[s][sp].get(t, 0) + 1
        groups[(s, t)].append(i)
    share = np.asarray(rows["positive_share"], dtype=np.float64)
    score = np.asarray(rows["quality_score"], dtype=np.float64)
    words = np.asarray([len(r.split()) for r in rows["response"]], dtype=np.float64)
    chars = np.asarray([len(r) for r in rows["response"]], dtype=np.float64)
    subsets = {}
    for name, entry in sorted(manifest["subsets"].items()):
        subsets[name] = {
            "bands": entry["bands"],
            "patch_size": entry["patch_size"],
            "version": len(entry["versions"]),
            "hash": entry["hash"],
            "n_samples": sum(p["n_samples"] for p in entry["parts"]),
            "n_images": sum(p["n_images"] for p in entry["parts"]),
            "samples": {
                sp: dict(sorted(counts[name][sp].items())) for sp in SPLITS if sp in counts[name]
            },
            "positive_share": {
                t: _summary(share[idx]) for (s, t), idx in sorted(groups.items()) if s == name
            },
        }
    return {
        "root": str(store.root),
        "n_samples": len(rows["subset"]),
        "subsets": subsets,
        "response_words": _summary(words),
        "response_chars": _summary(chars),
        "quality_score": {**_summary(score), "histogram": _histogram(score)},
        "quality_attempts": {
            str(k): int(v)
            for k, v in zip(
                *np.unique(
                    np.asarray(rows["quality_attempts"], dtype=np.int64), return_counts=True
                ),
                strict=True,
            )
        },
        "apg_unavailable": sum(1 for v in rows["apg_index"] if v is None),
    }


def _f(summary: dict[str, float], key: str, fmt: str = ".3f") -> str:
    return format(summary[key], fmt) if key in summary else "-"


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of :func:`compute_stats` for the terminal."""
    lines = [f"SPIE data set {stats['root']}: {stats['n_samples']} samples"]
    for name, sub in stats["subsets"].items():
        lines.append("")
        lines.append(
            f"subset {name}: {sub['n_samples']} samples from {sub['n_images']} patches, "
            f"{sub['patch_size']} px, bands {','.join(sub['bands'])}, "
            f"version {sub['version']} hash {sub['hash'][:16]}"
        )
        targets = sorted({t for sp in sub["samples"].values() for t in sp})
        lines.append(f"  {'split':<6}" + "".join(f"{t:>12}" for t in targets) + f"{'total':>8}")
        for sp, per in sub["samples"].items():
            lines.append(
                f"  {sp:<6}"
                + "".join(f"{per.get(t, 0):>12}" for t in targets)
                + f"{sum(per.values()):>8}"
            )
        for t, s in sub["positive_share"].items():
            lines.append(
                f"  positive share {t:<10} mean {_f(s, 'mean')} median "
                f"{_f(s, 'median')} min {_f(s, 'min')} max {_f(s, 'max')}"
            )
    w, c, q = stats["response_words"], stats["response_chars"], stats["quality_score"]
    lines.append("")
    lines.append(
        f"response length: words mean {_f(w, 'mean', '.1f')} min {_f(w, 'min', '.0f')}"
        f" max {_f(w, 'max', '.0f')}; chars mean {_f(c, 'mean', '.0f')}"
    )
    lines.append(
        f"quality score: mean {_f(q, 'mean')} min {_f(q, 'min')} median "
        f"{_f(q, 'median')}; histogram " + ", ".join(f"{k} {v}" for k, v in q["histogram"].items())
    )
    lines.append(
        "attempts per sample: "
        + ", ".join(f"{k}: {v}" for k, v in stats["quality_attempts"].items())
        + f"; samples without APG regions (index not computable): "
        f"{stats['apg_unavailable']}"
    )
    return "\n".join(lines)
