"""The SPIE builder: labelled imagery -> (image, mask, instruction, response) samples.

For each image of a data set (catalog order, sorted), each patch (non-overlapping, split
by the catalog's rule) and each target the data set supports:

1. binary mask from the labels (target classes, other classes, nodata where ignored or
   where the image itself is nodata);
2. the APG on the patch pixels (paper: index + Otsu + regions -> spectral prompt and the
   training instruction); a precomputed index layer (Globe230k NDVI) is used when the
   catalog names one; when the sensor cannot compute the index the catalog's policy
   either skips the target or writes the instruction with an empty attribute list, and
   the sample records why (``apg_note``);
3. a response from the writer, checked and regenerated below the quality bar.

Each source image also leaves a seeded sample of its valid pixels (scene-level index
statistics for training, see pipeline/spie/store.py). A pseudo-labelled data set
(``label_format: pseudo``) has no label files: its masks are the confident pseudo-labels
of pipeline/spie/pseudo.py, computed over the whole image.

Everything goes into one staged part of the output store; any error discards the stage,
so a failed build leaves no partial output. Re-running over the same inputs adds nothing
(samples are keyed by subset, source, patch and target); new images append a new part.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.apg import build_instruction, generate_prompt, run_apg
from pipeline.errors import MissingBandError
from pipeline.mask_codes import MASK_NODATA
from pipeline.spie.catalog import DatasetSpec, load_dataset
from pipeline.spie.errors import DatasetError
from pipeline.spie.facts import sample_facts
from pipeline.spie.patches import Patch, plan_patches
from pipeline.spie.pseudo import describe_rule, pseudo_mask, pseudo_stats
from pipeline.spie.quality import DEFAULT_BAR, LlmJudge, write_checked
from pipeline.spie.readers import (
    NO_CLASS,
    ImageSource,
    Item,
    discover,
    open_image,
    read_class_ids,
    read_index_layer,
    target_mask,
)
from pipeline.spie.responses import GroundedWriter, ResponseWriter
from pipeline.spie.splits import ItemSplitter
from pipeline.spie.store import PartWriter, SpieStore
from pipeline.targets import load_target

__all__ = ["SCENE_SAMPLE_PIXELS", "BuildConfig", "BuildReport", "build", "scene_sample"]

#: Valid pixels drawn from each source image for its scene-level statistics.
SCENE_SAMPLE_PIXELS = 4096


@dataclass(frozen=True)
class BuildConfig:
    """Builder settings; ``None`` means the data-set catalog's value."""

    patch_size: int | None = None
    min_valid: float | None = None
    quality_bar: float = DEFAULT_BAR
    max_attempts: int = 3
    keep_empty: bool = True  # keep samples whose patch holds none of the target
    seed: int = 0


@dataclass
class BuildReport:
    """What one build did; ``samples_per_second`` counts new samples over wall time."""

    dataset: str
    root: str
    out: str
    patch_size: int
    n_images: int = 0
    n_patches: int = 0
    n_samples: int = 0
    n_existing: int = 0
    n_rejected: int = 0
    n_skipped_patches: int = 0
    n_unlisted_images: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_target: dict[str, int] = field(default_factory=dict)
    apg_notes: dict[str, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    samples_per_second: float = 0.0
    part: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str, dict[str, Any]], None]


def _window_mask(mask: np.ndarray, p: Patch) -> np.ndarray:
    part = mask[p.row : p.row + p.size, p.col : p.col + p.size]
    out = np.full((p.size, p.size), MASK_NODATA, np.uint8)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def scene_sample(pixels: np.ndarray, key: str, n: int = SCENE_SAMPLE_PIXELS) -> np.ndarray:
    """(band, n) float32: up to ``n`` valid pixels of a whole image, drawn with a seed
    from ``key`` (same image, same sample); NaN-padded when the image has fewer."""
    flat = pixels.reshape(pixels.shape[0], -1)
    valid = np.flatnonzero(np.isfinite(flat).all(axis=0))
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    chosen = np.sort(rng.choice(valid, size=min(n, valid.size), replace=False))
    out = np.full((pixels.shape[0], n), np.nan, np.float32)
    out[:, : chosen.size] = flat[:, chosen]
    return out


def _pad(values: np.ndarray, p: Patch) -> np.ndarray:
    part = values[p.row : p.row + p.size, p.col : p.col + p.size]
    out = np.full((p.size, p.size), np.nan, np.float32)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def _geo(image: ImageSource, p: Patch) -> tuple[str | None, list[float] | None]:
    if image.transform is None:
        return image.crs, None
    t = Affine(*image.transform) @ Affine.translation(p.col, p.row)
    return image.crs, [float(v) for v in tuple(t)[:6]]


