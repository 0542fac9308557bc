"""Readers for the on-disk layouts the data-set catalogs describe.

Three jobs, each failing with a :class:`DatasetError` that names the file:

* :func:`discover` finds every (image, label) pair of a data set under its root, from the
  catalog's glob, optional regex and label template. A missing label file is an error for
  the whole data set before anything is read, because silently skipping images would
  change which samples (and which splits) a data set yields.
* :func:`open_image` opens an image as float32 reflectance with canonical band codes:
  georeferenced sources through :func:`pipeline.scene.open_scene` (lazy, catalog
  radiometry), plain rasters (Globe230k JPEGs, GID tifs) with rasterio and the *same*
  radiometric rule (the encoding's scale, or one common 1/p99.5 scale for uncalibrated DN;
  the encoding is ``open.encoding``, else the one the encoding catalogs select).
* :func:`read_class_ids` reads a label raster (index or RGB palette coded) or rasterises
  GeoJSON footprints onto the image grid, checks it is on the image's grid and that every
  class id is declared, and returns class ids with -1 for nodata.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from pipeline.encodings import load_encoding, select_encoding
from pipeline.errors import CatalogError
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET
from pipeline.scene import open_scene
from pipeline.sensors import Sensor
from pipeline.spie.catalog import DatasetSpec, resolve_inside
from pipeline.spie.errors import DatasetError

__all__ = [
    "NO_CLASS",
    "ImageSource",
    "Item",
    "discover",
    "open_image",
    "read_class_ids",
    "read_index_layer",
    "target_mask",
]

#: Class id of label pixels that carry no class (file nodata, outside footprints' grid).
NO_CLASS = -1
#: Images below this many bytes (as float32) are read whole once instead of per patch.
WHOLE_READ_BYTES = 512 * 2**20
#: Pixels read at most for the percentile fallback of plain rasters.
DECIMATED_PIXELS = 1_000_000


@dataclass(frozen=True)
class Item:
    """One image of a data set and its label file, with the names a template may use."""

    id: str  # image path relative to the root, POSIX separators: stable across machines
    image: Path
    label: Path
    groups: dict[str, str] = field(default_factory=dict)
    index_layers: dict[str, Path] = field(default_factory=dict)


def _fields(rel: str, groups: dict[str, str]) -> dict[str, str]:
    path = Path(rel)
    name = path.name
    stem = name.split(".")[0] if not path.suffix else path.stem
    parent = path.parent.as_posix()
    return {"name": name, "stem": stem, "parent": "" if parent == "." else parent, **groups}


def _fill(template: str, values: dict[str, str], what: str, spec: DatasetSpec) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        raise DatasetError(
            f"{spec.path}: {what} template {template!r} uses {exc}, which is neither "
            f"a group of layout.pattern nor one of name, stem, parent"
        ) from exc


def discover(spec: DatasetSpec, root: str | Path) -> list[Item]:
    """Every (image, label) pair of ``spec`` under ``root``, sorted by image path."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data set {spec.name}: root folder {root} does not exist")
    base = root.resolve()
    pattern = re.compile(spec.layout.pattern) if spec.layout.pattern else None
    items: list[Item] = []
    for path in sorted(base.glob(spec.layout.images)):
        rel = path.relative_to(base).as_posix()
        resolve_inside(base, rel)
        groups: dict[str, str] = {}
        if pattern is not None:
            match = pattern.search(rel)
            if match is None:
                continue  # the glob is broad on purpose; the pattern picks the images
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
        values = _fields(rel, groups)
        if spec.pseudo:  # no label file: the masks come from the image itself
            items.append(Item(id=rel, image=path, label=path, groups=groups))
            continue
        label_rel = _fill(spec.layout.labels, values, "layout.labels", spec)
        label = resolve_inside(base, label_rel)
        if not label.is_file():
            raise DatasetError(
                f"data set {spec.name}: label file {label_rel} for image {rel} is missing "
                f"(looked for {label})"
            )
        layers = {}
        for index, template in spec.layout.index_layers.items():
            layer = resolve_inside(base, _fill(template, values, f"index_layers.{index}", spec))
            if layer.is_file():
                layers[index] = layer
        items.append(Item(id=rel, image=path, label=label, groups=groups, index_layers=layers))
    if not items:
        raise DatasetError(
            f"data set {spec.name}: no images match {spec.layout.images!r}"
            + (f" and pattern {spec.layout.pattern!r}" if pattern is not None else "")
            + f" under {root}; nothing to build"
        )
    return items


