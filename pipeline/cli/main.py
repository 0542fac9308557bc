"""The ``spex`` command line: the same jobs as the Prefect flows, without a server.

Input problems (unknown sensor, missing band, no CRS, unreadable file, ...) are printed
as one ``error:`` line naming the problem, with exit status 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.models import models_app
from pipeline.cli.spie import spie_app
from pipeline.cli.train import eval_command, train_command
from pipeline.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODEL, DEFAULT_OVERLAP, DEFAULT_TILE
from pipeline.errors import SpexInputError
from pipeline.mask_codes import MASK_NODATA, MASK_OTHER, MASK_TARGET

if TYPE_CHECKING:
    from pipeline.extract import ExtractionSettings

app = typer.Typer(
    help="SPEX: instruction-driven land-cover extraction from multispectral scenes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(spie_app, name="spie")
app.add_typer(models_app, name="models")
app.command("train")(train_command)
app.command("eval")(eval_command)

TargetArg = Annotated[
    str, typer.Argument(help="What to extract: a target of catalogs/targets.yaml (`spex targets`).")
]
SceneArg = Annotated[
    Path,
    typer.Argument(help="Scene file (GeoTIFF/COG/VRT/JP2), band-file folder, STAC item, Zarr."),
]
SensorOpt = Annotated[
    str | None,
    typer.Option(
        "--sensor", help="Sensor catalog name (see `spex sensors`); detected if unambiguous."
    ),
]
BandsOpt = Annotated[
    str | None,
    typer.Option(
        "--bands", help="Comma-separated band names in file order (native names or aliases)."
    ),
]
EncodingOpt = Annotated[
    str | None,
    typer.Option(
        "--encoding",
        help="How the product stores reflectance (see `spex encodings`); detected if possible.",
    ),
]
LevelOpt = Annotated[
    str | None,
    typer.Option("--level", help="Product level if the metadata does not say (L1C, L2A, L1, L2)."),
]
ScaleOpt = Annotated[
    str | None,
    typer.Option(
        "--scale", help="reflectance = DN * scale + offset: one number, or one per band (a,b,..)."
    ),
]
OffsetOpt = Annotated[
    str | None,
    typer.Option("--offset", help="Offset for --scale (default 0), or with the encoding's scale."),
]
NodataOpt = Annotated[
    float | None,
    typer.Option("--nodata", help="Nodata value (replaces the encoding's; the file's own stays)."),
]
BaselineOpt = Annotated[
    str | None,
    typer.Option(
        "--baseline", help="Sentinel-2 processing baseline (e.g. 04.00) when metadata lacks it."
    ),
]


def _bands(value: str | None) -> list[str] | None:
    return [b.strip() for b in value.split(",") if b.strip()] if value else None


def _numbers(value: str | None, flag: str) -> list[float] | None:
    """'0.0001' or '0.0001,0.0001,...' -> floats; a clear error for anything else."""
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SpexInputError(f"{flag} takes numbers separated by commas, got {value!r}") from None
    if not numbers:
        raise SpexInputError(f"{flag} takes at least one number, got {value!r}")
    return numbers


def _open_kwargs(
    sensor: str | None = None,
    bands: str | None = None,
    encoding: str | None = None,
    level: str | None = None,
    scale: str | None = None,
    offset: str | None = None,
    nodata: float | None = None,
    baseline: str | None = None,
) -> dict:
    """The scene options of the command line, as :func:`pipeline.scene.open_scene` takes them."""
    kwargs: dict = {
        "sensor": sensor,
        "bands": _bands(bands),
        "encoding": encoding,
        "level": level,
        "scale": _numbers(scale, "--scale"),
        "offset": _numbers(offset, "--offset"),
        "nodata": nodata,
        "baseline": baseline,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


@contextlib.contextmanager
def _imports_without_gc() -> Iterator[None]:
    """Import the scientific stack with the cyclic garbage collector paused, then move
    what it created out of the collector's way (``gc.freeze``) and resume it.

    Importing xarray, pandas and dask creates some 250 000 objects; the collector walks
    them again and again while they load (0.15-0.25 s of a 1.2 s import on the 2-core
    machine) and in every full collection afterwards, and none of them is garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@app.command()
def sensors() -> None:
    """List the sensor catalogs (catalogs/sensors/*.yaml) and their bands."""
    from pipeline.sensors import all_sensors

    for sensor in all_sensors():
        codes = ", ".join(f"{b.code}={b.native}" for b in sensor.bands)
        typer.echo(f"{sensor.name:<28} {sensor.description}")
        typer.echo(f"{'':<28} bands: {codes}")


@app.command()
def targets() -> None:
    """List the extraction targets (catalogs/targets.yaml): index, side, category."""
    from pipeline.targets import load_targets

    for t in load_targets().values():
        typer.echo(f"{t.name:<14} {t.index} {t.side} the Otsu threshold; category {t.category!r}")


