"""Training data streamed from the SPIE store: band alignment, augmentation, batches.

One model serves sensors with different band sets. Decision: the model's input bands
are a fixed list of canonical codes (``TrainConfig.bands``; default B, G, R, N, S1, the
bands that every labelled set here carries: Landsat 7 ETM+ 1-5, Landsat 5/8 and both
Sentinel-2 sets). A subset that lacks one of them gets that channel zero-filled (0 is
"no reflectance", far from any real value) and the sample records which bands were
present; with the default list no labelled subset needs zero-filling. Bands beyond the
list (Sentinel-2 red edge, S2 SWIR-2 ...) are not fed to the network, but the APG still
sees every band of the patch, exactly as at inference time.

Streaming: only the Parquet index rows (text and offsets) are held in memory; each
sample's image and mask are read from their Zarr chunk when the batch needs them, so
memory does not grow with the data set.

Geometric augmentation moves regions, so the instruction (APG region list) and the
response (which names sizes, locations and boxes) are recomputed from the augmented
patch with the same APG and the same grounded writer that built SPIE: text and pixels
never disagree.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import zarr

from model.inference import letterbox
from model.training.config import CLASSES, AugmentConfig
from pipeline.spie.store import SpieStore

IGNORE = 255


@lru_cache(maxsize=64)
def subset_sensor(subset: str) -> str | None:
    """The sensor catalog entry of a SPIE subset (its data-set catalog's), or None."""
    from pipeline.spie.catalog import load_dataset

    try:
        return load_dataset(subset).sensor_name
    except Exception:
        return None


def align_bands(
    image: np.ndarray, have: Sequence[str], want: Sequence[str]
) -> tuple[np.ndarray, tuple[bool, ...]]:
    """(C_have, H, W) -> (C_want, H, W) in ``want`` order, missing bands zero-filled;
    returns the stack and which wanted bands were present."""
    out = np.zeros((len(want), *image.shape[1:]), dtype=np.float32)
    present = []
    for i, code in enumerate(want):
        if code in have:
            out[i] = image[list(have).index(code)]
            present.append(True)
        else:
            present.append(False)
    return out, tuple(present)


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


def draw_augmentation(
    cfg: AugmentConfig, rng: np.random.Generator, n_bands: int
) -> tuple[Geometry, np.ndarray, np.ndarray]:
    """A geometry and per-band (gain, offset) for one sample."""
    geo = Geometry(
        k=int(rng.integers(0, 4)) if cfg.rot90 else 0,
        flip=bool(rng.random() < 0.5) if cfg.flips else False,
    )
    gain = 1.0 + rng.normal(0.0, cfg.gain_std, n_bands) if cfg.gain_std > 0 else np.ones(n_bands)
    offset = rng.normal(0.0, cfg.offset_std, n_bands) if cfg.offset_std > 0 else np.zeros(n_bands)
    return geo, gain.astype(np.float32), offset.astype(np.float32)


def jitter(image: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Per-band radiometric jitter; NaN (nodata) stays NaN."""
    return (image * gain[:, None, None] + offset[:, None, None]).astype(np.float32)


class SpieIndex:
    """The index rows of a SPIE store (no arrays), with on-demand array reads."""

    def __init__(
        self,
        root: str | Path,
        *,
        split: str | None = None,
        subsets: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
    ) -> None:
        self.store = SpieStore(root)
        manifest = self.store.manifest()["subsets"]
        self.bands = {k: tuple(v["bands"]) for k, v in manifest.items()}
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
            path = self.store.root / subset / part["name"] / "index.parquet"
            for row in pq.read_table(path, columns=cols).to_pylist():
                if split and row["split"] != split:
                    continue
                if targets and row["target"] not in targets:
                    continue
                self.rows.append(row)
        self._arrays: dict[tuple[str, str], tuple[zarr.Array, zarr.Array]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _open(self, subset: str, part: str) -> tuple[zarr.Array, zarr.Array]:
        key = (subset, part)
        if key not in self._arrays:
            folder = self.store.root / subset / part
            self._arrays[key] = (
                zarr.open_array(str(folder / "images.zarr"), mode="r"),
                zarr.open_array(str(folder / "masks.zarr"), mode="r"),
            )
        return self._arrays[key]

    def image(self, row: dict[str, Any]) -> np.ndarray:
        images, _ = self._open(row["subset"], row["part"])
        return np.asarray(images[row["image_row"]], dtype=np.float32)

    def mask(self, row: dict[str, Any]) -> np.ndarray:
        _, masks = self._open(row["subset"], row["part"])
        return np.asarray(masks[row["mask_row"]], dtype=np.uint8)

    def images_with_masks(self) -> list[list[dict[str, Any]]]:
        """Rows grouped by image (every target labelled on one patch), for stage 0."""
        groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for row in self.rows:
            groups.setdefault((row["subset"], row["part"], row["image_row"]), []).append(row)
        return [groups[k] for k in sorted(groups)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches the uninterrupted run would have seen."""
    rng = random.Random(f"order|{seed}|{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """Augmentation randomness of one sample in one epoch (resume-stable)."""
    return np.random.default_rng([seed, epoch, position])


def to_model_input(
    pixels: np.ndarray, masks: np.ndarray | None, size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero-fill nodata, letterbox to ``size`` with the inference path's own function;
    masks (..., H, W) uint8 are resized nearest and padded with IGNORE."""
    x = torch.from_numpy(np.where(np.isfinite(pixels), pixels, 0.0).astype(np.float32))
    x, (nh, nw) = letterbox(x[None], size)
    if masks is None:
        return x[0], None
    m = torch.from_numpy(masks.astype(np.float32))
    lead = m.shape[:-2]
    m = F.interpolate(m.reshape(1, -1, *m.shape[-2:]), size=(nh, nw), mode="nearest")
    m = F.pad(m, (0, size - nw, 0, size - nh), value=IGNORE)
    return x[0], m.reshape(*lead, size, size).to(torch.uint8)


# -- stage 0: multi-class partial labels -----------------------------------------------


def allowed_classes(target_masks: dict[str, np.ndarray]) -> np.ndarray:
    """Per-pixel allowed classes (len(CLASSES), H, W) bool from the per-target masks of
    one patch. A target labelled 1 allows only that class; labelled 0 rules it out; a
    target the set does not label constrains nothing (Gewata labels only vegetation, so
    its non-vegetation pixels may be water, building or other). Nodata (255 in any mask)
    allows nothing and is ignored by the loss."""
    shape = next(iter(target_masks.values())).shape
    allowed = np.ones((len(CLASSES), *shape), dtype=bool)
    nodata = np.zeros(shape, dtype=bool)
    for target, m in target_masks.items():
        k = CLASSES.index(target)
        pos = m == 1
        nodata |= m == IGNORE
        allowed[k] &= m != 0
        for j in range(len(CLASSES)):
            if j != k:
                allowed[j] &= ~pos
    allowed[:, nodata] = False
    return allowed


@dataclass
class SegBatch:
    pixels: torch.Tensor  # (B, C, S, S)
    allowed: torch.Tensor  # (B, K, S, S) bool


def seg_batches(
    index: SpieIndex,
    bands: Sequence[str],
    size: int,
    aug: AugmentConfig | None,
    batch_size: int,
    seed: int,
    epoch: int,
) -> Iterator[SegBatch]:
    """Stage-0 batches: one item per patch with its allowed-class map."""
    groups = index.images_with_masks()
    order = epoch_order(len(groups), seed, epoch)
    for start in range(0, len(order), batch_size):
        px, al = [], []
        for pos in order[start : start + batch_size]:
            rows = groups[pos]
            have = index.bands[rows[0]["subset"]]
            image = index.image(rows[0])
            masks = {r["target"]: index.mask(r) for r in rows}
            if aug is not None:
                geo, gain, offset = draw_augmentation(aug, sample_rng(seed, epoch, pos), len(have))
                image = jitter(geo.apply(image), gain, offset)
                masks = {t: geo.apply(m) for t, m in masks.items()}
            aligned, _ = align_bands(image, have, bands)
            allowed = allowed_classes(masks).astype(np.uint8)
            x, a = to_model_input(aligned, allowed, size)
            assert a is not None
            px.append(x)
            al.append(a == 1)  # padding (IGNORE) allows nothing
        yield SegBatch(torch.stack(px), torch.stack(al))


# -- stages 1 and 2: instruction, response, mask ------------------------------------------


@dataclass
class TextBatch:
    pixels: torch.Tensor  # (B, C, S, S)
    instructions: list[str]
    responses: list[str]
    masks: torch.Tensor  # (B, S, S) float 0/1
    valid: torch.Tensor  # (B, S, S) bool
    targets: list[str]


def regenerate_text(
    row: dict[str, Any],
    image: np.ndarray,
    mask: np.ndarray,
    bands: Sequence[str],
    variant: int = 0,
) -> tuple[str, str]:
    """Instruction (APG) and response (grounded writer) of an augmented patch. ``variant``
    picks the writer's phrasing: the training loop passes the epoch, so every epoch
    shows a patch with another of its (equally true) descriptions."""
    from pipeline.apg import build_instruction, run_apg
    from pipeline.errors import SpexInputError
    from pipeline.spie.facts import sample_facts
    from pipeline.spie.responses import GroundedWriter
    from pipeline.targets import load_target

    valid = np.isfinite(image).all(axis=0)
    try:
        instruction = run_apg(
            image, list(bands), row["target"], valid=valid, sensor=subset_sensor(row["subset"])
        ).instruction
    except SpexInputError:
        instruction = build_instruction(load_target(row["target"]).category, "[]")
    facts = sample_facts(mask, image, list(bands), row["target"])
    response = GroundedWriter().write(facts, key=row["sample_id"], attempt=variant)
    return instruction, response


def text_batches(
    index: SpieIndex,
    bands: Sequence[str],
    size: int,
    aug: AugmentConfig | None,
    batch_size: int,
    seed: int,
    epoch: int,
) -> Iterator[TextBatch]:
    """Stage-1/2 batches: (pixels, instruction, response, mask) per sample."""
    order = epoch_order(len(index), seed, epoch)
    for start in range(0, len(order), batch_size):
        px, ins, res, ms, tg = [], [], [], [], []
        for pos in order[start : start + batch_size]:
            row = index.rows[pos]
            have = index.bands[row["subset"]]
            image, mask = index.image(row), index.mask(row)
            instruction, response = row["instruction"], row["response"]
            if aug is not None:
                geo, gain, offset = draw_augmentation(aug, sample_rng(seed, epoch, pos), len(have))
                image = jitter(geo.apply(image), gain, offset)
                mask = geo.apply(mask)
                instruction, response = regenerate_text(row, image, mask, have, variant=epoch)
            aligned, _ = align_bands(image, have, bands)
            x, m = to_model_input(aligned, mask, size)
            assert m is not None
            px.append(x)
            ms.append(m)
            ins.append(instruction)
            res.append(response)
            tg.append(row["target"])
        masks = torch.stack(ms)
        valid = masks != IGNORE
        yield TextBatch(torch.stack(px), ins, res, torch.where(valid, masks, 0).float(), valid, tg)


def text_rows(
    rows: list[dict[str, Any]], splits: Sequence[str], *, balance: bool, seed: int
) -> list[dict[str, Any]]:
    """The index rows stages 1 and 2 train on: those of ``splits``; with ``balance``,
    each target's rows repeated (whole copies, then a seeded draw) up to the count of the
    most frequent target, so a language model trained on many vegetation samples and
    few water ones still learns to write about water."""
    rows = [r for r in rows if r["split"] in splits]
    if not balance or not rows:
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


def truncate_responses(responses: list[str], tokenizer: Any, n_tokens: int | None) -> list[str]:
    """Cut responses to the whole sentences that fit in ``n_tokens`` tokens (the first
    ``n_tokens`` tokens when not even one sentence fits): inference generates at most
    ``max_new_tokens`` tokens and the TCP pools over the response's hidden states, so
    training on the same span keeps the mask branch's input alike in both passes, and
    whole sentences teach the model to end its description (the end token) rather than
    stop mid-claim. The grounded writer puts its most important sentences first."""
    from pipeline.truthfulness import split_sentences

    if not n_tokens:
        return responses

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    out = []
    for text in responses:
        if count(text) <= n_tokens:
            out.append(text)
            continue
        sentences = split_sentences(text)
        kept = ""
        for k in range(1, len(sentences) + 1):
            candidate = " ".join(sentences[:k])
            if count(candidate) > n_tokens:
                break
            kept = candidate
        if not kept:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            kept = tokenizer.decode(ids[:n_tokens])
        out.append(kept)
    return out
