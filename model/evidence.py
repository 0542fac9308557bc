"""The model's input evidence: reflectance, index maps and the APG's spectral priors.

Why evidence rather than raw bands: the model must serve sensors it was never trained
on, and an untrained or unsure model must not fall below the spectral index it is meant
to improve. So every tile becomes the same fixed stack of channels, whatever the sensor:

1. the canonical bands (``SpexConfig.bands``) as physical reflectance, shifted and scaled
   by fixed constants (``InputConfig.reflectance_centre/scale``), nothing fitted to the
   training scenes; a band the scene lacks is zero and its flag channel says so
   (NAIP and Gaofen-2 have no SWIR);
2. one flag channel per band (1 present, 0 zero-filled);
3. the normalised-difference indices of ``InputConfig.indices`` (0 where not computable);
4. one spectral prior per target: the target's index (catalogs/targets.yaml) as its
   signed distance ``z`` from the scene's Otsu threshold, in units of the scene's index
   spread, clipped to +-``prior_clip`` and scaled to [-1, 1]; target side positive.

The same ``z`` gives the prior *logits* that the mask is a correction of
(:func:`prior_logits`): ``prior_logit_scale * clip(z)``, so a model whose correction is
zero reproduces index + Otsu exactly (logit > 0 where the index is on the target side of
the scene threshold). Where the index cannot be computed the prior is the constant
``absent_prior_logit`` (not the target, with little confidence).

Scene statistics (:class:`IndexStats`, pipeline/spie/index_stats.py): the Otsu threshold
and spread of each index over the valid pixels of the *whole scene* (a decimated read
at inference, a stored pixel sample in training), as the index extractor does in its
default scene mode, so that tiles of one scene agree and the prior equals ``--model
index``'s mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.config import SpexConfig
from pipeline.spie.index_stats import (
    IndexStats,
    computable,
    index_stats,
    index_values,
    stats_from_json,
    stats_to_json,
)
from pipeline.targets import load_target

__all__ = [
    "IndexStats",
    "SceneStats",
    "evidence",
    "fit_scene_stats",
    "indices_needed",
    "prior_logits",
    "scene_stats",
    "stats_from_json",
    "stats_to_json",
    "tile_inputs",
]

SceneStats = dict[str, IndexStats]


def indices_needed(cfg: SpexConfig) -> tuple[str, ...]:
    """The evidence indices plus every prompt target's index, without repeats."""
    names = list(cfg.inputs.indices)
    for target in cfg.prompt_targets:
        index = load_target(target).index
        if index not in names:
            names.append(index)
    return tuple(names)


def scene_stats(
    pixels: np.ndarray, bands: Sequence[str], cfg: SpexConfig, valid: np.ndarray | None = None
) -> SceneStats:
    """:func:`pipeline.spie.index_stats.index_stats` of every index the model needs."""
    return index_stats(pixels, bands, indices_needed(cfg), valid)


def _z(
    pixels: np.ndarray,
    bands: Sequence[str],
    target: str,
    stats: Mapping[str, IndexStats],
    clip: float,
) -> np.ndarray | None:
    """Signed distance of the target's index from the scene threshold, in spreads,
    target side positive, clipped; None when the index is not available."""
    t = load_target(target)
    st = stats.get(t.index)
    if st is None or not computable(t.index, bands):
        return None
    values = index_values(pixels, bands, t.index)
    z = (values - st.threshold) / st.spread
    if t.side == "below":
        z = -z
    return np.clip(np.nan_to_num(z, nan=-clip), -clip, clip).astype(np.float32)


def prior_logits(
    pixels: np.ndarray,
    bands: Sequence[str],
    target: str,
    stats: Mapping[str, IndexStats],
    cfg: SpexConfig,
) -> tuple[np.ndarray, bool]:
    """(H, W) prior logits of ``target`` for one tile, and whether the index was there.

    Positive exactly where the index lies strictly on the target side of the scene's
    Otsu threshold (the index extractor's ``binary_mask`` rule), so a zero correction
    gives index + Otsu's mask at probability threshold 0.5.
    """
    inp = cfg.inputs
    z = _z(pixels, bands, target, stats, inp.prior_clip)
    if z is None:
        return np.full(pixels.shape[1:], inp.absent_prior_logit, np.float32), False
    logits = inp.prior_logit_scale * z
    # index == threshold is "not target" for the Otsu mask; nudge it below zero.
    logits = np.where(logits > 0, logits, np.minimum(logits, -1e-3))
    return logits.astype(np.float32), True


def evidence(
    pixels: np.ndarray,
    bands: Sequence[str],
    valid: np.ndarray,
    stats: Mapping[str, IndexStats],
    cfg: SpexConfig,
) -> np.ndarray:
    """(input_channels, H, W) float32 evidence of one tile (see module docstring).

    ``pixels`` (C, H, W) reflectance in ``bands`` order, NaN at nodata; ``valid`` (H, W).
    Every channel is 0 where the tile is not valid.
    """
    inp = cfg.inputs
    h, w = pixels.shape[1:]
    ok = np.asarray(valid, dtype=bool) & np.isfinite(pixels).all(axis=0)
    out = np.zeros((cfg.input_channels, h, w), np.float32)
    have = list(bands)
    nb = len(cfg.bands)
    for i, code in enumerate(cfg.bands):
        if code in have:
            band = pixels[have.index(code)]
            out[i] = (np.clip(band, -0.5, 2.0) - inp.reflectance_centre) / inp.reflectance_scale
            out[nb + i] = 1.0
    k = 2 * nb
    for index in inp.indices:
        if computable(index, have):
            out[k] = np.clip(np.nan_to_num(index_values(pixels, have, index), nan=0.0), -1, 1)
        k += 1
    for target in cfg.prompt_targets:
        z = _z(pixels, have, target, stats, inp.prior_clip)
        if z is not None:
            out[k] = z / inp.prior_clip
        k += 1
    out[:, ~ok] = 0.0
    return out


def fit_scene_stats(scene: Any, cfg: SpexConfig) -> SceneStats:
    """:func:`scene_stats` of a lazily opened scene (xarray, dims band/y/x) from the
    pipeline's decimated read, so memory does not grow with the scene."""
    from pipeline.scene import decimated_sample

    sample, _ = decimated_sample(scene)
    bands = [str(b) for b in sample["band"].values]
    return scene_stats(np.asarray(sample.values, np.float32), bands, cfg)


def tile_inputs(
    pixels: np.ndarray,
    bands: Sequence[str],
    valid: np.ndarray,
    target: str,
    stats: Mapping[str, IndexStats] | None,
    cfg: SpexConfig,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Evidence, prior logits and prior presence of one tile. Without scene statistics
    (an extractor used without ``fit_scene``) the tile's own statistics stand in."""
    if stats is None:
        stats = scene_stats(pixels, bands, cfg, valid)
    ev = evidence(pixels, bands, valid, stats, cfg)
    prior, present = prior_logits(pixels, bands, target, stats, cfg)
    return ev, prior, present
