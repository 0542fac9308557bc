"""Training samples from the SPIE store: crops at native resolution, sensor-imitating
augmentation, evidence and priors, and text regenerated for what the model sees.

One model serves every sensor: the model's input is the evidence stack of
:mod:`model.evidence` over a fixed list of canonical bands (``TrainConfig.bands``); a
band a subset lacks (or that augmentation drops) is zero-filled and flagged, and the
APG sees exactly the bands the sample has, as at inference.

Crops: the model reads windows of ``input_size`` px at the scene's own resolution (never
resized, :mod:`model.windows`), so a sample is a crop of that size from its patch. A
patch larger than a window is cropped around a labelled pixel drawn at random (sparse
point and polygon labels would otherwise give mostly empty crops); a smaller one is
padded (nodata, unlabelled). Only labelled pixels carry loss.

Which samples: every epoch draws ``samples_per_epoch`` samples, each place (a data-set
catalog's ``place``: one scene, or the dates of one scene) weighing the same, then each
of its SPIE samples (or, for stage 0, patches) the same. Scenes generalise, pixels do
not: a large scene must not drown the small ones. Without ``samples_per_epoch`` every
sample is seen once per epoch in a shuffled order.

Augmentation (:class:`model.training.config.AugmentConfig`): geometry, per-band gain and
offset, haze, resolution change and band dropout. Radiometric changes are applied to
the sample's scene pixel sample too (pipeline/spie/store.py), and the scene-level index
statistics, hence the priors, are recomputed from it: at inference tile and statistics
come from one scene, so they must agree in training.

Geometric augmentation moves regions and cropping changes them, so the instruction (APG
region list) and the response (sizes, locations, boxes) are recomputed from the sample
with the same APG and the same grounded writer that built SPIE: text and pixels never
disagree.

Determinism: the draws and every random choice are pure functions of (seed, epoch,
position), so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import zarr

from model.config import SpexConfig
from model.evidence import evidence, prior_logits, scene_stats
from model.training.config import AugmentConfig, stage0_classes
from pipeline.mask_codes import MASK_NODATA as IGNORE
from pipeline.mask_codes import MASK_OTHER, MASK_TARGET
from pipeline.spie.store import SpieStore

# Reflectance that haze tends to at full depth (a bright, flat path radiance).
HAZE_LEVEL = 0.3
# Arrays read from the store are kept in memory up to this many bytes: the samples of
# an epoch come back to the same patches, and a large patch's Zarr chunk decodes slowly.
CACHE_BYTES = 2 * 2**30


@lru_cache(maxsize=64)
def subset_sensor(subset: str) -> str | None:
    """The sensor catalog entry of a SPIE subset (its data-set catalog's), or None."""
    from pipeline.spie.catalog import load_dataset

    try:
        return load_dataset(subset).sensor_name
    except Exception:
        return None


class SpieIndex:
    """The index rows of a SPIE store (no arrays), with on-demand array reads.

    ``exclude_places``: leave out every subset whose place (recorded in its parts) is
    one of these (a held-out leave-one-scene-out fold). Arrays read are cached up to
    :data:`CACHE_BYTES`."""

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        subsets: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        exclude_places: Sequence[str] = (),
    ) -> None:
        self.store = SpieStore(root)
        manifest = self.store.manifest()["subsets"]
        self.bands = {k: tuple(v["bands"]) for k, v in manifest.items()}
        self.places = {
            k: str(v["parts"][0].get("place", k)) if v["parts"] else k for k, v in manifest.items()
        }
        cols = [
            "sample_id",
            "subset",
            "split",
            "target",
            "instruction",
            "response",
            "part",
            "image_row",
            "mask_row",
        ]
        self.rows: list[dict[str, Any]] = []
        for subset, part in self.store.parts():
            if subsets and subset not in subsets:
                continue
            if self.places[subset] in exclude_places:
                continue
            path = self.store.root / subset / part["name"] / "index.parquet"
            names = pq.read_schema(path).names
            use = cols + (["scene_row"] if "scene_row" in names else [])
            for row in pq.read_table(path, columns=use).to_pylist():
                if split and row["split"] != split:
                    continue
                if targets and row["target"] not in targets:
                    continue
                row.setdefault("scene_row", None)
                self.rows.append(row)
        self._arrays: dict[tuple[str, str], dict[str, zarr.Array]] = {}
        self._cache: dict[tuple[str, str, str, int], np.ndarray] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self, subset: str, part: str) -> dict[str, zarr.Array]:
        key = (subset, part)
        if key not in self._arrays:
            folder = self.store.root / subset / part
            arrays = {
                "images": zarr.open_array(str(folder / "images.zarr"), mode="r"),
                "masks": zarr.open_array(str(folder / "masks.zarr"), mode="r"),
            }
            if (folder / "scene_samples.zarr").exists():
                arrays["scenes"] = zarr.open_array(str(folder / "scene_samples.zarr"), mode="r")
            self._arrays[key] = arrays
        return self._arrays[key]

    def _read(self, row: dict[str, Any], array: str, i: int) -> np.ndarray:
        """Row ``i`` of one of the part's arrays (cached, hence read-only)."""
        key = (row["subset"], row["part"], array, i)
        hit = self._cache.get(key)
        if hit is None:
            hit = np.asarray(self._open(row["subset"], row["part"])[array][i])
            hit.setflags(write=False)
            if self._cached_bytes + hit.nbytes <= CACHE_BYTES:
                self._cache[key] = hit
                self._cached_bytes += hit.nbytes
        return hit

    def image(self, row: dict[str, Any]) -> np.ndarray:
        return self._read(row, "images", row["image_row"])

    def mask(self, row: dict[str, Any]) -> np.ndarray:
        return self._read(row, "masks", row["mask_row"])

    def scene_sample(self, row: dict[str, Any]) -> np.ndarray | None:
        """(band, K) pixel sample of the row's source image; None in stores built before
        samples were stored (the patch itself then stands in for its scene)."""
        arrays = self._open(row["subset"], row["part"])
        if row.get("scene_row") is None or "scenes" not in arrays:
            return None
        return self._read(row, "scenes", row["scene_row"]).astype(np.float32)

    def images_with_masks(self) -> list[list[dict[str, Any]]]:
        """Rows grouped by image (every target labelled on one patch), for stage 0."""
        groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["subset"], row["part"], row["image_row"]), []).append(row)
        return [groups[k] for k in sorted(groups)]