@app.command()
def encodings() -> None:
    """List the encoding catalogs (catalogs/encodings/*.yaml): how products store bands."""
    from pipeline.encodings import all_encodings

    for enc in all_encodings():
        sensors = ", ".join(enc.sensors) if enc.sensors else "any sensor"
        typer.echo(f"{enc.name:<20} {enc.title}")
        typer.echo(f"{'':<20} for: {sensors}; dtypes: {', '.join(enc.dtypes)}")


@app.command()
def info(
    scene: SceneArg,
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    encoding: EncodingOpt = None,
    level: LevelOpt = None,
    scale: ScaleOpt = None,
    offset: OffsetOpt = None,
    nodata: NodataOpt = None,
    baseline: BaselineOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sensor, encoding, bands, size, CRS, resolution, reflectance range and nodata share."""
    from pipeline.scene import describe_scene, open_scene

    kwargs = _open_kwargs(sensor, bands, encoding, level, scale, offset, nodata, baseline)
    facts = describe_scene(open_scene(str(scene), **kwargs))
    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    for key, value in facts.items():
        typer.echo(f"{key:<14} {value}")


# A whole-scene APG holds the index in memory; beyond this, use `spex extract` (tiled).
APG_MAX_PIXELS = 64_000_000


@app.command()
def apg(
    target: TargetArg,
    scene: SceneArg,
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    encoding: EncodingOpt = None,
    level: LevelOpt = None,
    scale: ScaleOpt = None,
    offset: OffsetOpt = None,
    nodata: NodataOpt = None,
    baseline: BaselineOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help=f"Write the coarse mask as a COG ({MASK_TARGET}/{MASK_OTHER}/{MASK_NODATA}).",
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Use this index threshold, not Otsu.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the Attribute Prompt Generator on a whole scene.

    Prints the instruction with its spectral prompt; --out also writes the coarse mask."""
    import numpy as np

    from pipeline.apg import generate_prompt
    from pipeline.indices import compute_index
    from pipeline.scene import open_scene
    from pipeline.targets import index_for

    if out is not None and (out.is_dir() or out.name == ""):
        raise SpexInputError(
            f"--out {out} is a folder; --out takes the mask file to write, e.g. {out / 'mask.tif'}"
        )
    if out is not None and not out.parent.is_dir():
        raise SpexInputError(f"--out {out}: folder {out.parent} does not exist; create it first")
    kwargs = _open_kwargs(sensor, bands, encoding, level, scale, offset, nodata, baseline)
    data = open_scene(str(scene), **kwargs)
    bands_here = [str(b) for b in data["band"].values]
    index_name = index_for(target, bands_here, sensor=data.attrs.get("sensor"))
    pixels = data.sizes["y"] * data.sizes["x"]
    if pixels > APG_MAX_PIXELS:
        raise SpexInputError(
            f"scene {scene} has {pixels} pixels; the whole-scene APG holds them in memory "
            f"(limit {APG_MAX_PIXELS}). Use `spex extract {target} {scene}` instead."
        )
    index = compute_index(index_name, data).values
    valid = np.isfinite(data.values).all(axis=0)
    result = generate_prompt(index, target, threshold=threshold, valid=valid)
    if out is not None:
        from pipeline.outputs.cog import write_array_cog

        write_array_cog(
            result.mask,
            out,
            crs=data.rio.crs,
            transform=data.rio.transform(),
            nodata=MASK_NODATA,
            tags={
                "SPEX_INDEX": index_name,
                "SPEX_THRESHOLD": repr(result.threshold),
                "SPEX_TARGET": result.target,
            },
        )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "target": result.target,
                    "index": result.index,
                    "threshold": result.threshold,
                    "regions_total": result.n_regions_total,
                    "regions": [r.as_prompt_dict() for r in result.regions],
                    "instruction": result.instruction,
                    "mask": str(out) if out else None,
                },
                default=str,
            )
        )
    else:
        typer.echo(f"# {result.index} threshold (Otsu unless given): {result.threshold}")
        typer.echo(f"# {result.n_regions_total} regions, {len(result.regions)} in the prompt")
        typer.echo(result.instruction)
        if out is not None:
            typer.echo(f"# mask written to {out}")


