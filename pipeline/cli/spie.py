"""``spex spie``: build and inspect SPIE data sets from the command line (no server needed).

Registered on the ``spex`` app in :mod:`pipeline.cli.main`. Input problems print one
``error:`` line, exit status 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from tqdm import tqdm

from pipeline.errors import SpexInputError

spie_app = typer.Typer(
    help="SPIE instruction data sets: build them from labelled imagery, print their stats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


class _Bar:
    """tqdm over a data set's patches (the total grows as images are opened)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.bar = tqdm(
                total=0,
                desc=f"{info['dataset']} ({info['images']} images)",
                unit="patch",
                file=sys.stderr,
            )
        elif self.bar is None:
            return
        elif event == "patches":
            self.bar.total += info["patches"]
            self.bar.refresh()
        elif event == "patch":
            self.bar.update(1)
            self.bar.set_postfix(samples=info["samples"], refresh=False)
        elif event == "done":
            self.bar.close()


@spie_app.command()
def build(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="Data-set catalog name (catalogs/datasets) or YAML path; repeat for several.",
        ),
    ],
    out: Annotated[str, typer.Option("--out", help="Output folder of the SPIE data set.")],
    root: Annotated[
        str | None,
        typer.Option(
            "--root", help="Folder of the data set (default: the catalog's default_root)."
        ),
    ] = None,
    patch_size: Annotated[
        int | None,
        typer.Option("--patch-size", help="Patch size in px (default: the catalog's patch.size)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the response phrasing.")] = 0,
    quality_bar: Annotated[float, typer.Option("--quality-bar")] = 0.8,
    max_attempts: Annotated[int, typer.Option("--max-attempts")] = 3,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            help="OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1): "
            "responses from that LLM instead of the grounded writer.",
        ),
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Model name at --endpoint.")] = "default",
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.9,
    judge: Annotated[
        bool,
        typer.Option("--judge/--no-judge", help="Also score responses with the LLM at --endpoint."),
    ] = False,
) -> None:
    """Build (or extend) SPIE subsets; prints a JSON report per data set."""
    from pipeline.spie.build import BuildConfig
    from pipeline.spie.build import build as run_build
    from pipeline.spie.llm_client import ChatClient
    from pipeline.spie.quality import LlmJudge
    from pipeline.spie.responses import HttpWriter

    if root is not None and len(dataset) > 1:
        _fail(SpexInputError("--root applies to one --dataset only"))
    config = BuildConfig(
        patch_size=patch_size, seed=seed, quality_bar=quality_bar, max_attempts=max_attempts
    )
    client = ChatClient(endpoint, model) if endpoint else None
    writer = HttpWriter(client, temperature=temperature, top_p=top_p, seed=seed) if client else None
    if judge and client is None:
        _fail(SpexInputError("--judge needs --endpoint"))
    llm_judge = LlmJudge(client) if judge and client else None
    for name in dataset:
        try:
            report = run_build(
                name, out, root=root, config=config, writer=writer, judge=llm_judge, progress=_Bar()
            )
        except SpexInputError as exc:
            _fail(exc)
        typer.echo(json.dumps(report.as_dict(), indent=1, default=str))
        typer.echo(
            f"{report.dataset}: {report.n_samples} new samples ({report.n_existing} already "
            f"present) in {report.seconds:.1f} s = {report.samples_per_second:.1f} samples/s",
            err=True,
        )


@spie_app.command()
def stats(
    out: Annotated[str, typer.Argument(help="An SPIE data-set folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Samples per subset/split/target, positive share, response length, quality scores."""
    from pipeline.spie.stats import compute_stats, format_stats

    try:
        result = compute_stats(out)
    except SpexInputError as exc:
        _fail(exc)
    typer.echo(json.dumps(result, indent=1) if as_json else format_stats(result))
