"""Failure drills on the extraction path (the regional one is in test_ops_regional.py).

Each drill injects a real fault into a real run (`spex extract` in a subprocess on the
bundled Berlin sample), then checks what an operator cares about: a clear error, no
half-written final file, and after a rerun outputs byte-identical to a clean run. "Files
lost" counts final outputs of the clean run that are missing or differ at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.outputs.atomic import TEMP_MARK
from pipeline.outputs.cog import validate_cog

REPO = Path(__file__).resolve().parents[2]
BERLIN = REPO / "samples" / "s2_l1c_berlin_20170216.tif"
SPEX = Path(sys.executable).with_name("spex")
STEM = "s2_l1c_berlin_20170216_water"
FINAL = [f"{STEM}{s}" for s in (".tif", ".json", ".png", "_report.json", "_report.md")]
N_TILES = 36  # 768 x 768 at --tile 128 (the index extractor is per-pixel: no overlap)


def _cmd(out: Path) -> list[str]:
    return [
        str(SPEX),
        "extract",
        "water",
        str(BERLIN),
        "--out",
        str(out),
        "--tile",
        "128",
        "--overlap",
        "16",
        "--model",
        "index",
        "--batch-size",
        "1",
    ]


def _run(
    out: Path, env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cmd(out),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Final outputs of an undisturbed run."""
    out = tmp_path_factory.mktemp("clean")
    done = _run(out)
    assert done.returncode == 0, done.stderr
    return {name: (out / name).read_bytes() for name in FINAL}


def _lost(out: Path, clean: dict[str, bytes]) -> int:
    return sum(
        1
        for name, data in clean.items()
        if not (out / name).is_file() or (out / name).read_bytes() != data
    )


def _assert_no_partial_files(out: Path, *, failed: bool = True) -> None:
    """No temp file anywhere; a failed job leaves no final-named file at all and no done
    record (so the next run completes it); every final file present is whole."""
    leftovers = [p for p in out.rglob(f"*{TEMP_MARK}*")]
    assert not leftovers, leftovers
    if failed:
        assert not [name for name in FINAL if (out / name).exists()]
    for name in FINAL:
        path = out / name
        if not path.exists():
            continue
        if path.suffix == ".tif":
            assert validate_cog(path)[0], f"{path} is not a whole COG"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert (out / ".spex-work" / f"{STEM}.done.json").exists() != failed


def _markers(out: Path) -> dict[str, int]:
    folder = out / ".spex-work" / f"{STEM}.tiles" / "tiles"
    found = {}
    for p in folder.glob("0*.tile") if folder.is_dir() else []:
        try:
            found[p.name] = p.stat().st_mtime_ns
        except FileNotFoundError:  # renamed in as we looked
            continue
    return found