# --------------------------------------------------------------------------- images


@dataclass
class ImageSource:
    """An opened image: canonical band codes, grid, and a window reader (NaN = nodata)."""

    bands: list[str]
    height: int
    width: int
    crs: str | None
    transform: tuple[float, ...] | None
    provenance: dict[str, Any]
    _data: Any  # xarray DataArray (lazy) or a numpy array (band, y, x)
    _cache: np.ndarray | None = None

    def read(self, row: int, col: int, size: int) -> np.ndarray:
        """``(band, size, size)`` float32 at (row, col); NaN where outside the image."""
        if self._cache is None and len(self.bands) * self.height * self.width * 4 <= (
            WHOLE_READ_BYTES
        ):
            self._cache = np.asarray(self._values(0, self.height, 0, self.width), np.float32)
        r1, c1 = min(row + size, self.height), min(col + size, self.width)
        if self._cache is not None:
            part = self._cache[:, row:r1, col:c1]
        else:
            part = np.asarray(self._values(row, r1, col, c1), np.float32)
        if part.shape[1:] == (size, size):
            return np.ascontiguousarray(part)
        out = np.full((len(self.bands), size, size), np.nan, np.float32)
        out[:, : part.shape[1], : part.shape[2]] = part
        return out

    def whole(self) -> np.ndarray:
        """The whole image, (band, height, width) float32."""
        return self.read(0, 0, max(self.height, self.width))[:, : self.height, : self.width]

    def decimated(self, max_pixels: int = DECIMATED_PIXELS) -> np.ndarray:
        """Every step-th row and column (at most ~``max_pixels`` pixels), float32: scene
        statistics without reading a large image whole."""
        step = max(1, math.ceil(math.sqrt(self.height * self.width / max_pixels)))
        if self._cache is not None or isinstance(self._data, np.ndarray):
            src = self._cache if self._cache is not None else self._data
            return np.asarray(src[:, ::step, ::step], np.float32)
        part = self._data.isel(y=slice(None, None, step), x=slice(None, None, step))
        return np.asarray(part.values, np.float32)

    def _values(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if isinstance(self._data, np.ndarray):
            return self._data[:, r0:r1, c0:c1]
        return self._data.isel(y=slice(r0, r1), x=slice(c0, c1)).values


def _open_georeferenced(spec: DatasetSpec, item: Item) -> ImageSource:
    scene = open_scene(item.image, sensor=spec.sensor, **spec.open_kwargs)
    transform = scene.rio.transform()
    crs = scene.rio.crs
    return ImageSource(
        bands=[str(b) for b in scene["band"].values],
        height=int(scene.sizes["y"]),
        width=int(scene.sizes["x"]),
        crs=crs.to_string() if crs is not None else None,
        transform=tuple(transform)[:6],
        provenance={"reader": "pipeline.scene.open_scene", "sensor": spec.sensor.name},
        _data=scene,
    )


def _plain_bands(sensor: Sensor, names: Sequence[str] | None, count: int, path: Path) -> list:
    if names is not None:
        if len(names) != count:
            raise DatasetError(f"{path} has {count} bands but open.bands names {len(names)}")
        return [sensor.band(str(n)) for n in names]
    if count != len(sensor.bands):
        raise DatasetError(
            f"{path} has {count} bands but sensor {sensor.name} declares {len(sensor.bands)}; "
            "name them with open.bands in the data-set catalog"
        )
    return list(sensor.bands)


def _open_plain(spec: DatasetSpec, item: Item) -> ImageSource:
    """A raster without (or regardless of) georeference, with the catalog's radiometry."""
    sensor = spec.sensor
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(item.image) as src:
                data = src.read().astype(np.float32)
                dtype = str(src.dtypes[0])
                file_nodata = src.nodata
                crs = src.crs.to_string() if src.crs else None
                transform = tuple(src.transform)[:6] if src.crs else None
    except (RasterioError, OSError) as exc:
        raise DatasetError(f"cannot read image {item.image}: {exc}") from exc
    bands = _plain_bands(sensor, spec.open_kwargs.get("bands"), data.shape[0], item.image)
    opts = spec.open_kwargs
    try:
        enc = (
            load_encoding(opts["encoding"])
            if opts.get("encoding")
            else select_encoding(sensor.name, dtype, opts.get("level"))
        )
    except CatalogError as exc:
        raise DatasetError(f"{spec.path}: {exc} (open.encoding in the catalog)") from exc
    for i in range(len(bands)):
        for nd in {file_nodata, opts.get("nodata", enc.nodata)} - {None}:
            data[i][data[i] == nd] = np.nan
    if enc.calibration == "scale":
        data = data * np.float32(enc.scale or 1.0) + np.float32(enc.offset or 0.0)
        radiometry: dict[str, Any] = {"method": "encoding", "encoding": enc.name}
    else:
        step = max(1, math.ceil(math.sqrt(data.shape[1] * data.shape[2] / DECIMATED_PIXELS)))
        sample = data[:, ::step, ::step]
        valid = sample[np.isfinite(sample)]
        if valid.size == 0:
            raise DatasetError(f"image {item.image} holds no valid pixels (all nodata)")
        pct = float(enc.fallback_percentile or 99.5)
        ref = float(np.percentile(valid, pct))
        if ref <= 0:
            raise DatasetError(f"image {item.image}: the {pct:g}th percentile is {ref:g}")
        data *= np.float32(1.0 / ref)
        radiometry = {
            "method": "percentile",
            "percentile": pct,
            "value": ref,
            "declared_by": enc.name,
        }
    return ImageSource(
        bands=[b.code for b in bands],
        height=int(data.shape[1]),
        width=int(data.shape[2]),
        crs=crs,
        transform=transform,
        provenance={
            "reader": "rasterio (plain raster)",
            "sensor": sensor.name,
            "radiometry": radiometry,
        },
        _data=data,
    )


def open_image(spec: DatasetSpec, item: Item) -> ImageSource:
    """Open ``item``'s image the way its catalog says (georeferenced or plain)."""
    return _open_georeferenced(spec, item) if spec.georeferenced else _open_plain(spec, item)


# --------------------------------------------------------------------------- labels


def _same_crs(label_crs: Any, image_crs: str | None, spec: DatasetSpec) -> bool:
    if label_crs is None or image_crs is None:
        return (label_crs is None and image_crs is None) or not spec.georeferenced
    a, b = CRS.from_user_input(label_crs), CRS.from_user_input(image_crs)
    if a == b:
        return True
    return any(a == CRS.from_user_input(c) for c in spec.layout.label_crs_equivalent)


def _decode_rgb(rgb: np.ndarray, spec: DatasetSpec, path: Path) -> np.ndarray:
    packed = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2]
    colours, inverse = np.unique(packed, return_inverse=True)
    lookup = {(r << 16) | (g << 8) | b: cid for cid, (r, g, b) in spec.palette.items()}
    unknown = [int(c) for c in colours if int(c) not in lookup]
    if unknown:
        shown = ", ".join(f"({c >> 16}, {(c >> 8) & 0xFF}, {c & 0xFF})" for c in unknown[:5])
        raise DatasetError(
            f"label file {path} holds colour(s) {shown} that data set {spec.name} does not "
            "map to a class (palette in its catalog)"
        )
    ids = np.array([lookup[int(c)] for c in colours], dtype=np.int32)
    return ids[inverse].reshape(packed.shape)