@app.command()
def extract(
    ctx: typer.Context,
    target: TargetArg,
    scenes: Annotated[list[Path], typer.Argument(help="One or more scenes.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("out"),
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="'index', 'index-tile', 'default' (per target: the model where the promotion "
            "rule made it the default, else the index), 'spex' (the shipped SPEX weights), a "
            "registered version or a checkpoint path.",
        ),
    ] = DEFAULT_MODEL,
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    encoding: EncodingOpt = None,
    level: LevelOpt = None,
    scale: ScaleOpt = None,
    offset: OffsetOpt = None,
    nodata: NodataOpt = None,
    baseline: BaselineOpt = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile size in pixels.")] = DEFAULT_TILE,
    overlap: Annotated[
        int, typer.Option("--overlap", help="Tile overlap in pixels.")
    ] = DEFAULT_OVERLAP,
    allow_small_scene: Annotated[
        bool,
        typer.Option(
            "--allow-small-scene",
            help="Run a scene smaller than --tile as one tile of its own size (no padding).",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Tiles per batch.")
    ] = DEFAULT_BATCH_SIZE,
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated: cog (always), prob, zarr, gpkg (polygons), parquet "
            "(GeoParquet polygons).",
        ),
    ] = "cog",
    simplify: Annotated[
        float,
        typer.Option(
            "--simplify",
            help="Polygon simplification tolerance in map units (e.g. metres; 0 keeps exact "
            "pixel edges; one pixel size smooths the staircase).",
        ),
    ] = 0.0,
    force: Annotated[
        bool, typer.Option("--force/--resume", help="Recompute everything / resume (default).")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if any).")
    ] = None,
    describe: Annotated[
        bool,
        typer.Option(
            "--describe/--no-describe",
            help="Per-tile descriptions, checked against the mask, in the report (default) / "
            "none (same mask; skips the text-only work).",
        ),
    ] = True,
) -> None:
    """Extract TARGET from whole scenes into COG, STAC, quicklook and report files.

    Prints one JSON line of output paths per scene (keys mask, probability, zarr, gpkg,
    parquet, stac, quicklook, report). An identical job already running in the same
    folder is waited for (SPEX_LOCK_TIMEOUT seconds, default 600)."""
    from pipeline.samples import start_prefetch

    # Decode the scene's decimated sample (the job's first read) on the other core while
    # the libraries below import on this one; see pipeline.samples.
    listed = ctx.params["scenes"]
    head_start = start_prefetch(listed[0]) if len(listed) == 1 else None
    try:
        with _imports_without_gc():
            from tqdm import tqdm

            from pipeline.extract import run_extraction

        scenes, out, settings = extraction_options(ctx.params)

        def on_wait(holder: str) -> None:
            typer.echo(f"waiting: the same job is being run by {holder}", err=True)

        for scene in scenes:
            with tqdm(desc=scene.name, unit="tile", file=sys.stderr, disable=None) as bar:

                def on_plan(plan, pending, bar=bar) -> None:
                    bar.total = len(plan.grid)
                    bar.update(len(plan.grid) - pending)

                paths = run_extraction(
                    str(scene),
                    settings,
                    out,
                    on_plan=on_plan,
                    on_batch=bar.update,
                    on_wait=on_wait,
                )
            typer.echo(json.dumps(paths))
    finally:
        if head_start is not None:
            head_start.stop()


def extraction_options(params: dict[str, Any]) -> tuple[list[Path], Path, ExtractionSettings]:
    """The scenes, output folder and settings that ``spex extract``'s parsed options give.

    One translation from flags to :class:`pipeline.extract.ExtractionSettings`, used by
    the command and by the ``extract-scene`` flow's shell entry (:func:`parse_extract`).
    """
    from pipeline.extract import ExtractionSettings

    opened = _open_kwargs(
        params["sensor"],
        params["bands"],
        params["encoding"],
        params["level"],
        params["scale"],
        params["offset"],
        params["nodata"],
        params["baseline"],
    )
    settings = ExtractionSettings(
        target=params["target"],
        model=params["model"],
        sensor=params["sensor"],
        bands=tuple(opened["bands"]) if "bands" in opened else None,
        encoding=params["encoding"],
        level=params["level"],
        scale=tuple(opened["scale"]) if "scale" in opened else None,
        offset=tuple(opened["offset"]) if "offset" in opened else None,
        nodata=params["nodata"],
        baseline=params["baseline"],
        tile=params["tile"],
        overlap=params["overlap"],
        allow_small_scene=params["allow_small_scene"],
        batch_size=params["batch_size"],
        formats=tuple(f.strip() for f in params["formats"].split(",") if f.strip()),
        device=params["device"],
        force=params["force"],
        simplify=params["simplify"],
        describe=params["describe"],
    )
    return list(params["scenes"]), Path(params["out"]), settings


def parse_extract(argv: list[str]) -> tuple[list[Path], Path, ExtractionSettings]:
    """Parse ``argv`` exactly as ``spex extract`` does (same flags, defaults and checks).

    For other entry points that run the same job (the ``extract-scene`` flow from the
    shell, ``make demo``), so that every flag a message names exists there too. A bad
    flag or value raises :class:`SpexInputError`; ``--help`` prints the help and raises
    ``typer.Exit``.
    """
    command = typer.main.get_command(app).commands["extract"]  # type: ignore[attr-defined]
    try:
        ctx = command.make_context("extract", list(argv))
    except typer.Exit:
        raise
    except typer.TyperException as exc:
        raise SpexInputError(f"{exc.format_message()} (see --help)") from None
    return extraction_options(ctx.params)


# A full disk or a file-size limit is the user's to fix, not a bug: one line, no traceback.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def main() -> None:
    """Console entry point: turn input errors into one clear line and exit status 2."""
    try:
        app()
    except SpexInputError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None
    except OSError as error:
        if error.errno not in _STORAGE_ERRNOS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        typer.echo(f"error: cannot write output{where}: {error.strerror}", err=True)
        raise SystemExit(2) from None
    finally:
        # The interpreter's last garbage collection walks every object the scientific
        # stack created at import (dask, xarray, pandas: 0.2-0.35 s measured on the
        # 2-core machine); frozen objects are skipped. Files are closed by then.
        gc.freeze()