def test_drill_sigkill_mid_scene_resumes_to_identical_outputs(
    tmp_path: Path, clean: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while len(_markers(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    before = _markers(out)
    assert 0 < len(before) < N_TILES, "the kill must land in the middle of the scene"
    assert not any((out / name).exists() for name in FINAL)

    rerun = _run(out)
    assert rerun.returncode == 0, rerun.stderr
    after = _markers(out)
    assert len(after) == N_TILES
    # Tiles finished before the kill were resumed, not recomputed.
    assert all(after[name] == mtime for name, mtime in before.items())
    lost = _lost(out, clean)
    drill_log("1 worker SIGKILLed mid-scene", runs=2, faults=1, files_lost=lost)
    assert lost == 0
    assert (out / FINAL[0]).read_bytes() == clean[FINAL[0]]


def _hold_lock(out: Path, seconds: float) -> subprocess.Popen[str]:
    code = textwrap.dedent(f"""
        import time
        from pipeline.locking import output_lock
        with output_lock({str(out)!r}, {STEM!r}):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_drill_two_runs_on_the_same_output(
    tmp_path: Path, clean: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    out = tmp_path / "out"
    # Two runs at once: one waits for the other at plan/finalise; both succeed.
    runs = [
        subprocess.Popen(_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in runs]
    assert [rc for rc, _ in results] == [0, 0], results
    _assert_no_partial_files(out, failed=False)
    lost = _lost(out, clean)

    # A third run while another holds the output longer than it will wait: fails clearly,
    # writes nothing, and the finished outputs are untouched.
    other = tmp_path / "other"
    holder = _hold_lock(other, 60)
    try:
        refused = _run(other, env={"SPEX_LOCK_TIMEOUT": "1"})
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 2
    assert f"is being written by pid {holder.pid}" in refused.stderr
    assert refused.stderr.startswith("error: ")
    assert not any((other / name).exists() for name in FINAL)
    again = _run(other)  # the holder is gone (SIGKILL released the lock)
    assert again.returncode == 0, again.stderr
    lost += _lost(other, clean)
    drill_log("3 two runs writing the same output", runs=4, faults=2, files_lost=lost)
    assert lost == 0


def _mount_tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    return (
        shutil.which("mount") is not None
        and subprocess.run(cmd, capture_output=True).returncode == 0
    )


def _remount(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def test_drill_full_output_disk_tmpfs(
    tmp_path: Path, clean: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    """A real full filesystem: a tiny tmpfs (needs root); filled at two different stages."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 64 << 20):
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT drill still runs")
    try:
        first = _run(disk / "probe")
        assert first.returncode == 0, first.stderr
        st = os.statvfs(disk)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        shutil.rmtree(disk / "probe")
        out = disk / "out"
        faults = 0
        for fraction in (0.25, 0.6):  # fills up in the tile store, then while finalising
            _remount(disk, int(used * fraction) // 4096 * 4096)
            failed = _run(out)
            assert failed.returncode != 0
            assert "No space left on device" in failed.stderr, failed.stderr[-2000:]
            assert " free in " in failed.stderr and "needs up to" in failed.stderr
            _assert_no_partial_files(out)
            faults += 1
        _remount(disk, 64 << 20)  # the operator frees space
        ok = _run(out)
        assert ok.returncode == 0, ok.stderr
        lost = _lost(out, clean)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    drill_log("4 full output disk (tmpfs)", runs=faults + 2, faults=faults, files_lost=lost)
    assert lost == 0


def test_drill_full_output_disk_file_size_limit(
    tmp_path: Path, clean: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    """No mount needed: RLIMIT_FSIZE makes any write past 200 kB fail (EFBIG) mid-output."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out"
    failed = _run(out, preexec=limit)
    assert failed.returncode != 0
    assert "File too large" in failed.stderr, failed.stderr[-2000:]
    _assert_no_partial_files(out)
    ok = _run(out)
    assert ok.returncode == 0, ok.stderr
    lost = _lost(out, clean)
    drill_log("4 full output disk (file size limit)", runs=2, faults=1, files_lost=lost)
    assert lost == 0


class _Payload:
    """A pickle that would create a file if anything unpickled it unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_drill_checkpoint_that_is_not_what_it_claims(
    tmp_path: Path, drill_log: Callable[..., None]
) -> None:
    import torch
    from safetensors.torch import save_file

    from model.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_checkpoint, sha256_file
    from model.config import tiny
    from model.sam_decoder import SpexMaskDecoder
    from model.spex import SpexModel
    from pipeline.extract import load_extractor

    good = tmp_path / "good"
    from model.checkpoint import save_checkpoint

    model = SpexModel(tiny())
    save_checkpoint(model, good)
    hashes = {p.name: sha256_file(p) for p in good.iterdir() if p.is_file()}
    marker = tmp_path / "code-ran"

    def variant(name: str, weights: bytes | None = None, config: str | None = None) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        if weights is not None:
            (folder / WEIGHTS).write_bytes(weights)
        if config is not None:
            (folder / CONFIG).write_text(config)
        return folder

    renamed = tmp_path / "renamed.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    first = next(iter(state))
    save_file(
        {**{k: v for k, v in state.items() if k != first}, "evil." + first: state[first]},
        str(renamed),
    )
    cases = {
        "garbage": (variant("garbage", weights=os.urandom(4096)), "unreadable safetensors"),
        "pickle": (
            variant("pickle", weights=pickle.dumps(_Payload(marker))),
            "unreadable safetensors",
        ),
        "wrong tensors": (variant("wrong", weights=renamed.read_bytes()), "tensor"),
        "bad config": (variant("config", config="{not json"), "config"),
    }
    for label, (folder, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(folder)
        with pytest.raises(CheckpointError):  # the path `spex extract --model DIR` takes
            load_extractor(str(folder))
        assert not marker.exists(), f"{label}: checkpoint content was executed"
    # A SAM .pth that carries code is refused by the weights-only unpickler.
    pth = tmp_path / "sam_vit_b.pth"
    torch.save({"model": _Payload(marker)}, pth)
    decoder = SpexMaskDecoder(dim=32, depth=1, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32)
    with pytest.raises(pickle.UnpicklingError):
        decoder.load_sam_checkpoint(pth)
    assert not marker.exists()
    lost = sum(sha256_file(good / n) != h for n, h in hashes.items())
    assert load_checkpoint(good) is not None  # the real checkpoint still loads
    drill_log(
        "5 checkpoint not what it claims",
        runs=2 * len(cases) + 2,
        faults=len(cases) + 1,
        files_lost=lost,
    )
    assert lost == 0


# ------------------------------------------------------- output-side drills (issue 14)

FORMATS = "cog,prob,gpkg"
FINAL_ALL = [*FINAL, f"{STEM}_prob.tif", f"{STEM}.gpkg"]


def _cmd_all(out: Path, target: str = "water") -> list[str]:
    cmd = _cmd(out)
    cmd[2] = target
    return [*cmd, "--format", FORMATS]


@pytest.fixture(scope="module")
def clean_all(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Final outputs (with probability and polygons) of an undisturbed run."""
    out = tmp_path_factory.mktemp("clean-all")
    done = subprocess.run(_cmd_all(out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {name: (out / name).read_bytes() for name in FINAL_ALL}


def _finals(out: Path) -> list[str]:
    return sorted(name for name in FINAL_ALL if (out / name).exists())


def test_drill_identical_runs_at_once(
    tmp_path: Path, clean_all: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    """The issue's loop: three identical runs into one folder at once. Each exits 0 (it
    waited for the holder and found the job done) or 2 (one clear line), never 1."""
    rounds, lost = 2, 0
    for r in range(rounds):
        out = tmp_path / f"round{r}"
        runs = [
            subprocess.Popen(
                _cmd_all(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in runs]
        for rc, err in results:
            assert rc in (0, 2), err[-3000:]
            assert "Traceback" not in err
            if rc == 2:
                assert err.strip().splitlines()[-1].startswith("error: ")
        assert any(rc == 0 for rc, _ in results)
        assert sum("waiting: the same job" in err for _, err in results) >= 1
        lost += sum(
            (out / n).read_bytes() != data for n, data in clean_all.items() if (out / n).exists()
        ) + len(set(FINAL_ALL) - set(_finals(out)))
    drill_log("6 three identical runs at once", runs=3 * rounds, faults=rounds, files_lost=lost)
    assert lost == 0


def test_drill_different_jobs_into_one_folder_at_once(
    tmp_path: Path, clean_all: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    out = tmp_path / "out"
    targets = ("water", "vegetation")
    runs = [
        subprocess.Popen(
            _cmd_all(out, t), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for t in targets
    ]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in runs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert not any("waiting: the same job" in err for _, err in results)  # no one waited
    lost = sum((out / n).read_bytes() != data for n, data in clean_all.items())
    for target in targets:
        assert validate_cog(out / f"s2_l1c_berlin_20170216_{target}.tif")[0]
    drill_log("7 two different jobs into one folder", runs=2, faults=0, files_lost=lost)
    assert lost == 0


def test_drill_sigkill_inside_finalise_leaves_nothing_behind(
    tmp_path: Path, clean_all: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    """SIGKILL while finalise writes; plus the leftovers of the old finalise (hidden temp
    files next to the outputs, a finalise-* folder in the store). The next run removes
    them all and writes outputs byte-identical to a clean run."""
    out = tmp_path / "out"
    staging = out / ".spex-work" / f"{STEM}.staging"
    proc = subprocess.Popen(
        _cmd_all(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not any(staging.glob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert staging.is_dir(), "the kill must land inside finalise"
    assert _finals(out) == []  # nothing under a final name
    planted = [
        out / f".{STEM}{TEMP_MARK}4242-0123456789ab.tif",
        out / f".{STEM}{TEMP_MARK}4242-0123456789ab.png",
        out / f".{STEM}_prob{TEMP_MARK}4242-0123456789ab.tif",
    ]
    for p in planted:
        p.write_bytes(b"half-written")
    (out / ".spex-work" / f"{STEM}.tiles" / "finalise-abc123").mkdir()
    (out / ".spex-work" / f"{STEM}.tiles" / "finalise-abc123" / "mask.tif").write_bytes(b"x")

    rerun = subprocess.run(_cmd_all(out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    leftovers = [p for p in out.rglob("*") if TEMP_MARK in p.name or p.name.startswith("finalise-")]
    assert leftovers == [] and not staging.exists()
    lost = sum((out / n).read_bytes() != data for n, data in clean_all.items())
    drill_log("8 SIGKILL inside finalise + leftovers", runs=2, faults=2, files_lost=lost)
    assert lost == 0


def test_drill_late_failure_leaves_no_final_file(
    tmp_path: Path, clean_all: dict[str, bytes], drill_log: Callable[..., None]
) -> None:
    """A file-size limit that the tile store fits under but the outputs do not: the job
    fails in finalise, names the file and the space, and leaves no final-named file."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    out = tmp_path / "out"
    failed = subprocess.run(
        _cmd_all(out), capture_output=True, text=True, timeout=300, preexec_fn=limit
    )
    assert failed.returncode == 2, failed.stderr[-2000:]
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot write ") and "File too large" in line
    assert f"{out}/{STEM}" in line and " free in " in line and "needs up to" in line
    assert _finals(out) == []
    assert len(list((out / ".spex-work" / f"{STEM}.tiles" / "tiles").glob("0*.tile"))) == N_TILES
    ok = subprocess.run(_cmd_all(out), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    lost = sum((out / n).read_bytes() != data for n, data in clean_all.items())
    drill_log("9 failure in finalise (file size limit)", runs=2, faults=1, files_lost=lost)
    assert lost == 0


def test_drill_scene_refused_late_leaves_no_final_file(
    tmp_path: Path, drill_log: Callable[..., None]
) -> None:
    """The Berlin sample with its CRS but without a geotransform. Whether the job refuses
    it at plan time or only when the report needs map coordinates, it exits 2 with one
    clear line and no final-named file (before, the mask COG and quicklook appeared)."""
    import rasterio

    scene = tmp_path / "no_transform_20170216.tif"
    with rasterio.open(BERLIN) as src:
        profile = {**src.profile, "transform": rasterio.Affine.identity()}
        data, tags, crs, names = src.read(), src.tags(), src.crs, src.descriptions
    with rasterio.open(scene, "w", **{**profile, "crs": crs}) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        for band, name in enumerate(names, start=1):
            dst.set_band_description(band, name)
    out = tmp_path / "out"
    cmd = _cmd(out)
    cmd[3] = str(scene)
    failed = subprocess.run(
        [*cmd, "--format", FORMATS], capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in failed.stderr and "geotransform" in failed.stderr
    finals = [p.name for p in out.glob("no_transform_20170216_water*")] if out.exists() else []
    assert finals == []
    assert not [p for p in out.rglob("*") if TEMP_MARK in p.name] if out.exists() else True
    drill_log("10 scene without geotransform", runs=1, faults=1, files_lost=0)
