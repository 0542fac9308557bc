"""The SPIE data set on disk: Zarr arrays + a Parquet index, append-only, streamable.

Layout of an output folder::

    spie.json                                   manifest: subsets, parts, versions, hashes
    <subset>/part-00000/images.zarr             float32 (n_patches, band, P, P), NaN nodata
    <subset>/part-00000/masks.zarr              uint8 (n_samples, P, P): mask codes
    <subset>/part-00000/scene_samples.zarr      float32 (n_source_images, band, K): valid
                                                pixels drawn from each whole source image
    <subset>/part-00000/index.parquet           one row per sample (instruction, response, ...)

Why parts: appending new source data writes a *new* part and never touches an existing
one, so earlier samples (and their bytes and hashes) cannot change. A part is written
under a staging name and renamed into place, then the manifest is replaced atomically;
readers list parts from the manifest only, so a crash mid-build leaves no visible
partial output (an orphan part folder is removed by the next commit).

Hashes: each sample's SHA-256 covers its image and mask bytes and its text fields; a
part's hash covers its samples in order; a subset's version hash chains the previous
version's hash with the new part's, so one hex string names the exact content of every
subset version. No timestamps are stored: the same inputs give the same bytes.

Images are stored once per patch; each (patch, target) sample points at its image row
and at its source image's pixel sample (``scene_row``): training recomputes scene-level
index statistics from it after a radiometric augmentation (model/training/data.py), so
a patch's spectral priors stay those of its (augmented) scene, as at inference.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.mask_codes import MASK_NODATA
from pipeline.outputs.atomic import atomic_write_text, ensure_writable_dir
from pipeline.spie.errors import DatasetError

__all__ = [
    "FORMAT",
    "INDEX_SCHEMA",
    "PartWriter",
    "SpieDataset",
    "SpieStore",
    "sample_hash",
]

FORMAT = "spie/1"
MANIFEST = "spie.json"

INDEX_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("subset", pa.string()),
        ("source", pa.string()),
        ("label_source", pa.string()),
        ("split", pa.string()),
        ("target", pa.string()),
        ("category", pa.string()),
        ("instruction", pa.string()),
        ("spectral_prompt", pa.string()),
        ("response", pa.string()),
        ("writer", pa.string()),
        ("quality_score", pa.float64()),
        ("quality_attempts", pa.int32()),
        ("apg_index", pa.string()),
        ("apg_threshold", pa.float64()),
        ("apg_note", pa.string()),
        ("n_regions", pa.int32()),
        ("positive_share", pa.float64()),
        ("valid_share", pa.float64()),
        ("block", pa.int32()),
        ("row_off", pa.int32()),
        ("col_off", pa.int32()),
        ("patch_size", pa.int32()),
        ("crs", pa.string()),
        ("transform", pa.list_(pa.float64(), 6)),
        ("part", pa.string()),
        ("image_row", pa.int64()),
        ("mask_row", pa.int64()),
        ("scene_row", pa.int64()),
        ("sample_hash", pa.string()),
    ]
)
_TEXT_FIELDS = ("sample_id", "split", "target", "instruction", "response")


def sample_hash(image: np.ndarray, mask: np.ndarray, row: dict[str, Any]) -> str:
    """SHA-256 of a sample's pixels, mask and text fields (its content identity)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    for key in _TEXT_FIELDS:
        h.update(b"\x00" + str(row[key]).encode("utf-8"))
    return h.hexdigest()


def _new_array(path: Path, shape: tuple[int, ...], dtype: str, fill: Any) -> zarr.Array:
    return zarr.create_array(
        store=str(path),
        shape=(0, *shape),
        chunks=(1, *shape),
        dtype=dtype,
        fill_value=fill,
        zarr_format=3,
    )


