"""The ``spex`` command line: the same jobs as the Prefect flows, without a server.

Input problems (unknown sensor, missing band, no CRS, unreadable file, ...) are printed
as one ``error:`` line naming the problem, with exit status 2 and no traceback.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.models import models_app
from pipeline.cli.spie import spie_app
from pipeline.cli.train import eval_command, train_command
from pipeline.errors import SpexInputError

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

TargetArg = Annotated[str, typer.Argument(help="What to extract: water, vegetation or building.")]
SensorOpt = Annotated[
    str | None,
    typer.Option(
        "--sensor", help="Sensor catalog name (see `spex sensors`); detected if unambiguous."
    ),
]
BandsOpt = Annotated[
    str | None,
    typer.Option("--bands", help="Comma-separated native band names in file order (override)."),
]


def _bands(value: str | None) -> list[str] | None:
    return [b.strip() for b in value.split(",") if b.strip()] if value else None


def _open_kwargs(sensor: str | None, bands: str | None) -> dict:
    kwargs: dict = {}
    if sensor:
        kwargs["sensor"] = sensor
    if bands:
        kwargs["bands"] = _bands(bands)
    return kwargs


@app.command()
def sensors() -> None:
    """List the sensor catalogs (catalogs/sensors/*.yaml) and their bands."""
    from pipeline.sensors import all_sensors

    for sensor in all_sensors():
        codes = ", ".join(f"{b.code}={b.native}" for b in sensor.bands)
        typer.echo(f"{sensor.name:<28} {sensor.description}")
        typer.echo(f"{'':<28} bands: {codes}")


@app.command()
def info(
    scene: Annotated[Path, typer.Argument(help="Scene file, band-file folder or Zarr store.")],
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sensor, bands, size, CRS, resolution and nodata share of a scene."""
    from pipeline.scene import describe_scene, open_scene

    facts = describe_scene(open_scene(str(scene), **_open_kwargs(sensor, bands)))
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
    scene: Annotated[Path, typer.Argument(help="Scene file, band-file folder or Zarr store.")],
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the coarse mask as a COG (1/0/255).")
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

    data = open_scene(str(scene), **_open_kwargs(sensor, bands))
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
            nodata=255,
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
    target: TargetArg,
    scenes: Annotated[list[Path], typer.Argument(help="One or more scenes.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("out"),
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="'index', 'index-tile', 'default', a registered version or a checkpoint path.",
        ),
    ] = "default",
    sensor: SensorOpt = None,
    bands: BandsOpt = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile size in pixels.")] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Tile overlap in pixels.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Tiles per batch.")] = 4,
    formats: Annotated[
        str, typer.Option("--format", help="Comma-separated: cog (always), prob, zarr.")
    ] = "cog",
    force: Annotated[
        bool, typer.Option("--force/--resume", help="Recompute everything / resume (default).")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if any).")
    ] = None,
) -> None:
    """Extract TARGET from whole scenes into COG, STAC, quicklook and report files.

    Prints one JSON line of output paths per scene (keys mask, probability, zarr, stac,
    quicklook, report)."""
    from tqdm import tqdm

    from pipeline.extract import ExtractionSettings, run_extraction

    settings = ExtractionSettings(
        target=target,
        model=model,
        sensor=sensor,
        bands=tuple(_bands(bands) or ()) or None,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
        device=device,
        force=force,
    )
    for scene in scenes:
        with tqdm(desc=scene.name, unit="tile", file=sys.stderr, disable=None) as bar:

            def on_plan(plan, pending, bar=bar) -> None:
                bar.total = len(plan.grid)
                bar.update(len(plan.grid) - pending)

            paths = run_extraction(str(scene), settings, out, on_plan=on_plan, on_batch=bar.update)
        typer.echo(json.dumps(paths))


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
