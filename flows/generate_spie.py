"""Prefect flow ``generate-spie``: a thin recipe over :mod:`pipeline.spie`.

data sets -> build each into one SPIE store (one task per data set, run one after the
other because they append to the same store) -> stats. All domain logic lives in
``pipeline.spie``; this file only orders the steps and logs them.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from pipeline.spie.build import BuildConfig, build
from pipeline.spie.catalog import default_datasets
from pipeline.spie.stats import compute_stats, format_stats


@task(task_run_name="build-{dataset}")
def build_subset(dataset: str, out_dir: str, root: str | None, config: BuildConfig) -> dict:
    """Build (or extend) one data set's subset; returns the build report."""
    report = build(dataset, out_dir, root=root, config=config)
    logger = get_run_logger()
    logger.info(
        "%s: %d new samples (%d already present) in %.1f s = %.1f samples/s",
        dataset,
        report.n_samples,
        report.n_existing,
        report.seconds,
        report.samples_per_second,
    )
    return report.as_dict()


@task
def spie_stats(out_dir: str) -> dict:
    """Statistics of the whole store after the builds."""
    stats = compute_stats(out_dir)
    get_run_logger().info("%s", format_stats(stats))
    return stats


@flow(name="generate-spie")
def generate_spie(
    datasets: list[str] | None = None,
    out_dir: str = "out/spie",
    roots: dict[str, str] | None = None,
    patch_size: int | None = None,
    seed: int = 0,
    quality_bar: float = 0.8,
) -> dict:
    """Build SPIE subsets for ``datasets`` (default: those of ``catalogs/spie.yaml``)
    into one store."""
    config = BuildConfig(patch_size=patch_size, seed=seed, quality_bar=quality_bar)
    roots = roots or {}
    reports = [
        build_subset(name, out_dir, roots.get(name), config)
        for name in (datasets or default_datasets())
    ]
    return {"reports": reports, "stats": spie_stats(out_dir)}
