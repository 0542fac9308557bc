"""The index path against a hand-written peer script, and the command line's start-up.

Both are whole processes on the same scene, run in turn (spex, peer, spex, peer, ...)
so that drift of a shared machine hits both alike; the figure is the median of the
per-pair ratios spex / peer. The scene is the 4x4 mosaic of the NAIP epochs
(3736 x 2892, 10.8 Mpx, tiled deflate GeoTIFF; ``bench/scenes.py``), target water.

- spex: ``spex extract water MOSAIC --model index --sensor naip --out DIR --force``
  with its default outputs (mask COG, STAC item, quicklook, report).
- peer: ``bench/peer.py`` (NDWI, Otsu on a 1/4 decimated read, block-windowed uint8
  write, COG copy).
- start-up: ``spex --help`` and ``spex sensors``, median wall time of the runs.

Before timing, the project's modules are compiled to bytecode once (``compileall``), as
``pip install`` does for an installed package: these machines set
PYTHONDONTWRITEBYTECODE, so without it every spex process would compile its ~60 modules
again (about 0.1 s). The warm-up run warms the file cache.

Usage::

    .venv/bin/python bench/index_vs_peer.py [--data ../shared/data] [--runs 3] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scenes import build_mosaic, naip_epochs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    """Wall seconds of one whole process; its failure stops the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="spex-bench-peer-") as tmp:
        work = Path(tmp)
        mosaic = build_mosaic(naip_epochs(args.data), work / "naip_mosaic_4x4.tif")
        spex_out, peer_out = work / "spex", work / "peer.tif"
        spex_cmd = [str(BIN / "spex"), "extract", "water", str(mosaic), "--model", "index"]
        spex_cmd += ["--sensor", "naip", "--out", str(spex_out), "--force"]
        peer_cmd = [sys.executable, str(REPO / "bench" / "peer.py"), str(mosaic), str(peer_out)]
        timed([sys.executable, "-m", "compileall", "-q", "pipeline", "model", "flows"])
        timed(spex_cmd), timed(peer_cmd)  # warm-up: file cache
        spex_s, peer_s = [], []
        for _ in range(args.runs):
            shutil.rmtree(spex_out, ignore_errors=True)
            spex_s.append(timed(spex_cmd))
            peer_s.append(timed(peer_cmd))
        help_s = [timed([str(BIN / "spex"), "--help"]) for _ in range(args.runs + 2)]
        sensors_s = [timed([str(BIN / "spex"), "sensors"]) for _ in range(args.runs + 2)]

    ratios = [a / b for a, b in zip(spex_s, peer_s, strict=True)]
    result = {
        "scene": "4x4 NAIP mosaic, 3736 x 2892, target water",
        "runs": args.runs,
        "spex_extract_index_s": statistics.median(spex_s),
        "peer_s": statistics.median(peer_s),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "spex_help_s": statistics.median(help_s),
        "spex_sensors_s": statistics.median(sensors_s),
    }
    rows = [
        ("spex extract --model index (default outputs)", result["spex_extract_index_s"], ""),
        ("bench/peer.py", result["peer_s"], ""),
        ("ratio spex / peer (median of pairs)", result["ratio_median"], "target <= 2.0"),
        ("spex --help", result["spex_help_s"], "target <= 0.5 s"),
        ("spex sensors", result["spex_sensors_s"], "target <= 0.5 s"),
    ]
    print("| figure | median | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value:.2f} | {note} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