# -- which samples --------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches the uninterrupted run would have seen."""
    rng = random.Random(f"order|{seed}|{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def place_balanced_draws(places: Sequence[str], n: int, seed: int, epoch: int) -> list[int]:
    """``n`` item indices drawn with replacement, every place weighing the same and the
    items of a place alike (see the module docstring)."""
    by_place: dict[str, list[int]] = {}
    for i, place in enumerate(places):
        by_place.setdefault(place, []).append(i)
    names = sorted(by_place)
    rng = random.Random(f"draws|{seed}|{epoch}")
    out = []
    for _ in range(n):
        items = by_place[names[rng.randrange(len(names))]]
        out.append(items[rng.randrange(len(items))])
    return out


def draws(places: Sequence[str], samples_per_epoch: int | None, seed: int, epoch: int) -> list[int]:
    """The items of one epoch: place-balanced draws, or every item once, shuffled."""
    if samples_per_epoch is None:
        return epoch_order(len(places), seed, epoch)
    return place_balanced_draws(places, samples_per_epoch, seed, epoch)


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """Augmentation randomness of one sample in one epoch (resume-stable)."""
    return np.random.default_rng([seed, epoch, position])


# -- crops ----------------------------------------------------------------------------


def crop_window(labelled: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``size`` crop of a patch, around a random labelled pixel
    (anywhere when none is labelled); (0, 0) when the patch is not larger."""
    h, w = labelled.shape
    if h <= size and w <= size:
        return 0, 0
    ys, xs = np.nonzero(labelled)
    if ys.size:
        k = int(rng.integers(ys.size))
        cy, cx = int(ys[k]), int(xs[k])
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    jitter = size // 4
    r = cy - size // 2 + int(rng.integers(-jitter, jitter + 1))
    c = cx - size // 2 + int(rng.integers(-jitter, jitter + 1))
    return int(np.clip(r, 0, max(0, h - size))), int(np.clip(c, 0, max(0, w - size)))


def cut(a: np.ndarray, r: int, c: int, size: int, fill: float) -> np.ndarray:
    """``a[..., r:r+size, c:c+size]`` padded with ``fill`` to ``size`` x ``size``."""
    part = a[..., r : r + size, c : c + size]
    out = np.full((*a.shape[:-2], size, size), fill, dtype=a.dtype)
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out


# -- augmentation ---------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """One draw of the geometric augmentation (applied identically to image and masks)."""

    k: int = 0
    flip: bool = False

    @property
    def identity(self) -> bool:
        return self.k == 0 and not self.flip

    def apply(self, a: np.ndarray) -> np.ndarray:
        """Rotate by k x 90 degrees then flip left-right, over the last two axes."""
        a = np.rot90(a, k=self.k, axes=(-2, -1))
        if self.flip:
            a = a[..., ::-1]
        return np.ascontiguousarray(a)


@dataclass(frozen=True)
class Augmentation:
    """Every random choice for one sample (see :class:`AugmentConfig`)."""

    geometry: Geometry
    gain: np.ndarray  # per band of the sample
    offset: np.ndarray
    haze: float  # depth h, 0 for none
    factor: int  # resolution change, 1 for none
    dropped: frozenset[str]

    def radiometry(
        self, pixels: np.ndarray, bands: Sequence[str], cfg: AugmentConfig
    ) -> np.ndarray:
        """Gain, offset and haze on a band-first array (NaN stays NaN)."""
        shape = (-1,) + (1,) * (pixels.ndim - 1)
        out = pixels * self.gain.reshape(shape) + self.offset.reshape(shape)
        if self.haze > 0:
            p = np.array([cfg.haze_profile.get(b, 0.0) for b in bands], np.float32)
            hp = (self.haze * p).reshape(shape)
            out = out * (1.0 - hp) + hp * HAZE_LEVEL
        return out.astype(np.float32)

    def kept(self, bands: Sequence[str]) -> list[int]:
        """Positions of the bands that survive the band dropout."""
        return [i for i, b in enumerate(bands) if b not in self.dropped]


def draw_augmentation(
    cfg: AugmentConfig, rng: np.random.Generator, bands: Sequence[str]
) -> Augmentation:
    """One sample's augmentation for a patch with ``bands``."""
    n = len(bands)
    geo = Geometry(
        k=int(rng.integers(0, 4)) if cfg.rot90 else 0,
        flip=bool(rng.random() < 0.5) if cfg.flips else False,
    )
    gain = 1.0 + rng.normal(0.0, cfg.gain_std, n) if cfg.gain_std > 0 else np.ones(n)
    offset = rng.normal(0.0, cfg.offset_std, n) if cfg.offset_std > 0 else np.zeros(n)
    haze = float(rng.uniform(0, cfg.haze_max)) if rng.random() < cfg.haze_prob else 0.0
    factor = 1
    if cfg.resolution_factors and rng.random() < cfg.resolution_prob:
        factor = int(cfg.resolution_factors[int(rng.integers(len(cfg.resolution_factors)))])
    dropped: set[str] = set()
    for group in cfg.band_dropout:
        if rng.random() < group.prob:
            dropped.update(group.bands)
    return Augmentation(
        geo, gain.astype(np.float32), offset.astype(np.float32), haze, factor, frozenset(dropped)
    )


def coarsen(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Average over ``factor`` x ``factor`` blocks (NaN-aware) and expand back: the crop as
    a sensor with pixels ``factor`` times larger would see it."""
    if factor <= 1:
        return pixels
    c, h, w = pixels.shape
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.full((c, hh, ww), np.nan, np.float32)
    padded[:, :h, :w] = pixels
    blocks = padded.reshape(c, hh // factor, factor, ww // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        mean = np.nanmean(blocks, axis=(2, 4))
    out = np.repeat(np.repeat(mean, factor, axis=1), factor, axis=2)[:, :h, :w]
    return np.where(np.isfinite(pixels), out, np.nan).astype(np.float32)


# -- one sample -----------------------------------------------------------------------


@dataclass
class Sample:
    """One model input with everything the losses and the text need."""

    evidence: np.ndarray  # (C_ev, S, S)
    raw: np.ndarray  # (C_kept, S, S) reflectance, NaN nodata (for the APG)
    bands: list[str]  # of ``raw``
    masks: dict[str, np.ndarray]  # target -> (S, S) uint8 mask codes, IGNORE = nodata
    priors: dict[str, tuple[np.ndarray, bool]]  # target -> (prior logits, present)


def make_sample(
    index: SpieIndex,
    rows: Sequence[dict[str, Any]],
    spex: SpexConfig,
    aug: AugmentConfig | None,
    rng: np.random.Generator,
) -> Sample:
    """The crop, augmentation, evidence and priors of one patch with its targets' rows."""
    size = spex.input_size
    row0 = rows[0]
    bands = list(index.bands[row0["subset"]])
    image = index.image(row0)
    masks = {r["target"]: index.mask(r) for r in rows}
    labelled = np.zeros(image.shape[1:], bool)
    for m in masks.values():
        labelled |= m != IGNORE
    labelled &= np.isfinite(image).all(axis=0)
    r, c = crop_window(labelled, size, rng)
    image = cut(image, r, c, size, np.nan)
    masks = {t: cut(m, r, c, size, IGNORE) for t, m in masks.items()}
    sample = index.scene_sample(row0)
    if aug is not None:
        a = draw_augmentation(aug, rng, bands)
        image = a.geometry.apply(a.radiometry(image, bands, aug))
        masks = {t: a.geometry.apply(m) for t, m in masks.items()}
        image = coarsen(image, a.factor)
        if sample is not None:
            sample = a.radiometry(sample, bands, aug)
        keep = a.kept(bands)
        bands = [bands[i] for i in keep]
        image = image[keep]
        sample = sample[keep] if sample is not None else None
    valid = np.isfinite(image).all(axis=0)
    stats = scene_stats(sample if sample is not None else image, bands, spex)
    priors = {t: prior_logits(image, bands, t, stats, spex) for t in masks}
    for m in masks.values():
        m[~valid] = IGNORE
    return Sample(evidence(image, bands, valid, stats, spex), image, bands, masks, priors)


# -- stage 0: multi-class partial labels -----------------------------------------------


def allowed_classes(
    target_masks: dict[str, np.ndarray], classes: Sequence[str] | None = None
) -> np.ndarray:
    """Per-pixel allowed ``classes`` (default :func:`stage0_classes`; shape (K, H, W),
    bool) from the per-target masks of one patch. A target labelled as target allows
    only that class; labelled other rules it out; a target the set does not label
    constrains nothing (Gewata labels only vegetation, so its non-vegetation pixels may
    be water, building or other). Unlabelled (IGNORE in every mask) allows nothing and
    is ignored by the loss."""
    classes = tuple(classes or stage0_classes())
    shape = next(iter(target_masks.values())).shape
    allowed = np.ones((len(classes), *shape), dtype=bool)
    unlabelled = np.ones(shape, dtype=bool)
    for target, m in target_masks.items():
        k = classes.index(target)
        pos = m == MASK_TARGET
        unlabelled &= m == IGNORE
        allowed[k] &= m != MASK_OTHER
        for j in range(len(classes)):
            if j != k:
                allowed[j] &= ~pos
    allowed[:, unlabelled] = False
    return allowed


@dataclass
class SegBatch:
    pixels: torch.Tensor  # (B, C_ev, S, S)
    allowed: torch.Tensor  # (B, K, S, S) bool


def seg_batches(
    index: SpieIndex,
    spex: SpexConfig,
    aug: AugmentConfig | None,
    batch_size: int,
    seed: int,
    epoch: int,
    samples_per_epoch: int | None = None,
    classes: Sequence[str] | None = None,
) -> Iterator[SegBatch]:
    """Stage-0 batches: one item per patch crop with its map of allowed ``classes``
    (default :func:`stage0_classes`)."""
    classes = tuple(classes or stage0_classes())
    groups = index.images_with_masks()
    order = draws([index.places[g[0]["subset"]] for g in groups], samples_per_epoch, seed, epoch)
    for start in range(0, len(order), batch_size):
        px, al = [], []
        for pos, g in enumerate(order[start : start + batch_size], start):
            s = make_sample(index, groups[g], spex, aug, sample_rng(seed, epoch, pos))
            px.append(torch.from_numpy(s.evidence))
            al.append(torch.from_numpy(allowed_classes(s.masks, classes)))
        yield SegBatch(torch.stack(px), torch.stack(al))


# -- stages 1 and 2: instruction, response, mask ------------------------------------------


@dataclass
class TextBatch:
    pixels: torch.Tensor  # (B, C_ev, S, S) evidence
    instructions: list[str]
    responses: list[str]
    masks: torch.Tensor  # (B, S, S) float 0/1
    valid: torch.Tensor  # (B, S, S) bool: labelled pixels
    targets: list[str]
    prior: torch.Tensor  # (B, S, S) prior logits
    prior_present: torch.Tensor  # (B,) bool


def sample_text(
    row: dict[str, Any],
    raw: np.ndarray,
    mask: np.ndarray,
    bands: Sequence[str],
    variant: int = 0,
) -> tuple[str, str]:
    """Instruction (APG) and response (grounded writer) of what the model sees.
    ``variant`` picks the writer's phrasing: the training loop passes the epoch, so every
    epoch shows a patch with another of its (equally true) descriptions."""
    from pipeline.apg import build_instruction, run_apg
    from pipeline.errors import SpexInputError
    from pipeline.spie.facts import sample_facts
    from pipeline.spie.responses import GroundedWriter
    from pipeline.targets import load_target

    valid = np.isfinite(raw).all(axis=0)
    try:
        instruction = run_apg(
            raw, list(bands), row["target"], valid=valid, sensor=subset_sensor(row["subset"])
        ).instruction
    except SpexInputError:
        instruction = build_instruction(load_target(row["target"]).category, "[]")
    facts = sample_facts(mask, raw, list(bands), row["target"])
    response = GroundedWriter().write(facts, key=row["sample_id"], attempt=variant)
    return instruction, response


def text_batches(
    index: SpieIndex,
    spex: SpexConfig,
    aug: AugmentConfig | None,
    batch_size: int,
    seed: int,
    epoch: int,
    samples_per_epoch: int | None = None,
) -> Iterator[TextBatch]:
    """Stage-1/2 batches: (evidence, instruction, response, mask, prior) per sample."""
    places = [index.places[r["subset"]] for r in index.rows]
    order = draws(places, samples_per_epoch, seed, epoch)
    for start in range(0, len(order), batch_size):
        px, ins, res, ms, tg, pr, pp = [], [], [], [], [], [], []
        for pos, i in enumerate(order[start : start + batch_size], start):
            row = index.rows[i]
            s = make_sample(index, [row], spex, aug, sample_rng(seed, epoch, pos))
            mask = s.masks[row["target"]]
            instruction, response = sample_text(row, s.raw, mask, s.bands, variant=epoch)
            prior, present = s.priors[row["target"]]
            px.append(torch.from_numpy(s.evidence))
            ms.append(torch.from_numpy(mask))
            ins.append(instruction)
            res.append(response)
            tg.append(row["target"])
            pr.append(torch.from_numpy(prior))
            pp.append(present)
        masks = torch.stack(ms)
        valid = masks != IGNORE
        yield TextBatch(
            torch.stack(px),
            ins,
            res,
            torch.where(valid, masks, 0).float(),
            valid,
            tg,
            torch.stack(pr),
            torch.tensor(pp),
        )


def balanced_weight(masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, S, S) BCE weights in which, per sample, the target's pixels and the other
    labelled pixels each carry half of the sample's labelled weight.

    Why: how often a data set labels a class is a fact of how it was labelled (sparse
    polygons drawn mostly on forest, land-use maps of farmland), not of the world; with
    plain BCE a model learns those shares as a bias and carries it to scenes labelled
    otherwise. Balanced, it learns what tells the classes apart. A sample with one class
    only keeps half its weight."""
    v = valid.float()
    pos = masks.float() * v
    neg = (1.0 - masks.float()) * v
    n = v.flatten(1).sum(-1).clamp(min=1.0).reshape(-1, 1, 1)
    n_pos = pos.flatten(1).sum(-1).clamp(min=1.0).reshape(-1, 1, 1)
    n_neg = neg.flatten(1).sum(-1).clamp(min=1.0).reshape(-1, 1, 1)
    return 0.5 * n * (pos / n_pos + neg / n_neg)


def balance_targets(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each target's rows repeated (whole copies, then a seeded draw) up to the count of
    the most frequent target, so a language model trained on many vegetation samples and
    few water ones still learns to write about water."""
    if not rows:
        return rows
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_target.setdefault(r["target"], []).append(r)
    most = max(len(v) for v in by_target.values())
    rng = random.Random(f"balance|{seed}")
    out: list[dict[str, Any]] = []
    for target in sorted(by_target):
        group = by_target[target]
        copies, rest = divmod(most, len(group))
        out += group * copies + rng.sample(group, rest)
    return out
