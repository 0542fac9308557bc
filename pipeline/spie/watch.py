"""Has a labelled data set changed? Content hashes of data-set sources, and their record.

Retraining is triggered when new labelled data lands. What counts as "the data set" is
its catalog entry (classes, targets, splits: a change there changes every sample) and the
files it names (every image, label and index layer the layout discovers). Files are
identified by path, size and modification time rather than by reading their bytes, so a
watcher can poll multi-GB sets cheaply; a copy that keeps the bytes but touches the
files reads as a change, which costs one retraining run, never a missed one.

The last hashes seen live in one JSON record (``watch_state.json``), written atomically,
so a watcher that dies half-way reports the same changes on its next run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.outputs.atomic import atomic_write_text, ensure_writable_dir
from pipeline.spie.catalog import load_dataset
from pipeline.spie.errors import DatasetError
from pipeline.spie.readers import discover

STATE_FILE = "watch_state.json"


def dataset_content_hash(name: str, root: str | Path | None = None) -> str:
    """sha256 over the data set's catalog file and the identity of every file it uses."""
    spec = load_dataset(name)
    base = spec.root_or_default(root)
    digest = hashlib.sha256()
    digest.update(Path(spec.path).read_bytes())
    for item in discover(spec, base):
        files = [item.image, item.label, *item.index_layers.values()]
        for path in files:
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if not f.is_file():
                    continue
                stat = f.stat()
                rel = f.resolve().relative_to(base.resolve()).as_posix()
                digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DatasetChange:
    """A data set whose content hash differs from the recorded one (None: first seen)."""

    dataset: str
    previous: str | None
    current: str


def detect_changes(
    datasets: Iterable[str],
    state_dir: str | Path,
    roots: Mapping[str, str | Path] | None = None,
    *,
    record: bool = True,
) -> tuple[list[DatasetChange], dict[str, str]]:
    """Compare each data set's hash with the record in ``state_dir``.

    Returns the changes and the problems (data set -> message; e.g. a root that is not
    there) so one missing set never hides the others. With ``record`` the new hashes are
    saved, so each change is reported once.
    """
    state_path = Path(state_dir) / STATE_FILE
    state: dict[str, str] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    changes: list[DatasetChange] = []
    problems: dict[str, str] = {}
    for name in datasets:
        try:
            current = dataset_content_hash(name, (roots or {}).get(name))
        except DatasetError as exc:
            problems[name] = str(exc)
            continue
        if state.get(name) != current:
            changes.append(DatasetChange(name, state.get(name), current))
            state[name] = current
    if record and changes:
        ensure_writable_dir(state_path.parent)
        atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True))
    return changes, problems
