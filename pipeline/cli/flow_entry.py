"""The shell entry of the ``extract-scene`` flow (``python -m flows.extract_scene``,
``make demo``): the options of ``spex extract``, parsed by the same code
(:func:`pipeline.cli.main.parse_extract`), plus ``--dask-address``.

Every input check (:func:`pipeline.extract.check_job`) runs before the flow starts, so
bad input is one ``error:`` line and exit status 2, as on the command line. The flow is
handed in, so this module never imports Prefect.
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
