"""Data-set catalogs (``catalogs/datasets/*.yaml``): the one place for data-set facts.

A data-set entry says where the images and labels are (globs and templates *relative to
the data set's root*), which sensor catalog entry opens the images, which class id means
what, which classes make each target, how patches are cut and how samples are split. The
SPIE builder reads nothing else about a data set, so a new data set is a new YAML file.

Why the checks are eager and strict: a catalog error found after an hour of patch
cutting wastes the hour, and a glob such as ``../../etc/*`` or an absolute template would
read outside the folder a user pointed at. Files are ``yaml.safe_load``-ed, every key is
validated here, and :func:`resolve_inside` refuses any path that leaves the root (also
through ``..`` or a symlink).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.catalog_io import (
    catalog_dir,
    catalog_names,
    check_entry,
    check_keys,
    read_catalog_yaml,
    required,
)
from pipeline.errors import CatalogError
from pipeline.scene import OPEN_OPTIONS
from pipeline.sensors import Sensor, list_sensors, load_sensor
from pipeline.spie.errors import DatasetError
from pipeline.targets import load_target

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "Layout",
    "PatchSpec",
    "SplitSpec",
    "dataset_names",
    "default_datasets",
    "load_dataset",
    "load_dataset_file",
    "resolve_inside",
]

#: Split names, in the order stats print them.
SPLITS = ("train", "val", "test")
SPLIT_METHODS = ("blocks", "hash", "lists", "pattern")
#: ``pseudo``: no label files; confident pseudo-labels from the image (pipeline/spie/pseudo.py).
LABEL_FORMATS = ("raster", "geojson", "pseudo")
LABEL_ENCODINGS = ("index", "rgb")
MISSING_INDEX_POLICIES = ("skip", "empty-prompt")
#: Patch size (px) of a data set whose catalog gives none: the SPEX paper's SPIE patches.
PAPER_PATCH_SIZE = 512
#: Project folder: ``default_root`` entries are relative to it.
PROJECT_DIR = Path(__file__).resolve().parents[2]
_TOP_KEYS = {
    "name",
    "title",
    "paper_set",
    "source",
    "license",
    "default_root",
    "sensor",
    "open",
    "georeferenced",
    "layout",
    "classes",
    "palette",
    "ignore",
    "targets",
    "ignore_for",
    "place",
    "patch",
    "split",
    "apg",
    "notes",
}


@dataclass(frozen=True)
class Layout:
    """Where images and labels are, relative to the root.

    ``images`` is a glob (files, or folders of band files); ``pattern`` an optional
    regular expression searched in the image's root-relative POSIX path whose named
    groups fill ``labels``/``index_layers`` templates and may carry the split. Templates
    also know ``{stem}``, ``{name}`` and ``{parent}`` of the image path.
    """

    images: str
    labels: str  # empty for pseudo-labels
    pattern: str | None = None
    label_format: str = "raster"
    label_encoding: str = "index"
    label_crs_equivalent: tuple[str, ...] = ()
    index_layers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PatchSpec:
    """Patch size in pixels and the least valid share a kept patch must have."""

    size: int = PAPER_PATCH_SIZE
    min_valid: float = 0.25


@dataclass(frozen=True)
class SplitSpec:
    """How samples get their split; every method is a pure function of the inputs.

    ``blocks``: spatial blocks inside each image, whole blocks per split, patches kept
    ``buffer_px`` away from any block of another split. ``hash``: per image, from a
    seeded hash of its id. ``lists``: official list files (one image name per line).
    ``pattern``: a named group of ``layout.pattern`` (e.g. Chesapeake's folder names).
    """

    method: str
    fractions: dict[str, float] = field(default_factory=dict)
    buffer_px: int = 8
    block_px: int | None = None
    seed: int = 0
    lists: dict[str, str] = field(default_factory=dict)
    group: str | None = None
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """One validated data-set catalog entry."""

    name: str
    title: str
    sensor_name: str
    layout: Layout
    classes: dict[int, str]
    targets: dict[str, tuple[int, ...]]
    split: SplitSpec
    patch: PatchSpec
    ignore: tuple[int, ...] = ()
    # Classes ignored for one target only (e.g. pasture: neither vegetation nor not).
    ignore_for: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Where on Earth the data set lies: sets sharing a place are held out together in
    # leave-one-scene-out evaluation (e.g. two label layers of the same images).
    place: str = ""
    palette: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    open_kwargs: dict[str, Any] = field(default_factory=dict)
    georeferenced: bool = True
    missing_index: str = "skip"
    paper_set: bool = False
    default_root: str | None = None
    source: str = ""
    license: str = ""
    notes: str = ""
    path: str = ""

    @property
    def sensor(self) -> Sensor:
        """The data set's sensor entry from ``catalogs/sensors``."""
        if self.sensor_name not in list_sensors():
            raise CatalogError(
                f"{self.path}: sensor {self.sensor_name!r} is not in catalogs/sensors "
                f"({', '.join(list_sensors())})"
            )
        return load_sensor(self.sensor_name)

    def root_or_default(self, root: str | Path | None) -> Path:
        """The data set's folder: ``root`` when given, else the catalog's default."""
        if root is not None:
            return Path(root)
        if not self.default_root:
            raise DatasetError(
                f"data set {self.name!r} has no default root; pass --root with its folder"
            )
        return (PROJECT_DIR / self.default_root).resolve()

    @property
    def pseudo(self) -> bool:
        """Labels are confident pseudo-labels from the image, not files."""
        return self.layout.label_format == "pseudo"


def dataset_names() -> list[str]:
    """Names of every data-set catalog entry, sorted."""
    return catalog_names("datasets")


def default_datasets() -> list[str]:
    """The data sets an SPIE build and the data-set watch use when none is named
    (``catalogs/spie.yaml``)."""
    resource = files("catalogs").joinpath("spie.yaml")
    raw = check_keys(
        read_catalog_yaml(resource, "SPIE"),
        str(resource),
        allowed={"default_datasets"},
        needed={"default_datasets"},
    )
    names = raw["default_datasets"]
    if not isinstance(names, list) or not names:
        raise CatalogError(f"{resource}: default_datasets must be a non-empty list of names")
    unknown = [str(n) for n in names if str(n) not in dataset_names()]
    if unknown:
        raise CatalogError(f"{resource}: unknown data set(s) {', '.join(unknown)}")
    return [str(n) for n in names]


def load_dataset(name: str | Path) -> DatasetSpec:
    """The catalog entry ``name``, or the YAML file at a path (a user's own data set)."""
    text = str(name)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        return load_dataset_file(text)
    path = catalog_dir("datasets") / f"{text}.yaml"
    if not text or not path.is_file():
        raise CatalogError(
            f"unknown data set {text!r}; known data sets: {', '.join(dataset_names())}"
        )
    return load_dataset_file(path)


def _mapping(value: Any, key: str, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: key {key!r} must be a mapping, got {value!r}")
    return value


def _int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def check_relative(pattern: str, what: str, where: str) -> str:
    """Refuse absolute paths and ``..`` in a glob/template: they could leave the root."""
    posix = PurePosixPath(pattern.replace("\\", "/"))
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", pattern) or ".." in posix.parts:
        raise CatalogError(
            f"{where}: {what} {pattern!r} must be relative to the data set's root "
            "(no absolute path, no '..')"
        )
    return pattern


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that resolves outside ``root`` (symlinks too)."""
    check_relative(relative, "path", str(root))
    path = (root / relative).resolve()
    base = root.resolve()
    if path != base and base not in path.parents:
        raise DatasetError(
            f"{root / relative} resolves to {path}, outside the data set root {base}"
        )
    return path


def _layout(raw: dict[str, Any], where: str) -> Layout:
    images = check_relative(str(required(raw, "images", where)), "layout.images", where)
    pseudo = raw.get("label_format") == "pseudo"
    if pseudo and raw.get("labels"):
        raise CatalogError(f"{where}: layout.labels must be absent with label_format pseudo")
    labels = ""
    if not pseudo:
        labels = check_relative(str(required(raw, "labels", where)), "layout.labels", where)
    pattern = raw.get("pattern")
    if pattern is not None:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise CatalogError(f"{where}: layout.pattern is not a valid regex ({exc})") from exc
    fmt = raw.get("label_format", "raster")
    enc = raw.get("label_encoding", "index")
    if fmt not in LABEL_FORMATS:
        raise CatalogError(f"{where}: layout.label_format must be one of {LABEL_FORMATS}")
    if enc not in LABEL_ENCODINGS:
        raise CatalogError(f"{where}: layout.label_encoding must be one of {LABEL_ENCODINGS}")
    layers = {
        str(k).upper(): check_relative(str(v), f"layout.index_layers.{k}", where)
        for k, v in _mapping(raw.get("index_layers"), "layout.index_layers", where).items()
    }
    check_keys(
        raw,
        f"{where} layout",
        allowed={
            "images",
            "labels",
            "pattern",
            "label_format",
            "label_encoding",
            "label_crs_equivalent",
            "index_layers",
        },
    )
    return Layout(
        images=images,
        labels=labels,
        pattern=str(pattern) if pattern is not None else None,
        label_format=fmt,
        label_encoding=enc,
        label_crs_equivalent=tuple(str(c) for c in raw.get("label_crs_equivalent") or ()),
        index_layers=layers,
    )


def _split(raw: dict[str, Any], layout: Layout, where: str) -> SplitSpec:
    method = required(raw, "method", f"{where} split")
    if method not in SPLIT_METHODS:
        raise CatalogError(f"{where}: split.method must be one of {SPLIT_METHODS}, got {method!r}")
    fractions = {
        str(k): float(v) for k, v in _mapping(raw.get("fractions"), "fractions", where).items()
    }
    if method in ("blocks", "hash"):
        if not fractions or set(fractions) - set(SPLITS):
            raise CatalogError(f"{where}: split.fractions needs keys among {SPLITS}")
        if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
            raise CatalogError(f"{where}: split.fractions must be >= 0 and sum to 1")
    lists = {
        str(k): check_relative(str(v), f"split.lists.{k}", where)
        for k, v in _mapping(raw.get("lists"), "lists", where).items()
    }
    if method == "lists" and (not lists or set(lists) - set(SPLITS)):
        raise CatalogError(f"{where}: split.lists needs list files for splits among {SPLITS}")
    group = raw.get("group")
    values = {str(k): str(v) for k, v in _mapping(raw.get("values"), "values", where).items()}
    if method == "pattern":
        if not group or not layout.pattern or f"(?P<{group}>" not in layout.pattern:
            raise CatalogError(
                f"{where}: split.method 'pattern' needs split.group naming a group of "
                "layout.pattern"
            )
        if set(values.values()) - set(SPLITS):
            raise CatalogError(f"{where}: split.values must map to splits among {SPLITS}")
    buffer_px = _int(raw.get("buffer_px", 8), "split.buffer_px", where)
    block_px = raw.get("block_px")
    if buffer_px < 0:
        raise CatalogError(f"{where}: split.buffer_px must be >= 0")
    return SplitSpec(
        method=method,
        fractions=fractions,
        buffer_px=buffer_px,
        block_px=_int(block_px, "split.block_px", where) if block_px is not None else None,
        seed=_int(raw.get("seed", 0), "split.seed", where),
        lists=lists,
        group=str(group) if group else None,
        values=values,
    )


def _classes(raw: dict[str, Any], where: str) -> dict[int, str]:
    classes = {
        _int(k, "a class id", where): str(v) for k, v in required(raw, "classes", where).items()
    }
    if not classes:
        raise CatalogError(f"{where}: key 'classes' must not be empty")
    return classes


def _common(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The keys every entry validates the same way (patch, apg policy, open, texts)."""
    patch_raw = _mapping(raw.get("patch"), "patch", where)
    patch = PatchSpec(
        size=_int(patch_raw.get("size", PAPER_PATCH_SIZE), "patch.size", where),
        min_valid=float(patch_raw.get("min_valid", 0.25)),
    )
    if patch.size < 8 or not 0 <= patch.min_valid <= 1:
        raise CatalogError(f"{where}: patch.size must be >= 8 and min_valid in [0, 1]")
    apg = _mapping(raw.get("apg"), "apg", where)
    missing_index = apg.get("missing_index", "skip")
    if missing_index not in MISSING_INDEX_POLICIES:
        raise CatalogError(f"{where}: apg.missing_index must be one of {MISSING_INDEX_POLICIES}")
    open_kwargs = _mapping(raw.get("open"), "open", where)
    # sensor: a key of its own
    check_keys(open_kwargs, f"{where} open", allowed=set(OPEN_OPTIONS) - {"sensor"})
    default_root = raw.get("default_root")
    return {
        "title": str(required(raw, "title", where)),
        "sensor_name": str(required(raw, "sensor", where)),
        "patch": patch,
        "open_kwargs": dict(open_kwargs),
        "georeferenced": bool(raw.get("georeferenced", True)),
        "missing_index": missing_index,
        "paper_set": bool(raw.get("paper_set", False)),
        "default_root": str(default_root) if default_root else None,
        "source": " ".join(str(raw.get("source", "")).split()),
        "license": " ".join(str(raw.get("license", "")).split()),
        "notes": " ".join(str(raw.get("notes", "")).split()),
        "path": where,
    }


def _pseudo_spec(raw: dict[str, Any], name: str, layout: Layout, where: str) -> DatasetSpec:
    """An unlabelled data set whose masks are confident pseudo-labels: ``targets`` is a
    list of target names, and there are no classes, ignore lists or palette."""
    for key in ("classes", "ignore", "ignore_for", "palette"):
        if raw.get(key):
            raise CatalogError(f"{where}: {key!r} has no meaning with label_format pseudo")
    names = raw.get("targets")
    if not isinstance(names, list) or not names:
        raise CatalogError(f"{where}: with label_format pseudo, 'targets' is a list of targets")
    for tname in names:
        load_target(str(tname))
    spec = DatasetSpec(
        name=name,
        layout=layout,
        classes={},
        targets={str(t): () for t in names},
        split=_split(_mapping(required(raw, "split", where), "split", where), layout, where),
        place=str(raw.get("place") or name),
        **_common(raw, where),
    )
    spec.sensor  # noqa: B018 - validate the sensor now, not mid-build
    return spec


def load_dataset_file(path: str | Path) -> DatasetSpec:
    """Parse and validate one data-set YAML file (public so malformed files can be tested)."""
    path = Path(path)
    where = str(path)
    raw = read_catalog_yaml(path, "data-set")
    name = check_entry(raw, path, _TOP_KEYS)
    layout = _layout(_mapping(required(raw, "layout", where), "layout", where), where)
    if layout.label_format == "pseudo":
        return _pseudo_spec(raw, name, layout, where)
    classes = _classes(raw, where)
    ignore = tuple(_int(i, "an ignore id", where) for i in raw.get("ignore") or ())
    targets: dict[str, tuple[int, ...]] = {}
    for tname, ids in _mapping(required(raw, "targets", where), "targets", where).items():
        load_target(str(tname))  # unknown target -> CatalogError listing the valid ones
        if not isinstance(ids, list) or not ids:
            raise CatalogError(f"{where}: targets.{tname} must be a non-empty list of class ids")
        targets[str(tname)] = tuple(_int(i, f"targets.{tname} id", where) for i in ids)
    for tname, ids in targets.items():
        missing = [i for i in ids if i not in classes]
        if missing:
            raise CatalogError(f"{where}: targets.{tname} uses undeclared class id(s) {missing}")
        clash = sorted(set(ids) & set(ignore))
        if clash:
            raise CatalogError(f"{where}: class id(s) {clash} are both ignored and in {tname}")
    if any(i not in classes for i in ignore):
        raise CatalogError(f"{where}: 'ignore' lists class ids not in 'classes'")
    ignore_for: dict[str, tuple[int, ...]] = {}
    for tname, ids in _mapping(raw.get("ignore_for"), "ignore_for", where).items():
        if tname not in targets:
            raise CatalogError(f"{where}: ignore_for.{tname} names no target of this data set")
        ignore_for[str(tname)] = tuple(_int(i, f"ignore_for.{tname} id", where) for i in ids)
        clash = sorted(set(ignore_for[tname]) & set(targets[tname]))
        if clash or any(i not in classes for i in ignore_for[tname]):
            raise CatalogError(
                f"{where}: ignore_for.{tname} must list declared classes outside {tname}"
            )
    palette: dict[int, tuple[int, int, int]] = {}
    for k, rgb in _mapping(raw.get("palette"), "palette", where).items():
        if not isinstance(rgb, list) or len(rgb) != 3:
            raise CatalogError(f"{where}: palette.{k} must be [r, g, b]")
        palette[_int(k, "a palette id", where)] = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    if layout.label_encoding == "rgb" and set(palette) != set(classes):
        raise CatalogError(f"{where}: rgb labels need a palette colour for every class")
    spec = DatasetSpec(
        name=name,
        layout=layout,
        classes=classes,
        targets=targets,
        split=_split(_mapping(required(raw, "split", where), "split", where), layout, where),
        ignore=ignore,
        ignore_for=ignore_for,
        place=str(raw.get("place") or name),
        palette=palette,
        **_common(raw, where),
    )
    spec.sensor  # noqa: B018 - validate the sensor now, not mid-build
    return spec