class _Builder:
    """State of one build (kept out of :func:`build` to keep each step small)."""

    def __init__(
        self,
        spec: DatasetSpec,
        root: Path,
        store: SpieStore,
        config: BuildConfig,
        writer: ResponseWriter,
        judge: LlmJudge | None,
        report: BuildReport,
        progress: Progress | None = None,
    ) -> None:
        self.spec, self.root, self.store, self.config = spec, root, store, config
        self.progress = progress
        self.writer, self.judge, self.report = writer, judge, report
        self.existing = store.existing_ids(spec.name)
        self.part: PartWriter | None = None
        self.size = report.patch_size
        self.min_valid = spec.patch.min_valid if config.min_valid is None else config.min_valid

    def _part(self, bands: list[str]) -> PartWriter:
        if self.part is None:
            meta = {
                "dataset": self.spec.name,
                "sensor": self.spec.sensor.name,
                "writer": self.writer.name,
                "quality_bar": self.config.quality_bar,
                "seed": self.config.seed,
                "split": asdict(self.spec.split),
                "place": self.spec.place,
                "catalog": self.spec.path,
                **({"pseudo_labels": describe_rule()} if self.spec.pseudo else {}),
            }
            self.part = self.store.begin(self.spec.name, bands, self.size, meta)
        if self.part.bands != bands:
            raise DatasetError(
                f"data set {self.spec.name}: images disagree on bands ({self.part.bands} vs "
                f"{bands}); one subset needs one band set"
            )
        return self.part

    def _apg(
        self,
        pixels: np.ndarray,
        bands: list[str],
        target: str,
        valid: np.ndarray,
        layer: np.ndarray | None,
    ) -> tuple[Any, str | None]:
        index = load_target(target).index
        if layer is not None:
            return generate_prompt(layer, target, valid=valid), f"{index} from index layer"
        try:
            return run_apg(pixels, bands, target, valid=valid, sensor=self.spec.sensor.name), None
        except MissingBandError as exc:
            return None, f"{index} not computable on {self.spec.sensor.name}: {exc}"

    def _truth(self, item: Item, image: ImageSource) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per-target masks of the whole image (mask codes) and where any label is."""
        spec = self.spec
        if spec.pseudo:
            full = image.whole()
            valid = np.isfinite(full).all(axis=0)
            stats = pseudo_stats(full, image.bands, list(spec.targets), valid)
            masks = {t: pseudo_mask(full, image.bands, valid, t, stats) for t in spec.targets}
            labelled = np.zeros(valid.shape, bool)
            for m in masks.values():
                labelled |= m != MASK_NODATA
            return masks, labelled
        ids = read_class_ids(spec, item, image)
        masks = {t: target_mask(ids, spec, t) for t in spec.targets}
        return masks, (ids != NO_CLASS) & ~np.isin(ids, spec.ignore)

    def item(self, item: Item, split: str | None) -> None:
        spec, report = self.spec, self.report
        image = open_image(spec, item)
        truth, labelled_full = self._truth(item, image)
        layers = {k: read_index_layer(v, image) for k, v in item.index_layers.items()}
        patches = plan_patches(
            image.height, image.width, self.size, spec.split, split, what=f"image {item.id}"
        )
        report.n_images += 1
        if self.progress:
            self.progress("patches", {"image": item.id, "patches": len(patches)})
        label_rel = (
            "pseudo" if spec.pseudo else item.label.relative_to(self.root.resolve()).as_posix()
        )
        scene_row = None
        for p in patches:
            if self.progress:
                self.progress("patch", {"samples": report.n_samples})
            report.n_patches += 1
            pixels = image.read(p.row, p.col, p.size)
            image_ok = np.isfinite(pixels).all(axis=0)
            labelled = _window_mask(labelled_full.astype(np.uint8), p) == 1
            labelled &= image_ok
            if labelled.mean() < self.min_valid:
                report.n_skipped_patches += 1
                continue
            image_row = None
            for target in spec.targets:
                key = f"{spec.name}:{item.id}:{p.row}:{p.col}:{target}"
                if key in self.existing:
                    report.n_existing += 1
                    continue
                mask = _window_mask(truth[target], p)
                mask[~image_ok] = MASK_NODATA
                index = load_target(target).index
                layer = _pad(layers[index], p) if index in layers else None
                apg, note = self._apg(pixels, image.bands, target, image_ok, layer)
                if apg is None and spec.missing_index == "skip":
                    report.apg_notes[f"skipped: {note}"] = (
                        report.apg_notes.get(f"skipped: {note}", 0) + 1
                    )
                    continue
                facts = sample_facts(mask, pixels, image.bands, target, index=layer)
                if facts.positive_px == 0 and not self.config.keep_empty:
                    continue
                outcome = write_checked(
                    self.writer,
                    facts,
                    key=key,
                    pixels=pixels,
                    bands=image.bands,
                    bar=self.config.quality_bar,
                    max_attempts=self.config.max_attempts,
                    judge=self.judge,
                )
                report.attempts[outcome.attempts] = report.attempts.get(outcome.attempts, 0) + 1
                if not outcome.passed:
                    report.n_rejected += 1
                    continue
                if note:
                    report.apg_notes[note] = report.apg_notes.get(note, 0) + 1
                part = self._part(image.bands)
                if scene_row is None:
                    scene_row = part.add_scene(
                        scene_sample(image.decimated(), f"{spec.name}:{item.id}")
                    )
                if image_row is None:
                    image_row = part.add_image(pixels)
                crs, transform = _geo(image, p)
                category = load_target(target).category
                prompt = apg.spectral_prompt if apg is not None else "[]"
                row = {
                    "sample_id": key,
                    "subset": spec.name,
                    "source": item.id,
                    "label_source": label_rel,
                    "split": p.split,
                    "target": target,
                    "category": category,
                    "instruction": apg.instruction
                    if apg is not None
                    else build_instruction(category, "[]"),
                    "spectral_prompt": prompt,
                    "response": outcome.text,
                    "writer": self.writer.name,
                    "quality_score": outcome.score,
                    "quality_attempts": outcome.attempts,
                    "apg_index": apg.index if apg is not None else None,
                    "apg_threshold": apg.threshold if apg is not None else None,
                    "apg_note": note,
                    "n_regions": facts.n_regions,
                    "positive_share": facts.positive_share,
                    "valid_share": facts.valid_share,
                    "block": p.block,
                    "row_off": p.row,
                    "col_off": p.col,
                    "patch_size": p.size,
                    "crs": crs,
                    "transform": transform,
                    "part": "",
                    "image_row": image_row,
                    "scene_row": scene_row,
                }
                part.add_sample(row, pixels, mask)
                report.n_samples += 1
                report.per_split[p.split] = report.per_split.get(p.split, 0) + 1
                report.per_target[target] = report.per_target.get(target, 0) + 1


def _cleanup_dirs(out: Path, subset: str, created: bool) -> None:
    for folder in (out / subset, out):
        if folder == out and not created:
            break
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def build(
    dataset: str | DatasetSpec,
    out: str | Path,
    *,
    root: str | Path | None = None,
    config: BuildConfig | None = None,
    writer: ResponseWriter | None = None,
    judge: LlmJudge | None = None,
    progress: Progress | None = None,
) -> BuildReport:
    """Build (or extend) the SPIE subset of ``dataset`` in the store at ``out``."""
    start = time.perf_counter()
    config = config or BuildConfig()
    spec = dataset if isinstance(dataset, DatasetSpec) else load_dataset(dataset)
    folder = spec.root_or_default(root)
    size = config.patch_size or spec.patch.size
    if size < 8:
        raise DatasetError(f"patch size must be >= 8 px, got {size}")
    items = discover(spec, folder)
    splitter = ItemSplitter(spec, folder)
    out = Path(out)
    created = not out.exists()
    report = BuildReport(dataset=spec.name, root=str(folder), out=str(out), patch_size=size)
    builder = _Builder(
        spec,
        folder,
        SpieStore(out),
        config,
        writer or GroundedWriter(seed=config.seed),
        judge,
        report,
        progress,
    )
    if progress:
        progress("start", {"images": len(items), "dataset": spec.name})
    try:
        for item in items:
            split = splitter(item)
            if split is None and spec.split.method == "lists":
                report.n_unlisted_images += 1
            else:
                builder.item(item, split)
            if progress:
                progress("image", {"image": item.id, "samples": report.n_samples})
        if report.n_samples == 0 and report.n_existing == 0:
            raise DatasetError(
                f"data set {spec.name}: {len(items)} image(s), {report.n_patches} patch(es), "
                f"but no sample passed (skipped patches below min_valid "
                f"{builder.min_valid}: {report.n_skipped_patches}, rejected responses: "
                f"{report.n_rejected}, unlisted images: {report.n_unlisted_images}); "
                "nothing was written"
            )
        report.part = builder.part.commit() if builder.part is not None else None
    except BaseException:
        if builder.part is not None:
            builder.part.discard()
        _cleanup_dirs(out, spec.name, created)
        raise
    report.seconds = time.perf_counter() - start
    report.samples_per_second = report.n_samples / report.seconds if report.seconds else 0.0
    report.attempts = dict(sorted(Counter(report.attempts).items()))
    if progress:
        progress("done", report.as_dict())
    return report
