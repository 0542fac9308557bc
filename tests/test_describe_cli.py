"""`spex extract --describe/--no-describe` on the bundled sample (index extractor, which
writes no text): the flag reaches the report and the STAC item, the masks are equal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
SPEX = Path(sys.executable).with_name("spex")


def _extract(out: Path, *flags: str) -> dict:
    args = ["extract", "water", str(BERLIN), "--model", "index", "--tile", "256"]
    run = subprocess.run(
        [str(SPEX), *args, "--out", str(out), *flags], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_no_describe_flag_reaches_report_and_stac(tmp_path: Path) -> None:
    on = _extract(tmp_path / "on")
    off = _extract(tmp_path / "off", "--no-describe")
    assert Path(on["mask"]).read_bytes() == Path(off["mask"]).read_bytes()
    report_on = json.loads(Path(on["report"]).read_text())
    report_off = json.loads(Path(off["report"]).read_text())
    assert report_on["descriptions_requested"] and not report_off["descriptions_requested"]
    assert report_on["narrative"] == report_off["narrative"]
    assert report_on["narrative"].startswith("Water covers ")
    md = Path(off["report"]).with_suffix(".md").read_text()
    assert "Descriptions were not requested (`--no-describe`)." in md
    stac = json.loads(Path(off["stac"]).read_text())
    assert stac["properties"]["spex:descriptions"] == {"requested": False, "count": 0}
