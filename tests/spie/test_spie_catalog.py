"""Data-set catalogs: every entry loads; malformed or escaping entries are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.errors import CatalogError
from pipeline.spie.catalog import dataset_names, load_dataset, load_dataset_file, resolve_inside
from pipeline.spie.errors import DatasetError

PAPER = {"segmunich", "chesapeake", "globe230k", "spacenet-v2", "gid-15"}
SHARED = {"s2-l1c-berlin", "l7-raleigh", "landsat-gewata", "s2-l1c-slovenia"}


def test_all_catalog_entries_load_with_their_sensor() -> None:
    names = set(dataset_names())
    assert names >= PAPER | SHARED
    for name in names:
        spec = load_dataset(name)
        assert spec.sensor.codes, name
        assert spec.targets, name
    assert {n for n in names if load_dataset(n).paper_set} == PAPER


def test_mappings_match_the_shared_data_readme() -> None:
    assert load_dataset("s2-l1c-berlin").targets == {
        "vegetation": (1, 2, 3, 4, 5),
        "water": (7,),
        "building": (8,),
    }
    assert load_dataset("l7-raleigh").targets == {
        "vegetation": (2, 3, 4, 5),
        "water": (6,),
        "building": (1,),
    }
    assert load_dataset("landsat-gewata").targets == {"vegetation": (1, 2, 4, 5)}
    assert load_dataset("s2-l1c-slovenia").targets == {"vegetation": (1, 2, 3, 4), "building": (8,)}
    assert load_dataset("gid-15").targets == {"water": (13, 14, 15)}
    assert load_dataset("globe230k").targets == {"vegetation": (2, 3, 4)}


def _write(tmp_path: Path, name: str, **changes: object) -> Path:
    raw = yaml.safe_load(Path(load_dataset("l7-raleigh").path).read_text())
    raw.update(changes)
    raw["name"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layout": {"images": "../x/*.tif", "labels": "l.tif"}}, "no absolute path, no '..'"),
        ({"layout": {"images": "/etc/*.tif", "labels": "l.tif"}}, "must be relative"),
        ({"targets": {"water": [99]}}, "undeclared class id"),
        ({"targets": {"snow": [1]}}, "unknown target 'snow'"),
        ({"colour": 1}, "unknown key(s) colour"),
        ({"split": {"method": "random"}}, "split.method must be one of"),
        ({"split": {"method": "blocks", "fractions": {"train": 0.5}}}, "sum to 1"),
        ({"sensor": "no-such-sensor"}, "is not in catalogs/sensors"),
    ],
)
def test_malformed_entries_fail_with_a_clear_message(
    tmp_path: Path, changes: dict, message: str
) -> None:
    with pytest.raises(CatalogError, match=None) as info:
        load_dataset_file(_write(tmp_path, "bad", **changes))
    assert message in str(info.value)


def test_name_must_equal_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "good")
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(CatalogError, match="must equal the file name"):
        load_dataset_file(tmp_path / "other.yaml")


def test_paths_cannot_escape_the_root_through_a_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path, root / "up")
    with pytest.raises(DatasetError, match="outside the data set root"):
        resolve_inside(root, "up/secret.tif")
    assert resolve_inside(root, "a/b.tif") == (root / "a" / "b.tif").resolve()
