"""The shell entries of the flows that run from the shell (``python -m flows.NAME``).

``extract-scene`` (``make demo``) takes the options of ``spex extract``, parsed by the
same code (:func:`pipeline.cli.main.parse_extract`), plus ``--dask-address``; every input
check (:func:`pipeline.extract.check_job`) runs before the flow starts, so bad input is
one ``error:`` line and exit status 2, as on the command line. ``regional-mapping``
takes a region and a run id. The flow is handed in, so this module never imports Prefect.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pipeline.errors import SpexInputError


def run_extract_flow(flow: Callable[..., list[dict[str, Any]]], argv: list[str] | None) -> None:
    """Parse ``argv`` (default: the process's), check every scene, run ``flow`` once and
    print one JSON line of output paths per scene."""
    import typer

    from pipeline.cli.main import parse_extract
    from pipeline.extract import check_job
    from pipeline.job_parameters import parameters_from_settings

    flow_only = argparse.ArgumentParser(add_help=False)
    flow_only.add_argument("--dask-address", default=None)
    known, rest = flow_only.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        scenes, out, settings = parse_extract(rest)
        for path in scenes:
            check_job(str(path), settings, out)
    except typer.Exit as done:  # --help
        raise SystemExit(done.exit_code) from None
    except SpexInputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    results = flow(
        scene=[str(s) for s in scenes],
        out_dir=str(out),
        dask_address=known.dask_address,
        **parameters_from_settings(settings, flow),
    )
    for paths in results:
        print(json.dumps(paths))


def run_region_flow(flow: Callable[..., dict[str, Any]], argv: list[str] | None) -> None:
    """Run the regional-mapping ``flow`` once for the region in ``argv``; prints the
    result as one JSON line."""
    parser = argparse.ArgumentParser(description="Run the regional-mapping flow once.")
    parser.add_argument("region", help="region catalog name or YAML path")
    parser.add_argument("--run-id")
    args = parser.parse_args(argv)
    print(json.dumps(flow(region=args.region, run_id=args.run_id)))