@dataclass
class PartWriter:
    """Collects one part's arrays (staged on disk) and index rows until commit."""

    store: SpieStore
    subset: str
    bands: list[str]
    patch_size: int
    meta: dict[str, Any]
    staging: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    n_images: int = 0
    n_scenes: int = 0
    _images: zarr.Array | None = None
    _masks: zarr.Array | None = None
    _scenes: zarr.Array | None = None

    def _open(self) -> None:
        if self._images is None:
            p = self.patch_size
            self._images = _new_array(
                self.staging / "images.zarr", (len(self.bands), p, p), "float32", np.nan
            )
            self._masks = _new_array(self.staging / "masks.zarr", (p, p), "uint8", MASK_NODATA)

    def add_image(self, pixels: np.ndarray) -> int:
        """Append one patch image; returns its row."""
        self._open()
        assert self._images is not None
        self._images.append(pixels[None].astype(np.float32), axis=0)
        self.n_images += 1
        return self.n_images - 1

    def add_scene(self, sample: np.ndarray) -> int:
        """Append one source image's pixel sample (band, K); returns its row."""
        if self._scenes is None:
            self._scenes = _new_array(
                self.staging / "scene_samples.zarr", sample.shape, "float32", np.nan
            )
        self._scenes.append(sample[None].astype(np.float32), axis=0)
        self.n_scenes += 1
        return self.n_scenes - 1

    def add_sample(self, row: dict[str, Any], image: np.ndarray, mask: np.ndarray) -> None:
        """Append one sample's mask and index row (``row['image_row']`` already set)."""
        self._open()
        assert self._masks is not None
        self._masks.append(mask[None].astype(np.uint8), axis=0)
        row = dict(row, mask_row=len(self.rows), sample_hash=sample_hash(image, mask, row))
        self.rows.append(row)

    def discard(self) -> None:
        """Drop the staged part (on error): nothing becomes visible."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def commit(self) -> dict[str, Any] | None:
        """Move the part into place and record it in the manifest; None if empty."""
        if not self.rows:
            self.discard()
            return None
        return self.store._commit(self)


class SpieStore:
    """An SPIE output folder (see module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def manifest(self) -> dict[str, Any]:
        """The manifest (an empty one when the folder holds no SPIE data set yet)."""
        if not self.manifest_path.is_file():
            return {"format": FORMAT, "subsets": {}}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DatasetError(f"{self.manifest_path} is not valid JSON: {exc}") from exc
        if data.get("format") != FORMAT:
            raise DatasetError(f"{self.manifest_path} is not an {FORMAT} manifest")
        return data

    def parts(self, subset: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(subset, part entry) of every committed part, in commit order."""
        subsets = self.manifest()["subsets"]
        names = [subset] if subset else sorted(subsets)
        out: list[tuple[str, dict[str, Any]]] = []
        for name in names:
            if name not in subsets:
                raise DatasetError(f"{self.root} has no subset {name!r}; it has {sorted(subsets)}")
            out.extend((name, p) for p in subsets[name]["parts"])
        return out

    def existing_ids(self, subset: str) -> set[str]:
        """Sample ids already stored for ``subset`` (read from the index only)."""
        ids: set[str] = set()
        if subset not in self.manifest()["subsets"]:
            return ids
        for name, part in self.parts(subset):
            table = pq.read_table(
                self.root / name / part["name"] / "index.parquet", columns=["sample_id"]
            )
            ids.update(table.column("sample_id").to_pylist())
        return ids

    def begin(
        self, subset: str, bands: Sequence[str], patch_size: int, meta: dict[str, Any]
    ) -> PartWriter:
        """Start a new part of ``subset``; bands and patch size must match earlier parts."""
        ensure_writable_dir(self.root)
        entry = self.manifest()["subsets"].get(subset)
        if entry is not None and (
            entry["bands"] != list(bands) or entry["patch_size"] != patch_size
        ):
            raise DatasetError(
                f"subset {subset} in {self.root} holds bands {entry['bands']} at "
                f"{entry['patch_size']} px; cannot append bands {list(bands)} at {patch_size} px "
                "(use another --out folder)"
            )
        staging = self.root / subset / f".staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir(parents=True)
        return PartWriter(self, subset, list(bands), patch_size, meta, staging)

    def _commit(self, part: PartWriter) -> dict[str, Any]:
        table = pa.Table.from_pylist(part.rows, schema=INDEX_SCHEMA)
        manifest = self.manifest()
        subsets = manifest["subsets"]
        entry = subsets.setdefault(
            part.subset,
            {
                "bands": part.bands,
                "patch_size": part.patch_size,
                "parts": [],
                "versions": [],
                "hash": None,
            },
        )
        name = f"part-{len(entry['parts']):05d}"
        table = table.set_column(
            table.schema.get_field_index("part"),
            "part",
            pa.array([name] * table.num_rows, pa.string()),
        )
        pq.write_table(table, part.staging / "index.parquet", compression="zstd")
        digest = hashlib.sha256()
        for h in table.column("sample_hash").to_pylist():
            digest.update(bytes.fromhex(h))
        part_hash = digest.hexdigest()
        final = self.root / part.subset / name
        if final.exists():  # an orphan of a crash between rename and manifest write
            shutil.rmtree(final)
        part.staging.rename(final)
        version_hash = hashlib.sha256(f"{entry['hash'] or ''}{part_hash}".encode()).hexdigest()
        info = {
            "name": name,
            "n_samples": table.num_rows,
            "n_images": part.n_images,
            "hash": part_hash,
            **part.meta,
        }
        entry["parts"].append(info)
        entry["hash"] = version_hash
        entry["versions"].append(
            {
                "version": len(entry["versions"]) + 1,
                "n_samples": sum(p["n_samples"] for p in entry["parts"]),
                "hash": version_hash,
            }
        )
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return {
            "subset": part.subset,
            "version": len(entry["versions"]),
            **info,
            "subset_hash": version_hash,
        }


class SpieDataset:
    """Stream SPIE samples for training without loading the data set whole.

    Rows come from each part's Parquet index batch by batch and arrays are read one
    chunk (one sample) at a time, so memory stays bounded by ``batch_rows`` index rows
    plus one image. Filters select subsets, splits and targets.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        subsets: Sequence[str] | None = None,
        split: str | None = None,
        target: str | None = None,
        arrays: bool = True,
        batch_rows: int = 256,
    ) -> None:
        self.store = SpieStore(root)
        self.subsets = list(subsets) if subsets else None
        self.split = split
        self.target = target
        self.arrays = arrays
        self.batch_rows = batch_rows

    def _parts(self) -> list[tuple[str, dict[str, Any]]]:
        parts = self.store.parts()
        return [p for p in parts if self.subsets is None or p[0] in self.subsets]

    def _keep(self, row: dict[str, Any]) -> bool:
        return (self.split is None or row["split"] == self.split) and (
            self.target is None or row["target"] == self.target
        )

    def __len__(self) -> int:
        n = 0
        for subset, part in self._parts():
            path = self.store.root / subset / part["name"] / "index.parquet"
            table = pq.read_table(path, columns=["split", "target"])
            n += sum(
                1
                for s, t in zip(
                    table.column("split").to_pylist(),
                    table.column("target").to_pylist(),
                    strict=True,
                )
                if self._keep({"split": s, "target": t})
            )
        return n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        bands = {k: v["bands"] for k, v in self.store.manifest()["subsets"].items()}
        for subset, part in self._parts():
            folder = self.store.root / subset / part["name"]
            images = masks = None
            if self.arrays:
                images = zarr.open_array(str(folder / "images.zarr"), mode="r")
                masks = zarr.open_array(str(folder / "masks.zarr"), mode="r")
            reader = pq.ParquetFile(folder / "index.parquet")
            for batch in reader.iter_batches(batch_size=self.batch_rows):
                for row in batch.to_pylist():
                    if not self._keep(row):
                        continue
                    row["bands"] = bands[subset]
                    if images is not None and masks is not None:
                        row["image"] = np.asarray(images[row["image_row"]])
                        row["mask"] = np.asarray(masks[row["mask_row"]])
                    yield row
