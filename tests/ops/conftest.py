"""Fixtures of the operations tests: region catalogs over the real scenes, and the
failure-drill tally printed at the end of the session (runs, faults, files lost)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DRILLS: list[dict[str, object]] = []


@pytest.fixture(scope="session")
def drill_log() -> Callable[..., None]:
    """Record one drill's figures: ``drill_log(name, runs=.., faults=.., files_lost=..)``."""

    def record(name: str, *, runs: int, faults: int, files_lost: int) -> None:
        DRILLS.append({"drill": name, "runs": runs, "faults": faults, "files_lost": files_lost})

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not DRILLS:
        return
    tr = terminalreporter
    tr.section("failure drills")
    for d in DRILLS:
        tr.write_line(
            f"{d['drill']:<42} runs {d['runs']:>2}  faults {d['faults']:>2}  "
            f"files lost {d['files_lost']}"
        )
    totals = {k: sum(int(d[k]) for d in DRILLS) for k in ("runs", "faults", "files_lost")}
    tr.write_line(
        f"{'total':<42} runs {totals['runs']:>2}  faults {totals['faults']:>2}  "
        f"files lost {totals['files_lost']}"
    )
    target = os.environ.get("SPEX_DRILL_REPORT")
    if target:
        Path(target).write_text(json.dumps({"drills": DRILLS, "totals": totals}, indent=2))


@pytest.fixture()
def region_env(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Path]]:
    """Roots for region catalogs: data = ../shared/data, out = a fresh temp folder."""
    out = tmp_path / "out-root"
    out.mkdir()
    monkeypatch.setenv("SPEX_DATA_ROOT", str(shared_data))
    monkeypatch.setenv("SPEX_OUT_ROOT", str(out))
    yield {"data": shared_data, "out": out, "catalogs": tmp_path}


@pytest.fixture(scope="session")
def naip_region() -> Callable[..., Path]:
    """Writer of small NAIP region catalogs (see :func:`naip_region_yaml`)."""
    return naip_region_yaml


def naip_region_yaml(
    folder: Path,
    name: str,
    glob: str,
    *,
    start: str = "2018-01-01",
    targets: str = "[water, vegetation]",
    root: str = "data",
) -> Path:
    """A small NAIP region (the 2018-2020 epochs by default) written to ``folder``."""
    path = folder / f"{name}.yaml"
    path.write_text(f"""
name: {name}
title: NAIP test region
aoi: {{crs: "EPSG:26914", bbox: [486000, 5205700, 490500, 5209200]}}
targets: {targets}
sensor: naip
scenes: {{type: local, root: {root}, glob: "{glob}", start: {start}}}
output: {{root: out, path: regions/{name}}}
schedule: {{cron: "0 6 * * 1", timezone: UTC}}
extraction: {{model: index, tile: 512, overlap: 64}}
max_concurrent: 2
""")
    return path