def _read_raster_labels(spec: DatasetSpec, item: Item, image: ImageSource) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(item.label) as src:
                shape = (src.height, src.width)
                if shape != (image.height, image.width):
                    raise DatasetError(
                        f"image/label size mismatch: image {item.id} is "
                        f"{image.height}x{image.width} px but label {item.label.name} is "
                        f"{shape[0]}x{shape[1]} px"
                    )
                if spec.georeferenced and image.transform is not None and src.crs is not None:
                    if not np.allclose(tuple(src.transform)[:6], image.transform, atol=1e-6):
                        raise DatasetError(
                            f"image/label grid mismatch: {item.label.name} transform "
                            f"{tuple(src.transform)[:6]} != image {item.id} {image.transform}"
                        )
                    if not _same_crs(src.crs, image.crs, spec):
                        raise DatasetError(
                            f"image/label CRS mismatch: {item.label.name} is in {src.crs}, "
                            f"image {item.id} in {image.crs} (declare an equivalent CRS "
                            "with layout.label_crs_equivalent if the grids are the same)"
                        )
                data = src.read()
                nodata = src.nodata
    except (RasterioError, OSError) as exc:
        raise DatasetError(f"cannot read label file {item.label}: {exc}") from exc
    if spec.layout.label_encoding == "rgb":
        if data.shape[0] < 3:
            raise DatasetError(f"label file {item.label} has {data.shape[0]} band(s), rgb needs 3")
        return _decode_rgb(data[:3], spec, item.label)
    band = data[0]
    invalid = np.zeros(band.shape, bool)
    if nodata is not None:
        invalid |= band == nodata
    if np.issubdtype(band.dtype, np.floating):
        invalid |= ~np.isfinite(band)
        fractional = ~invalid & (band != np.round(band))
        if fractional.any():
            raise DatasetError(f"label file {item.label} holds non-integer class values")
    ids = np.where(invalid, np.int32(NO_CLASS), np.where(invalid, 0, band).astype(np.int32))
    return ids.astype(np.int32)


def _geojson_crs(doc: dict[str, Any]) -> CRS:
    """RFC 7946 GeoJSON is WGS84 lon/lat; older files may name a CRS in a 'crs' member."""
    name = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    if not name:
        return CRS.from_epsg(4326)
    return CRS.from_user_input(name)


def _rasterize_geojson(spec: DatasetSpec, item: Item, image: ImageSource) -> np.ndarray:
    if image.transform is None or image.crs is None:
        raise DatasetError(
            f"image {item.id} has no georeference: GeoJSON footprints cannot be placed on it"
        )
    try:
        doc = json.loads(item.label.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read GeoJSON label file {item.label}: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise DatasetError(f"GeoJSON label file {item.label} is not a FeatureCollection")
    try:
        src_crs = _geojson_crs(doc)
    except Exception as exc:  # pyproj raises several types; the message is what matters
        raise DatasetError(f"GeoJSON label file {item.label}: unknown CRS ({exc})") from exc
    dst_crs = CRS.from_user_input(image.crs)
    positive = [cid for ids in spec.targets.values() for cid in ids]
    burn = positive[0] if positive else 1
    shapes = []
    for feature in doc.get("features") or []:
        geom = (feature or {}).get("geometry")
        if not geom or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue  # SpaceNet empty chips carry features without geometry or points
        if src_crs != dst_crs:
            geom = transform_geom(src_crs, dst_crs, geom)
        shapes.append((geom, burn))
    background = next((cid for cid in spec.classes if cid not in positive), 0)
    if not shapes:
        return np.full((image.height, image.width), background, np.int32)
    return rasterize(
        shapes,
        out_shape=(image.height, image.width),
        transform=Affine(*image.transform),
        fill=background,
        dtype="int32",
        all_touched=False,
    )


def read_class_ids(spec: DatasetSpec, item: Item, image: ImageSource) -> np.ndarray:
    """Class ids on the image grid (int32, :data:`NO_CLASS` = nodata), all declared."""
    if spec.layout.label_format == "geojson":
        ids = _rasterize_geojson(spec, item, image)
    else:
        ids = _read_raster_labels(spec, item, image)
    present = np.unique(ids)
    unmapped = [int(v) for v in present if v != NO_CLASS and int(v) not in spec.classes]
    if unmapped:
        known = ", ".join(f"{k} {v}" for k, v in spec.classes.items())
        raise DatasetError(
            f"unmapped class id(s) {unmapped} in label file {item.label.name} of data set "
            f"{spec.name}; the catalog declares {known}"
        )
    return ids


def target_mask(class_ids: np.ndarray, spec: DatasetSpec, target: str) -> np.ndarray:
    """uint8 mask (:mod:`pipeline.mask_codes`): target for the target's classes, other
    for the other declared classes, nodata where unlabelled or ignored (for every
    target, or for this one through ``ignore_for``)."""
    mask = np.where(np.isin(class_ids, spec.targets[target]), MASK_TARGET, MASK_OTHER)
    mask = mask.astype(np.uint8)
    ignored = (*spec.ignore, *spec.ignore_for.get(target, ()))
    mask[(class_ids == NO_CLASS) | np.isin(class_ids, ignored)] = MASK_NODATA
    return mask


def read_index_layer(path: Path, image: ImageSource) -> np.ndarray:
    """A precomputed index raster (e.g. Globe230k's NDVI) on the image grid, NaN nodata."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if (src.height, src.width) != (image.height, image.width):
                    raise DatasetError(
                        f"index layer {path.name} is {src.height}x{src.width} px, the image "
                        f"{image.height}x{image.width} px"
                    )
                values = src.read(1).astype(np.float32)
                if src.nodata is not None:
                    values[values == src.nodata] = np.nan
    except (RasterioError, OSError) as exc:
        raise DatasetError(f"cannot read index layer {path}: {exc}") from exc
    return values
